"""The notifier's adapters: the dataset-event consumer and the HTTP API."""
