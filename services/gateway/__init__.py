"""The gateway: tonight's files, live over WebSockets, to the people allowed to see them; the observer page."""
