"""Benchmark harness for relay: side-by-side runs against Postfix and aiosmtpd."""
