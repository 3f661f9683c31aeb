"""The mailbox side: Maildir store, IMAP and POP3 servers."""
