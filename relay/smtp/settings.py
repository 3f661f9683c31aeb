"""What a ServerMachine is given and what it shows its glue: SmtpSettings (one per
listener, built by the worker from config), the dialogue State the session reads
(RFC 5321 §4.1.4 order of commands), and the fixed protocol limits the machine enforces
(RFC 5321 §4.5.3.1, RFC 4954 §4).

Imports: stdlib.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Postfix smtpd_hard_error_limit: a client this confused is disconnected.
MAX_ERRORS = 20
# RFC 5321 §4.5.3.1.7 / 4.5.3.1.10: a recipient list may be long; a BDAT size may not be absurd.
MAX_BDAT_DIGITS = 18
# RFC 4954 §4: an AUTH command with its initial response, and each SASL response line,
# may be up to 12288 octets (the 512 of RFC 5321 §4.5.3.1.4 is too short for them).
MAX_AUTH_LINE = 12288


class State(enum.Enum):
    GREETING = "greeting"  # 220 sent, no EHLO/HELO yet
    READY = "ready"  # greeted, no transaction
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient
    DATA = "data"  # reading the DATA stream
    BDAT = "bdat"  # inside a BDAT transaction, between chunks
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    hostname: str
    max_message_size: int
    max_recipients: int
    tls_available: bool = False
    # RFC 5321 §4.1.1.3: "RCPT TO:<Postmaster>" (no domain) means this domain's postmaster.
    postmaster_domain: str = ""
    # RFC 4954: the glue can check passwords, so AUTH may be offered.
    auth_available: bool = False
    # Postfix smtpd_tls_auth_only=yes: PLAIN and LOGIN carry the password, so AUTH is
    # offered and accepted only inside TLS (else 538 5.7.11).
    auth_requires_tls: bool = True
    # Submission (RFC 6409 §4.3, RFC 4954 §6): MAIL before a successful AUTH is 530 5.7.0.
    auth_required: bool = False
