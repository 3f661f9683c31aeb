"""Pop3Session: asyncio.Protocol glue between a socket and a Pop3Machine (RFC 1939).

Runs the decisions the machine asks for: login (throttled), the maildrop lock and listing
(INBOX of the account's Maildir), message reads, the UPDATE state's deletions, and STLS
(RFC 2595). Blocking store calls run in a thread. Unique ids follow Dovecot's default
UIDL format (UID and UIDVALIDITY as hex), so they survive restarts.

Imports: asyncio, relay.mda.pop3.machine, relay.mda.{login,store}, relay.auth.throttle,
relay.metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from relay import metrics
from relay.auth.throttle import ConnectionLimiter
from relay.auth.login import Authenticator, LoginResult, is_loopback
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


@dataclass
class Pop3Listener:
    store: MailStore
    auth: Authenticator
    limiter: ConnectionLimiter
    tls_context: ssl.SSLContext | None
    implicit_tls: bool  # pop3s (RFC 8314)
    allow_plaintext: bool  # [mda] allow_plaintext_auth
    idle_timeout: float = IDLE_TIMEOUT


class Pop3Session(asyncio.Protocol):
    def __init__(self, listener: Pop3Listener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.id = f"p{next(_ids)}"
        self.transport: Any = None
        self.peer = ""
        self.machine: Pop3Machine | None = None
        self._busy = False
        self._closing = False
        self._admitted = False
        self._lock: contextlib.AbstractContextManager[bool] | None = None
        self._folder: Any = None
        self._uids: list[int] = []
        self._account = ""
        self._last_active = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.peer = str((transport.get_extra_info("peername") or ("",))[0])
        lst = self.listener
        if not lst.limiter.admit(self.peer):
            transport.write(b"-ERR [SYS/TEMP] too many connections\r\n")
            transport.close()
            return
        self._admitted = True
        metrics.POP3_SESSIONS_ACTIVE.inc()
        tls = lst.implicit_tls
        self.machine = Pop3Machine(
            plaintext_allowed=tls or lst.allow_plaintext or is_loopback(self.peer),
            tls_available=lst.tls_context is not None and not tls, tls_active=tls)
        transport.write(self.machine.greeting())
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        assert self.machine is not None
        self._last_active = self.loop.time()
        self.machine.receive_data(data)
        self._drive()

    def eof_received(self) -> bool:
        if self.machine is not None:
            self.machine.receive_data(b"")
            self._drive()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer:
            self._timer.cancel()
        if self._admitted:
            self._admitted = False
            self.listener.limiter.release(self.peer)
            metrics.POP3_SESSIONS_ACTIVE.dec()
        self._unlock()

    # ---- driving ----------------------------------------------------------------------

    def _drive(self) -> None:
        try:
            self._drive_events()
        except Exception:  # noqa: BLE001 - one session's bug must not reach the worker
            log.exception("%s internal error", self.id)
            self._write(b"-ERR [SYS/TEMP] internal error\r\n")
            self._close()

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
                self._flush()
                self._start(self._upgrade())
            elif isinstance(event, Closed):
                self._flush()
                self._close()
            else:
                self._flush()
                return

    def _start(self, coro: Any) -> None:
        self._busy = True
        self.transport.pause_reading()
        self.loop.create_task(coro).add_done_callback(self._resume)

    def _resume(self, task: asyncio.Task[None]) -> None:
        self._busy = False
        if task.cancelled() or self._closing:
            return
        if task.exception() is not None:
            log.error("%s internal error", self.id, exc_info=task.exception())
            self._write(b"-ERR [SYS/TEMP] internal error\r\n")
            self._close()
            return
        self.transport.resume_reading()
        self._drive()

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

    async def _upgrade(self) -> None:
        machine = self.machine
        assert machine is not None and self.listener.tls_context is not None
        try:
            self.transport = await self.loop.start_tls(
                self.transport, self, self.listener.tls_context, server_side=True,
                ssl_handshake_timeout=60)
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as exc:
            log.info("%s TLS handshake failed: %s", self.id, exc)
            self._closing = True
            self.transport.abort()
            return
        machine.tls_started()

    # ---- output, timers ------------------------------------------------------------

    def _flush(self) -> None:
        assert self.machine is not None
        chunks = self.machine.chunks_to_send()
        if chunks:
            self._writelines(chunks)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _writelines(self, chunks: list[Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(chunks)

    def _close(self) -> None:
        self._closing = True
        self._unlock()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)

    def _arm_timer(self) -> None:
        delay = self._last_active + self.listener.idle_timeout - self.loop.time()
        self._timer = self.loop.call_later(max(delay, 0.05), self._check_idle)

    def _check_idle(self) -> None:
        if self._closing:
            return
        if not self._busy and self.loop.time() - self._last_active >= self.listener.idle_timeout:
            log.info("%s pop3 autologout", self.id)
            self._write(b"-ERR autologout: idle for too long\r\n")
            self._close()
            return
        self._arm_timer()
