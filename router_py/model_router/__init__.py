"""model-router: routes AI agents' model calls."""

__version__ = "0.1.0"
