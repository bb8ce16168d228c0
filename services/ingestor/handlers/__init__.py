"""Adapters of the ingestor: the transfer.received consumer."""
