"""IMAP4rev1 server (RFC 3501, compatible with RFC 9051 clients).

Sans-I/O core: parser.py (command reader: lines, literals, limits), grammar.py (command
grammar) over tokens.py (shared rules), sequence_set.py, fetch_items.py and search_keys.py,
arguments.py (the parsed commands), machine.py (states, framing, the commands that need no
store), responses.py (formatting), message.py (what FETCH returns, computed from the stored
octets) over mime.py (the MIME tree) and addresses.py (RFC 5322 address lists), search.py
(SEARCH evaluation), utf7.py (mailbox names).
Command execution against the Maildir store (blocking, run in a thread by the session):
commands.py (table, SELECT family), mailboxes.py, messages.py, fetch.py, selected.py
(sequence numbers and updates from other sessions), context.py. Glue: session.py.
"""
