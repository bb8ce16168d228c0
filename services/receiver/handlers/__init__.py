"""Adapters of the receiver: the HTTP transfer API and the ingest-result events."""
