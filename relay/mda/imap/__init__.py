"""IMAP4rev1 server (RFC 3501, compatible with RFC 9051 clients).

The pure protocol core lives in parser.py (command grammar, literals), message.py (what FETCH
returns, computed from the stored octets), search.py (SEARCH evaluation) and utf7.py (mailbox
name encoding); none of them does I/O.
"""
