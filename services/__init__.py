"""Skyport services: one package each (monitor, receiver, ingestor, catalog, notifier, gateway)."""
