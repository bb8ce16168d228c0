"""Adapters of the catalog: the file.archived consumer (and, next, the HTTP API in ``http.py``)."""
