"""relay: a high-throughput mail relay with a compiled hot path."""

__version__ = "0.1.0"
