"""The ingestor: takes verified files from staging into archive storage, one version at a time."""
