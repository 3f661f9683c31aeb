"""What the POP3 server machine tells its glue (h11-style events; RFC 1939, RFC 2595).

Events marked *decision* stop the machine until the glue answers through the Pop3Machine
method named in their docstring; commands pipelined behind them wait in the buffer, so
responses leave in command order (RFC 2449 §6.6). Messages are addressed by their 0-based
position in the list given to `open_maildrop`.

Imports: stdlib only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Signal(enum.Enum):
    NEED_DATA = "need_data"  # nothing more to do until receive_data()
    PAUSED = "paused"  # waiting for the glue to answer the last decision event


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Decision: are these credentials good? mechanism is "USER", "PLAIN" or "LOGIN".

    Answer auth_ok() (then open_maildrop) or auth_failed(reason, temporary, in_use).
    """

    user: str
    password: str
    mechanism: str

    def __repr__(self) -> str:
        return f"Authenticate(user={self.user!r}, password=<hidden>, mechanism={self.mechanism!r})"


@dataclass(frozen=True, slots=True)
class NeedMessage:
    """Decision: RETR (top_lines None) or TOP (top_lines body lines) wants the octets of
    message `index` (0-based in the open_maildrop list; `uid` is its unique-id).
    Answer message(data) or message_failed(reason)."""

    index: int
    uid: str
    top_lines: int | None


@dataclass(frozen=True, slots=True)
class StartTls:
    """The "+OK Begin TLS negotiation" is in the outbox: write it, upgrade, tls_started()."""


@dataclass(frozen=True, slots=True)
class Update:
    """Decision: QUIT in TRANSACTION (RFC 1939 §6). Remove the messages at `deleted`
    (0-based, ascending; `uids` in the same order), release the lock, answer update_done(ok).
    Sent even when nothing was deleted, so the glue has one place to release the lock."""

    deleted: tuple[int, ...]
    uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over: write data_to_send(), then close. by_peer: the client left
    without QUIT (RFC 1939 §6: no UPDATE, deletions are forgotten)."""

    by_peer: bool


Event = Authenticate | NeedMessage | StartTls | Update | Closed | Signal
