"""Unit tests of the receiver: the transfer workflow and its consumer against a fake database."""
