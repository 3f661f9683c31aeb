"""Servers under test. Each peer is a context manager exposing ``.host``/``.port``."""
