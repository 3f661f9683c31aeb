"""POP3 server (RFC 1939 with CAPA RFC 2449, STLS RFC 2595, AUTH RFC 5034).

machine.py is the sans-I/O dialogue (bytes in, events and response octets out), with
events.py (what it asks the glue) and replies.py (response texts, multi-line encoding);
session.py is the asyncio glue that verifies credentials, locks and reads the Maildir.
"""
