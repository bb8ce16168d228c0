"""The receiver: accepts files from observatory monitors over HTTP, stages and verifies them."""
