"""Telemetry: structured logs (and, with the request path, metrics)."""
