"""Unit tests of the ingestor: its consumer and logic against a fake database and the in-process bus."""
