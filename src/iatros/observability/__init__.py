"""Metrics and structured logs. Nothing here sends data off the box."""
