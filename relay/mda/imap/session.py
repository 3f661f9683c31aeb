"""ImapSession: asyncio.Protocol glue between a socket and an ImapMachine (RFC 3501).

Runs the decisions the machine asks for: login (throttled, relay.auth.login), command
execution against the mailbox store (commands.execute in a worker thread: the store
blocks), STARTTLS, and IDLE (RFC 2177: the selected mailbox is synced about every
`poll_interval` seconds, which costs a few stat()s, so deliveries by other processes show
up within a second or two). Untagged responses from a command are streamed to the socket
while it runs (`_ThreadWriter`, with flow control), so a large FETCH is not built in memory.

Imports: asyncio, relay.mda.imap.{machine,commands,context}, relay.mda.{login,store},
relay.auth.throttle, relay.metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import threading
from dataclasses import dataclass
from typing import Any

from relay import __version__, metrics
from relay.auth.throttle import ConnectionLimiter
from relay.mda.imap import commands
from relay.mda.imap.context import Context
from relay.mda.imap.machine import (
    Closed,
    Execute,
    IdleStart,
    IdleStop,
    ImapMachine,
    ImapSettings,
    Login,
    StartTls,
    State,
)
from relay.mda.imap.parser import MAX_APPEND
from relay.mda.imap.responses import Transition
from relay.auth.login import Authenticator, LoginResult, is_loopback
from relay.mda.store import MailStore

log = logging.getLogger("relay.imap")
_ids = itertools.count(1)

# RFC 3501 §5.4: the autologout timer after login is at least 30 minutes (IDLE clients
# re-IDLE every 29, RFC 2177 §3); before login a shorter one is allowed.
IDLE_TIMEOUT = 30 * 60.0
LOGIN_TIMEOUT = 180.0
POLL_INTERVAL = 1.0
IDLE_KEEPALIVE = 120.0  # "* OK Still here" during a quiet IDLE, for NAT and firewalls
WRITE_CHUNK = 64 * 1024
WRITE_STALL = 300.0  # a client that reads nothing for this long is dropped


class ConnectionGone(Exception):
    """The client went away while a command was writing its responses."""


@dataclass
class ImapListener:
    store: MailStore
    auth: Authenticator
    limiter: ConnectionLimiter
    tls_context: ssl.SSLContext | None
    implicit_tls: bool  # imaps (RFC 8314)
    allow_plaintext: bool  # [mda] allow_plaintext_auth
    idle_timeout: float = IDLE_TIMEOUT
    login_timeout: float = LOGIN_TIMEOUT
    poll_interval: float = POLL_INTERVAL
    idle_keepalive: float = IDLE_KEEPALIVE
    append_limit: int = MAX_APPEND


class ImapSession(asyncio.Protocol):
    def __init__(self, listener: ImapListener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.id = f"i{next(_ids)}"
        self.transport: Any = None
        self.peer = ""
        self.machine: ImapMachine | None = None
        self.ctx: Context | None = None
        self._busy = False
        self._closing = False
        self._admitted = False
        self._writable = threading.Event()
        self._writable.set()
        self._idle_task: asyncio.Task[None] | None = None
        self._idle_wake = asyncio.Event()
        self._last_active = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.peer = str((transport.get_extra_info("peername") or ("",))[0])
        lst = self.listener
        if not lst.limiter.admit(self.peer):
            transport.write(b"* BYE [UNAVAILABLE] Too many connections\r\n")
            transport.close()
            return
        self._admitted = True
        metrics.IMAP_SESSIONS_ACTIVE.inc()
        tls = lst.implicit_tls
        self.machine = ImapMachine(ImapSettings(
            plaintext_allowed=tls or lst.allow_plaintext or is_loopback(self.peer),
            tls_available=lst.tls_context is not None and not tls, tls_active=tls,
            append_limit=lst.append_limit,
            server_id=(("name", "relay"), ("version", __version__))))
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
        self._writable.set()  # a command thread waiting to write gives up
        self._idle_wake.set()
        if self._timer:
            self._timer.cancel()
        if self._admitted:
            self._admitted = False
            self.listener.limiter.release(self.peer)
            metrics.IMAP_SESSIONS_ACTIVE.dec()

    def pause_writing(self) -> None:
        # The client does not read: stop reading its commands too, so pipelined commands
        # answered without I/O (CAPABILITY ...) cannot fill our write buffer.
        self._writable.clear()
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        if not self._busy and not self._closing:
            self.transport.resume_reading()

    # ---- driving ----------------------------------------------------------------------

    def _drive(self) -> None:
        try:
            self._drive_events()
        except Exception:  # noqa: BLE001 - one session's bug must not reach the worker
            log.exception("%s internal error", self.id)
            self._fail()

    def _drive_events(self) -> None:
        machine = self.machine
        assert machine is not None
        while not self._busy and not self._closing:
            event = machine.next_event()
            for name in machine.counted():
                metrics.TALLY.add(metrics.IMAP_COMMANDS.labels(command=name))
            if isinstance(event, Login):
                self._flush()
                self._start(self._login(event))
            elif isinstance(event, Execute):
                self._flush()
                self._start(self._execute(event))
            elif isinstance(event, StartTls):
                self._flush()
                self._start(self._upgrade())
            elif isinstance(event, IdleStart):
                self._flush()
                self._idle_wake.clear()
                self._idle_task = self.loop.create_task(self._idle())
            elif isinstance(event, IdleStop):
                self._flush()
                self._start(self._stop_idle())
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
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or self._closing:
            return
        if exc is not None:
            log.error("%s internal error", self.id, exc_info=exc)
            self._fail()
            return
        if self._writable.is_set():
            self.transport.resume_reading()
        self._drive()

    def _fail(self) -> None:
        self._write(b"* BYE [SERVERBUG] Internal error\r\n")
        self._close()

    async def _login(self, event: Login) -> None:
        machine = self.machine
        assert machine is not None
        result, account = await self.listener.auth.login("imap", self.peer, event.user,
                                                         event.password)
        if result is not LoginResult.OK:
            return machine.login_failed(temporary=result is LoginResult.BLOCKED)
        self.ctx = await self.loop.run_in_executor(None, self._open, account)
        log.info("%s imap login user=<%s> ip=%s", self.id, account, self.peer)
        machine.login_ok(account)

    def _open(self, account: str) -> Context:
        acct = self.listener.store.account(account)
        acct.ensure_defaults()  # INBOX, Sent, Drafts, Trash, Junk on first login
        return Context(acct, append_limit=self.listener.append_limit)

    async def _execute(self, event: Execute) -> None:
        machine = self.machine
        assert machine is not None and self.ctx is not None
        out = _ThreadWriter(self)
        try:
            done = await self.loop.run_in_executor(None, out.run, commands.execute, self.ctx,
                                                   event.command)
        except ConnectionGone:
            self._close()
            return
        machine.finish(done)

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

    # ---- IDLE (RFC 2177) ---------------------------------------------------------------

    async def _idle(self) -> None:
        quiet_since = self.loop.time()
        try:
            while not self._closing:
                try:
                    await asyncio.wait_for(self._idle_wake.wait(), self.listener.poll_interval)
                except asyncio.TimeoutError:
                    pass
                if self._idle_wake.is_set() or self._closing or not await self._poll():
                    return
                if self.loop.time() - quiet_since >= self.listener.idle_keepalive:
                    self._write(b"* OK Still here\r\n")  # RFC 2177 §3 allows it
                    quiet_since = self.loop.time()
        except ConnectionGone:
            self._close()
        except Exception:  # noqa: BLE001 - one session's bug must not reach the worker
            log.exception("%s internal error during IDLE", self.id)
            self._fail()

    async def _poll(self) -> bool:
        """One sync of the selected mailbox; False when the session is ending."""
        assert self.ctx is not None and self.machine is not None
        out = _ThreadWriter(self)
        done = await self.loop.run_in_executor(None, out.run, commands.poll, self.ctx)
        if done is not None and done.transition is Transition.LOGOUT:
            self._close()
            return False
        return True

    async def _stop_idle(self) -> None:
        self._idle_wake.set()
        task, self._idle_task = self._idle_task, None
        if task is not None:
            await task  # a poll in its thread finishes first: one store user at a time
        if not self._closing and await self._poll():
            assert self.machine is not None
            self.machine.idle_stopped()

    # ---- output, timers ----------------------------------------------------------------

    def _flush(self) -> None:
        assert self.machine is not None
        data = self.machine.data_to_send()
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        self._closing = True
        self._idle_wake.set()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm_timer(self) -> None:
        delay = self._last_active + self._timeout() - self.loop.time()
        self._timer = self.loop.call_later(max(delay, 0.05), self._check_idle)

    def _timeout(self) -> float:
        machine = self.machine
        if machine is not None and machine.state is State.NOT_AUTHENTICATED:
            return self.listener.login_timeout
        return self.listener.idle_timeout

    def _check_idle(self) -> None:
        if self._closing or self.machine is None:
            return
        if not self._busy and self.loop.time() - self._last_active >= self._timeout():
            log.info("%s imap autologout", self.id)
            self.machine.close("Autologout; idle for too long")
            self._flush()
            self._close()
            return
        self._arm_timer()


class _ThreadWriter:
    """Untagged responses written by a command in a worker thread, handed to the event
    loop in chunks; waits while the transport's buffer is full (pause_writing)."""

    def __init__(self, session: ImapSession) -> None:
        self.session = session
        self.buf: list[bytes] = []
        self.size = 0

    def run(self, func: Any, *args: Any) -> Any:
        result = func(*args, self)
        self.flush()
        return result

    def write(self, data: bytes) -> None:
        self.buf.append(data)
        self.size += len(data)
        if self.size >= WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        session = self.session
        if not session._writable.wait(WRITE_STALL) or session._closing:
            raise ConnectionGone
        if self.buf:
            data = b"".join(self.buf)
            self.buf, self.size = [], 0
            session.loop.call_soon_threadsafe(session._write, data)
