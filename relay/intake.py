"""Intake: an accepted SMTP transaction becomes a queued message (Postfix's cleanup).

The only writer of new messages into the queue. It checks for mail loops, prepends our
Received header (RFC 5321 §4.4), completes submissions, hands the message to the group
committer and turns the outcome into the reply for the end of DATA: 250 only once the
commit is durable.

Completion (RFC 6409 §8.3, §8.4; Postfix cleanup for local_header_rewrite_clients): a
message from an authenticated client that lacks Date: or Message-ID: gets them, placed
after our Received header and before the original header section. Mail relayed from
elsewhere is never touched beyond the Received header.

Trust: the message body is untrusted octets; only the header scanner reads it.
Imports: relay._fast, relay.queue (public API), relay.smtp.{events,replies}, relay.metrics.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay import _fast, metrics
from relay.queue.committer import GroupCommitter
from relay.queue.model import Envelope, QueueIdFactory, Recipient
from relay.queue.store import QueueFull
from relay.smtp import replies as R
from relay.smtp.events import MessageReceived

log = logging.getLogger("relay.intake")

# RFC 5321 §6.3: a message with this many Received fields (ours included) is looping;
# Postfix's hopcount_limit has the same value.
MAX_RECEIVED = 50
ID_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the Received header and the queue record say about the client."""

    session_id: str
    peer: str
    helo: str
    esmtp: bool
    tls: bool
    authenticated: bool = False


class Intake:
    def __init__(self, hostname: str, committer: GroupCommitter, ids: QueueIdFactory,
                 on_queued: Callable[[Envelope, bytes], None] | None = None) -> None:
        self.hostname = hostname
        self.committer = committer
        self.ids = ids
        self.on_queued = on_queued  # the delivery scheduler's in-memory hand-off
        self._date_second = -1
        self._date = ""

    async def submit(self, msg: MessageReceived, info: SessionInfo) -> R.Reply:
        summary = _fast.scan_headers(msg.body)
        if summary.received_count + 1 > MAX_RECEIVED:
            log.info("%s refused: mail loop (%d Received headers)", info.session_id,
                     summary.received_count)
            return R.MAIL_LOOP
        recipients = [str(r) for r in msg.recipients]
        try:
            for attempt in range(ID_ATTEMPTS):
                queue_id = self.ids.next()
                header = self._received(queue_id, msg, info, recipients)
                if info.authenticated:
                    header += self._completion(queue_id, summary.flags)
                body = header + msg.body
                env = Envelope(
                    id=queue_id,
                    sender=str(msg.sender) if msg.sender else "",
                    recipients=[Recipient(r) for r in recipients],
                    arrival=time.time(),
                    size=len(body),
                    smtputf8=msg.smtputf8,
                    client=info.peer,
                )
                try:
                    await self.committer.submit(env, body)
                    break
                except KeyError:
                    # An id collision (a clock step across a restart): draw another.
                    if attempt == ID_ATTEMPTS - 1:
                        raise
        except QueueFull as exc:
            log.warning("%s deferred: %s", info.session_id, exc)
            return R.QUEUE_FULL
        except Exception:  # noqa: BLE001 - the client retries; the session goes on
            log.exception("%s queue write failed", info.session_id)
            return R.LOCAL_PROCESSING_ERROR
        metrics.TALLY.add(metrics.MESSAGES_RECEIVED)
        log.info("%s %s: received from=<%s> nrcpt=%d size=%d", info.session_id, queue_id,
                 env.sender, len(recipients), env.size)
        if self.on_queued is not None:
            self.on_queued(env, body)
        return R.queued(queue_id)

    def _received(self, queue_id: str, msg: MessageReceived, info: SessionInfo,
                  recipients: list[str]) -> bytes:
        """RFC 5321 §4.4 trace field; protocol names from RFC 3848 and RFC 6531 §3.7.3."""
        proto = "ESMTP" if info.esmtp else "SMTP"
        if msg.smtputf8:
            proto = "UTF8SMTP"
        proto += ("S" if info.tls else "") + ("A" if info.authenticated else "")
        helo = info.helo.replace("\r", "").replace("\n", "") or "unknown"
        # RFC 5321 §4.1.3: IPv6 address literals carry the "IPv6:" tag.
        literal = f"IPv6:{info.peer}" if ":" in info.peer else info.peer
        lines = [f"Received: from {helo} ([{literal}])",
                 f"\tby {self.hostname} (relay) with {proto} id {queue_id}"]
        # Name the recipient only when there is one (RFC 5321 §7.2: don't disclose Bcc lists).
        if len(recipients) == 1:
            lines.append(f"\tfor <{recipients[0]}>; {self._now()}")
        else:
            lines[-1] += f"; {self._now()}"
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def _completion(self, queue_id: str, present: int) -> bytes:
        """RFC 6409 §8.3 Date: and §8.4 Message-ID: for a submission that lacks them."""
        lines = []
        if not present & _fast.HDR_DATE:
            lines.append(f"Date: {self._now()}\r\n")  # RFC 5322 §3.6.1
        if not present & _fast.HDR_MESSAGE_ID:
            # RFC 5322 §3.6.4: the queue id is unique to this host, so id-left@hostname is
            # globally unique (Postfix uses the same <queueid@myhostname>).
            lines.append(f"Message-ID: <{queue_id}@{self.hostname}>\r\n")
        return "".join(lines).encode("utf-8")

    def _now(self) -> str:
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self._date = email.utils.format_datetime(
                datetime.datetime.fromtimestamp(second, datetime.timezone.utc))
        return self._date
