"""Local delivery: hands recipients in local domains to the Maildir store.

Adds the final-delivery trace fields (RFC 5321 §4.4 Return-Path; Delivered-To as Postfix's
local(8) does, which also lets a later hop detect a forwarding loop) and records an
Outcome per recipient. File I/O runs in a thread so the event loop never waits on fsync.

Imports: asyncio, relay.mda.maildir, relay.queue.model, relay.metrics.
"""

from __future__ import annotations

import asyncio
import errno
import logging

from relay import metrics
from relay.mda.maildir import MaildirStore
from relay.queue.model import Outcome

log = logging.getLogger("relay.local")


class LocalDelivery:
    def __init__(self, store: MaildirStore) -> None:
        self.store = store

    async def deliver(self, sender: str, recipients: list[tuple[str, str | None]],
                      body: bytes) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(None, self._deliver_one, sender, rcpt, account, body)
                for rcpt, account in recipients]

    def _deliver_one(self, sender: str, rcpt: str, account: str | None,
                     body: bytes) -> Outcome:
        if account is None:
            # The account was removed after RCPT was accepted.
            return Outcome(rcpt, "failed", "5.1.1", "x-relay; no such mailbox")
        trace = f"Return-Path: <{sender}>\r\nDelivered-To: {account}\r\n".encode()
        try:
            path = self.store.deliver(account, trace + body)
        except OSError as exc:
            # A full disk or quota is temporary (RFC 3463 X.2.2 / X.3.1); retry later.
            status = "4.2.2" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "4.3.0"
            return Outcome(rcpt, "delayed", status, f"x-relay; maildir write failed: {exc.strerror}")
        metrics.LOCAL_DELIVERIES.inc()
        return Outcome(rcpt, "delivered", "2.0.0", f"x-relay; delivered to maildir ({path.name})")
