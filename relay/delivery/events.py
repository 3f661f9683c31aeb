"""What the outbound ClientMachine tells its glue (h11-style events), the mirror of
relay.smtp.events; relay.delivery.client produces them, delivery/connector.py acts on them.

How the glue tells a live connection from a dead one:
  Ready            handshake done; send_message() or quit() now (`idle` is True).
  StartTls         the 220 to STARTTLS arrived (RFC 3207 §4): upgrade, then tls_started().
  TransactionDone  one Outcome per recipient of the last send_message(), in order. If
                   `idle` is True afterwards the connection may carry another message.
  Failed           the connection is unusable: flush data_to_send() (it may hold a polite
                   QUIT) and close. If it follows a TransactionDone, that transaction's
                   outcomes are already final (unfinished recipients "delayed"); if not,
                   the message was never tried here: try the next MX or retry later
                   (`Failed.outcome(rcpt)` gives the Outcome to use if this was the last).
  Closed           QUIT answered (RFC 5321 §4.1.1.10), or the peer closed an idle
                   connection: nothing was lost.
A timer firing is the glue's business: it calls timed_out(), which ends the connection as
a close would, with "timed out" in the diagnostic.

Imports: stdlib, relay.queue.model, relay.smtp.replies.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relay.queue.model import Outcome
from relay.smtp.replies import Reply


class Signal(enum.Enum):
    NEED_DATA = "need_data"  # nothing to do until receive_data()
    PAUSED = "paused"  # waiting for the glue: tls_started(), or the machine has finished


class ClientState(enum.Enum):
    GREETING = "greeting"  # connected, waiting for the 220
    HELLO = "hello"  # EHLO/HELO/STARTTLS outstanding
    TLS_HANDSHAKE = "tls_handshake"  # StartTls emitted, waiting for tls_started()
    IDLE = "idle"  # Ready: send_message() or quit()
    TRANSACTION = "transaction"  # a send_message() is in flight
    QUIT = "quit"  # QUIT sent
    CLOSED = "closed"  # Failed or Closed emitted; nothing more will happen


@dataclass(frozen=True, slots=True)
class Ready:
    """Greeting and EHLO (and STARTTLS) are done: call send_message() or quit()."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """The server said 220 to STARTTLS: upgrade the transport, then call tls_started()."""


@dataclass(frozen=True, slots=True)
class TransactionDone:
    """One Outcome per recipient of the last send_message(), in the order given."""

    outcomes: tuple[Outcome, ...]


@dataclass(frozen=True, slots=True)
class Failed:
    """The connection is unusable (refused, 421, lost, or a protocol error).

    permanent: the server refused service with a 5xx (a 554 greeting, RFC 5321 §3.1);
               the glue still tries the next MX. False for everything else.
    reply:     the server's reply, or None when there was none (lost, protocol error).
    status, diagnostic, remote_mta, tls: as in Outcome, ready for `outcome()`.
    """

    permanent: bool
    reply: Reply | None
    status: str
    diagnostic: str
    remote_mta: str
    tls: bool = False

    def outcome(self, recipient: str) -> Outcome:
        """The Outcome for a recipient never tried on this connection."""
        action = "failed" if self.permanent else "delayed"
        return Outcome(recipient, action, self.status, self.diagnostic, self.remote_mta,
                       self.tls)


@dataclass(frozen=True, slots=True)
class Closed:
    """QUIT was answered, or the peer closed while idle: close the transport."""


ClientEvent = Ready | StartTls | TransactionDone | Failed | Closed | Signal
