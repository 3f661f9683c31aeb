"""Inbound SMTP: sans-I/O machine, policy, asyncio session glue."""
