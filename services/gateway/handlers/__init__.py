"""The gateway's doors: HTTP and WebSocket (http.py), and the events it listens to (events.py)."""
