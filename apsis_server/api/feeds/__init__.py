"""The websocket feeds (docs/api.md); `fanout.py` has the theory of operation."""
