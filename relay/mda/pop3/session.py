"""Pop3Session: asyncio.Protocol glue between a socket and a Pop3Machine (RFC 1939).

Runs the decisions the machine asks for: login (throttled), the maildrop lock and listing
(INBOX of the account's Maildir), message reads, the UPDATE state's deletions, and STLS
(RFC 2595); the connection mechanics (limits, decisions with reading paused, the
autologout timer, the TLS upgrade) are relay.glue's. Blocking store calls run in a
thread. Unique ids follow Dovecot's default UIDL format (UID and UIDVALIDITY as hex), so
they survive restarts.

Imports: relay.glue, relay.mda.pop3.machine, relay.mda.store, relay.auth.login,
relay.metrics.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any

from relay import metrics
from relay.auth.login import Authenticator, LoginResult, is_loopback
from relay.glue import ListenerBase, SessionGlue
from relay.mda.pop3.machine import (
    Authenticate,
    Closed,
    NeedMessage,
    Pop3Machine,
    Signal,
    StartTls,
    Update,
)
from relay.mda.store import MailStore

log = logging.getLogger("relay.pop3")
_ids = itertools.count(1)

# RFC 1939 §3: an inactivity autologout timer of at least 10 minutes.
IDLE_TIMEOUT = 600.0


@dataclass(kw_only=True)
class Pop3Listener(ListenerBase):
    store: MailStore
    auth: Authenticator
    allow_plaintext: bool  # [mda] allow_plaintext_auth
    idle_timeout: float = IDLE_TIMEOUT


class Pop3Session(SessionGlue[Pop3Listener]):
    log = log
    SESSIONS_ACTIVE = metrics.POP3_SESSIONS_ACTIVE
    REFUSAL = b"-ERR [SYS/TEMP] too many connections\r\n"
    INTERNAL_ERROR = b"-ERR [SYS/TEMP] internal error\r\n"

    def __init__(self, listener: Pop3Listener) -> None:
        super().__init__(listener, f"p{next(_ids)}")
        self.machine: Pop3Machine | None = None  # made for an admitted client
        self._lock: contextlib.AbstractContextManager[bool] | None = None
        self._folder: Any = None
        self._uids: list[int] = []
        self._account = ""

    def _greet(self, address: str) -> None:
        self.peer = address
        lst = self.listener
        tls = lst.implicit_tls
        self.machine = Pop3Machine(
            plaintext_allowed=tls or lst.allow_plaintext or is_loopback(address),
            tls_available=lst.tls_context is not None and not tls, tls_active=tls)
        self._write(self.machine.greeting())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._unlock()

    # ---- driving ----------------------------------------------------------------------

    def _drive_events(self) -> None:
        machine = self.machine
        assert machine is not None
        while not self._busy and not self._closing:
            event = machine.next_event()
            if isinstance(event, Authenticate):
                self._start(self._login(event))
            elif isinstance(event, NeedMessage):
                self._start(self._read(event))
            elif isinstance(event, Update):
                self._start(self._update(event))
            elif isinstance(event, StartTls):
                self._start_tls()
            elif isinstance(event, Closed):
                self._flush()
                self._close()
            else:
                self._flush()
                return

    async def _login(self, event: Authenticate) -> None:
        machine = self.machine
        assert machine is not None
        result, account = await self.listener.auth.login("pop3", self.peer, event.user,
                                                         event.password)
        if result is LoginResult.BLOCKED:
            return machine.auth_failed("too many failed logins, try later", temporary=True)
        if result is LoginResult.FAILED:
            return machine.auth_failed("authentication failed")
        machine.auth_ok()
        listing = await self.loop.run_in_executor(None, self._open, account)
        if listing is None:
            return machine.auth_failed("mailbox locked", in_use=True)
        log.info("%s pop3 login user=<%s> ip=%s messages=%d", self.id, account, self.peer,
                 len(listing))
        machine.open_maildrop(listing)

    def _open(self, account: str) -> list[tuple[str, int]] | None:
        """Lock the maildrop (RFC 1939 §8) and list INBOX; None when another session has it."""
        acct = self.listener.store.account(account)
        lock = acct.lock_pop3()
        if not lock.__enter__():
            lock.__exit__(None, None, None)
            return None
        self._lock = lock
        self._account = account
        folder = acct.folder("INBOX")
        folder.sync()
        self._folder = folder
        messages = folder.messages()
        self._uids = [m.uid for m in messages]
        # Dovecot's default pop3_uidl_format %08Xu%08Xv: stable across restarts.
        return [(f"{m.uid:08X}{folder.uidvalidity:08X}", m.size) for m in messages]

    async def _read(self, event: NeedMessage) -> None:
        machine = self.machine
        assert machine is not None
        try:
            data = await self.loop.run_in_executor(None, self._folder.read,
                                                   self._uids[event.index])
        except (KeyError, OSError):
            return machine.message_failed("message was removed")
        machine.message(data)

    async def _update(self, event: Update) -> None:
        machine = self.machine
        assert machine is not None
        ok = True
        if event.deleted:
            uids = [self._uids[i] for i in event.deleted]
            try:
                await self.loop.run_in_executor(None, self._delete, uids)
            except OSError:
                log.exception("%s could not remove messages", self.id)
                ok = False
        self._unlock()
        machine.update_done(ok)

    def _delete(self, uids: list[int]) -> None:
        self._folder.store(uids, {"\\Deleted"}, "+")
        self._folder.expunge(uids)

    def _tls_started(self) -> None:
        assert self.machine is not None
        self.machine.tls_started()

    # ---- output, timers ------------------------------------------------------------

    def _flush(self) -> None:
        assert self.machine is not None
        chunks = self.machine.chunks_to_send()
        if chunks:
            self._writelines(chunks)

    def _writelines(self, chunks: list[Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(chunks)

    def _close(self) -> None:
        self._unlock()
        super()._close()

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)

    def _timed_out(self) -> None:
        log.info("%s pop3 autologout", self.id)
        self._write(b"-ERR autologout: idle for too long\r\n")
        self._close()
