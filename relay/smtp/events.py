"""What the SMTP server machine tells its glue (h11-style events).

Events marked *decision* stop the machine until the glue answers with
`ServerMachine.accept(reply)` or `ServerMachine.reject(reply)` (for Authenticate:
`auth_ok(account)` or `auth_failed(temporary)`); that keeps replies in
order under PIPELINING (RFC 2920) however long a policy lookup or queue commit takes.

Imports: stdlib, relay.smtp.grammar.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relay.smtp.grammar import Mailbox


class Signal(enum.Enum):
    NEED_DATA = "need_data"  # nothing more to do until receive_data()
    PAUSED = "paused"  # waiting for accept()/reject() of the last decision event


@dataclass(frozen=True, slots=True)
class MailFrom:
    """Decision: MAIL FROM passed syntax and SIZE checks. sender None is the null path <>."""

    sender: Mailbox | None
    size: int | None
    smtputf8: bool
    body: str  # "7BIT" | "8BITMIME"


@dataclass(frozen=True, slots=True)
class RcptTo:
    """Decision: may this recipient be accepted?"""

    recipient: Mailbox


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """Decision: the whole message arrived (DATA or BDAT LAST); queue it or refuse it.

    body is the message as received (dot-stuffing removed), without our Received header.
    """

    sender: Mailbox | None
    recipients: tuple[Mailbox, ...]
    body: bytes
    smtputf8: bool
    chunked: bool


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Decision: SMTP AUTH (RFC 4954) finished its SASL exchange; are these credentials good?

    Answer with `ServerMachine.auth_ok(account)` or `auth_failed(temporary)`.
    """

    user: str
    password: str
    mechanism: str  # "PLAIN" | "LOGIN"

    def __repr__(self) -> str:  # keep passwords out of logs and test failure output
        return (f"Authenticate(user={self.user!r}, password=<hidden>, "
                f"mechanism={self.mechanism!r})")


@dataclass(frozen=True, slots=True)
class StartTls:
    """The 220 for STARTTLS is in the outbox: write it, upgrade, call tls_started()."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over (QUIT answered, fatal error, or the peer closed): close after writing."""

    by_peer: bool


Event = MailFrom | RcptTo | MessageReceived | Authenticate | StartTls | Closed | Signal
