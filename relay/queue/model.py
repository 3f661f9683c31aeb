"""Queue records: ids, envelopes and per-recipient state (Postfix's rec_type.h, as data).

Imports: stdlib only.
"""

from __future__ import annotations

import enum
import itertools
import os
import time
from dataclasses import dataclass, field


class MessageState(enum.Enum):
    ACTIVE = "active"  # due for delivery now or at next_attempt
    DEFERRED = "deferred"  # a previous attempt failed temporarily
    HOLD = "hold"  # operator hold: never scheduled until released


class RecipientState(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one delivery attempt did for one recipient (Postfix's DSN record; RFC 3464 fields).

    action:     "delivered" | "delayed" | "failed" (RFC 3464 §2.3.3)
    status:     enhanced status code "2.0.0", "4.4.1", "5.1.1" (RFC 3463)
    diagnostic: the remote reply as "smtp; 550 5.1.1 No such user" (RFC 3464 §2.3.6),
                or our own explanation for local failures ("x-relay; connection refused")
    remote_mta: host that answered, "dns; mx1.example.net" (RFC 3464 §2.3.5), or ""
    tls:        whether the connection that produced it was encrypted
    """

    recipient: str
    action: str
    status: str
    diagnostic: str
    remote_mta: str = ""
    tls: bool = False

    @property
    def permanent(self) -> bool:
        return self.action == "failed"


@dataclass(slots=True)
class Recipient:
    address: str
    state: RecipientState = RecipientState.PENDING
    last_error: str = ""


@dataclass(slots=True)
class Envelope:
    """Everything the queue knows about one message but its octets."""

    id: str
    sender: str  # "" is the null reverse-path <>
    recipients: list[Recipient]
    arrival: float
    size: int
    smtputf8: bool = False
    client: str = ""  # peer address the message came from
    state: MessageState = MessageState.ACTIVE
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_record(self) -> dict[str, object]:
        return {
            "id": self.id, "sender": self.sender,
            "recipients": [{"address": r.address, "state": r.state.value,
                            "last_error": r.last_error} for r in self.recipients],
            "arrival": self.arrival, "size": self.size, "smtputf8": self.smtputf8,
            "client": self.client, "state": self.state.value, "attempts": self.attempts,
            "next_attempt": self.next_attempt, "last_error": self.last_error,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_record(cls, d: dict) -> Envelope:  # type: ignore[type-arg]
        d = dict(d)
        d["state"] = MessageState(d["state"])
        d["recipients"] = [
            Recipient(r["address"], RecipientState(r["state"]), r.get("last_error", ""))
            for r in d["recipients"]
        ]
        return cls(**d)

    def public(self) -> dict[str, object]:
        """The `relay queue list --json` view."""
        return {
            "id": self.id,
            "sender": self.sender,
            "recipients": [r.address for r in self.recipients
                           if r.state is RecipientState.PENDING] or
                          [r.address for r in self.recipients],
            "state": self.state.value,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "last_error": self.last_error,
            "arrival": self.arrival,
            "size": self.size,
        }


class QueueIdFactory:
    """Unique, sortable queue ids: 13 hex digits of microseconds, 2 of worker, 5 of sequence.

    Ids sort by arrival time as strings and as bytes. Within one worker the time part never
    goes backwards (a clock step reuses the last value) and the sequence tells ids apart;
    the store refuses to overwrite an existing id, so a collision after a clock step across
    a restart is caught and a new id drawn.
    """

    def __init__(self, worker: int) -> None:
        if not 0 <= worker < 256:
            raise ValueError("worker index must be 0..255")
        self.worker = worker
        self._last = 0
        self._seq = itertools.count(int.from_bytes(os.urandom(2), "big"))

    def next(self) -> str:
        now = max(time.time_ns() // 1000, self._last)
        self._last = now
        return f"{now:013X}{self.worker:02X}{next(self._seq) & 0xFFFFF:05X}"
