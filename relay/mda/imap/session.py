"""ImapSession: asyncio.Protocol glue between a socket and an ImapMachine (RFC 3501).

Runs the decisions the machine asks for: login (throttled, relay.auth.login), command
execution against the mailbox store (commands.execute in a worker thread: the store
blocks), STARTTLS, and IDLE (RFC 2177: about every `poll_interval` seconds one timer per
listener asks the store once per watched mailbox whether it changed, which costs a few
stat()s, and only the sessions whose mailbox did change sync; so deliveries by other
processes show up within a second or two, and thousands of idle sessions cost little).
Untagged responses from a command are streamed to the socket while it runs
(`_ThreadWriter`, with flow control), so a large FETCH is not built in memory; the last
chunk goes out with the tagged completion, in one write. Commands answered from memory
(commands.inline: FETCH of cached messages, SEARCH of index data and cached header
fields, SELECT of a current view, STORE of system flags) run on the event loop itself:
handing them to a thread and back would cost as much again as running them. The
connection mechanics (limits, decisions with reading paused, the autologout timer of
RFC 3501 §5.4, the TLS upgrade) are relay.glue's.

Imports: asyncio, relay.glue, relay.mda.imap.{machine,commands,context}, relay.mda.store,
relay.auth.login, relay.metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from relay import __version__, metrics
from relay.glue import ListenerBase, SessionGlue
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
READ_AHEAD = 64 * 1024  # input buffered while a command runs before reading pauses
INLINE_BURST = 16  # pipelined commands run inline in a row before other sessions' turn


class ConnectionGone(Exception):
    """The client went away while a command was writing its responses."""


@dataclass(kw_only=True)
class ImapListener(ListenerBase):
    store: MailStore
    auth: Authenticator
    allow_plaintext: bool  # [mda] allow_plaintext_auth
    idle_timeout: float = IDLE_TIMEOUT
    login_timeout: float = LOGIN_TIMEOUT
    poll_interval: float = POLL_INTERVAL
    idle_keepalive: float = IDLE_KEEPALIVE
    append_limit: int = MAX_APPEND
    _executor: concurrent.futures.ThreadPoolExecutor | None = field(default=None, init=False,
                                                                    repr=False)
    _hub: _IdleHub | None = field(default=None, init=False, repr=False)

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The threads commands run in (asyncio's default size)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="imap")
        return self._executor

    def idle_hub(self) -> _IdleHub:
        if self._hub is None:
            self._hub = _IdleHub(self)
        return self._hub


class ImapSession(SessionGlue[ImapListener]):
    log = log
    SESSIONS_ACTIVE = metrics.IMAP_SESSIONS_ACTIVE
    REFUSAL = b"* BYE [UNAVAILABLE] Too many connections\r\n"
    INTERNAL_ERROR = b"* BYE [SERVERBUG] Internal error\r\n"

    def __init__(self, listener: ImapListener) -> None:
        super().__init__(listener, f"i{next(_ids)}")
        self.machine: ImapMachine | None = None  # made for an admitted client
        self.ctx: Context | None = None
        self._writable = threading.Event()
        self._writable.set()
        self._reading = True
        self._hold = False  # reading paused while a coroutine step runs
        self._tls = False
        self._fed = 0  # octets received while a command runs
        self._tail = b""  # a command's last output, sent with its tagged completion
        self._idle_poll: asyncio.Task[None] | None = None
        self._quiet_since = 0.0

    def _greet(self, address: str) -> None:
        self.peer = address
        lst = self.listener
        tls = self._tls = lst.implicit_tls
        self.machine = ImapMachine(ImapSettings(
            plaintext_allowed=tls or lst.allow_plaintext or is_loopback(address),
            tls_available=lst.tls_context is not None and not tls, tls_active=tls,
            append_limit=lst.append_limit,
            server_id=(("name", "relay"), ("version", __version__))))
        self._write(self.machine.greeting())

    def data_received(self, data: bytes) -> None:
        assert self.machine is not None
        self._last_active = self.loop.time()
        self.machine.receive_data(data)
        if self._busy:  # pipelined: taken up when the command ends
            self._fed += len(data)
            if self._fed > READ_AHEAD:
                self._update_reading()
            return
        self._drive()

    def eof_received(self) -> bool:
        super().eof_received()  # when a command runs, it ends with the machine's Closed
        # Half-open while a command runs, so its answers still go out (TLS cannot be half
        # open: there reading pauses while a command runs, so EOF waits for it).
        return self._busy and not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._writable.set()  # a command thread waiting to write gives up
        if self.listener._hub is not None:
            self.listener._hub.discard(self)

    def pause_writing(self) -> None:
        # The client does not read: stop reading its commands too, so pipelined commands
        # answered without I/O (CAPABILITY ...) cannot fill our write buffer.
        self._writable.clear()
        self._update_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        self._update_reading()

    def _update_reading(self) -> None:
        """Read while the client reads our answers and, during a command, until
        READ_AHEAD octets of what follows are buffered."""
        want = (not self._closing and self._writable.is_set()
                and not self._hold
                and not (self._busy and (self._tls or self._fed > READ_AHEAD)))
        transport = self.transport
        if want != self._reading and transport is not None and not transport.is_closing():
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    # ---- driving ----------------------------------------------------------------------

    def _drive_events(self) -> None:
        machine = self.machine
        assert machine is not None
        burst = INLINE_BURST
        while not self._busy and not self._closing:
            event = machine.next_event()
            for name in machine.counted():
                metrics.TALLY.add(_command_counter(name))
            if isinstance(event, Execute):
                self._flush()
                assert self.ctx is not None
                if burst and commands.inline(self.ctx, event.command):
                    burst -= 1
                    self._inline(event)
                    if not burst:  # let other sessions in; go on at the next turn
                        self._flush()
                        self.loop.call_soon(self._drive)
                        return
                    continue
                self._execute(event)
            elif isinstance(event, Login):
                self._flush()
                self._start(self._login(event))
            elif isinstance(event, StartTls):
                self._start_tls()
            elif isinstance(event, IdleStart):
                self._flush()
                self._quiet_since = self.loop.time()
                self.listener.idle_hub().add(self)
            elif isinstance(event, IdleStop):
                self._flush()
                self._start(self._stop_idle())
            elif isinstance(event, Closed):
                self._flush()
                self._close()
            else:
                self._flush()
                return

    def _pause_reading(self) -> None:
        """A coroutine step (LOGIN, STARTTLS, the end of IDLE) runs: hold reading."""
        self._hold = True
        self._fed = 0
        self._update_reading()

    def _resume_reading(self) -> None:
        self._hold = False
        self._update_reading()

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

    def _inline(self, event: Execute) -> None:
        """Run a command that commands.inline() admitted, here on the event loop."""
        machine = self.machine
        assert machine is not None and self.ctx is not None
        out = _ThreadWriter(self, inline=True)
        done, self._tail = out.run(commands.execute, self.ctx, event.command)
        machine.finish(done)

    def _execute(self, event: Execute) -> None:
        """Run the command in a worker thread; `_executed` takes over on the loop."""
        assert self.ctx is not None
        self._busy = True
        self._fed = 0
        if self._tls:
            self._update_reading()
        out = _ThreadWriter(self)
        future = self.listener.executor().submit(out.run, commands.execute, self.ctx,
                                                 event.command)
        future.add_done_callback(self._from_thread)

    def _from_thread(self, future: concurrent.futures.Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: so is the session
            self.loop.call_soon_threadsafe(self._executed, future)

    def _executed(self, future: concurrent.futures.Future[Any]) -> None:
        self._busy = False
        machine = self.machine
        assert machine is not None
        try:
            done, self._tail = future.result()
        except ConnectionGone:
            self._close()
            return
        except Exception as exc:  # noqa: BLE001 - one session's bug must not reach the worker
            if not self._closing:
                log.error("%s internal error", self.id, exc_info=exc)
                self._fail()
            return
        if self._closing:
            return
        machine.finish(done)
        self._update_reading()
        self._drive()

    def _tls_started(self) -> None:
        assert self.machine is not None
        self._tls = self._reading = True  # a new transport, reading
        self.machine.tls_started()

    # ---- IDLE (RFC 2177) ---------------------------------------------------------------

    def _idle_tick(self, behind: bool, now: float) -> None:
        """From the IDLE hub: poll when the mailbox changed; keep a quiet line alive."""
        if self._closing:
            return
        if behind and (self._idle_poll is None or self._idle_poll.done()):
            self._idle_poll = self.loop.create_task(self._idle_poll_once())
        if now - self._quiet_since >= self.listener.idle_keepalive:
            self._write(b"* OK Still here\r\n")  # RFC 2177 §3 allows it
            self._quiet_since = now

    async def _idle_poll_once(self) -> None:
        try:
            if not self._closing:
                await self._poll()
        except ConnectionGone:
            self._close()
        except Exception:  # noqa: BLE001 - one session's bug must not reach the worker
            log.exception("%s internal error during IDLE", self.id)
            self._fail()

    async def _poll(self) -> bool:
        """One sync of the selected mailbox; False when the session is ending."""
        assert self.ctx is not None and self.machine is not None
        out = _ThreadWriter(self)
        done, tail = await self.loop.run_in_executor(self.listener.executor(), out.run,
                                                     commands.poll, self.ctx)
        self._write(tail)
        if done is not None and done.transition is Transition.LOGOUT:
            self._close()
            return False
        return True

    async def _stop_idle(self) -> None:
        if self.listener._hub is not None:
            self.listener._hub.discard(self)
        task, self._idle_poll = self._idle_poll, None
        if task is not None:
            await task  # a poll in its thread finishes first: one store user at a time
        if not self._closing and await self._poll():
            assert self.machine is not None
            self.machine.idle_stopped()

    # ---- output, timers ----------------------------------------------------------------

    def _flush(self) -> None:
        assert self.machine is not None
        data = self.machine.data_to_send()
        if self._tail:
            data, self._tail = self._tail + data, b""
        if data:
            self._write(data)

    def _close(self) -> None:
        super()._close()
        if self.listener._hub is not None:
            self.listener._hub.discard(self)

    def _idle_timeout(self) -> float:
        machine = self.machine
        if machine is not None and machine.state is State.NOT_AUTHENTICATED:
            return self.listener.login_timeout
        return self.listener.idle_timeout

    def _timed_out(self) -> None:
        assert self.machine is not None
        log.info("%s imap autologout", self.id)
        self.machine.close("Autologout; idle for too long")
        self._flush()
        self._close()


class _ThreadWriter:
    """Untagged responses written by a command in a worker thread, handed to the event
    loop in chunks; waits while the transport's buffer is full (pause_writing)."""

    def __init__(self, session: ImapSession, inline: bool = False) -> None:
        self.session = session
        self.inline = inline  # on the event loop: hand chunks to the transport at once
        self.buf: list[bytes] = []
        self.size = 0

    def run(self, func: Any, *args: Any) -> tuple[Any, bytes]:
        """func(*args, self), and the output not yet handed over (the caller writes it
        with what follows, in one write)."""
        result = func(*args, self)
        tail = b"".join(self.buf)
        self.buf, self.size = [], 0
        return result, tail

    def write(self, data: bytes) -> None:
        self.buf.append(data)
        self.size += len(data)
        if self.size >= WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        session = self.session
        if self.inline:  # (inline output is bounded: commands.inline)
            data, self.buf, self.size = b"".join(self.buf), [], 0
            session._write(data)
            return
        if not session._writable.wait(WRITE_STALL) or session._closing:
            raise ConnectionGone
        if self.buf:
            data = b"".join(self.buf)
            self.buf, self.size = [], 0
            session.loop.call_soon_threadsafe(session._write, data)


class _IdleHub:
    """The IDLE sessions of one listener (so of one process) and the one timer that
    polls for them: each tick asks the store, once per distinct selected mailbox and in a
    worker thread, for its newest view (three stat()s and an index read), then lets only
    the sessions whose view is behind run their sync; and sends keepalives."""

    def __init__(self, listener: ImapListener) -> None:
        self.listener = listener
        self.sessions: set[ImapSession] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, session: ImapSession) -> None:
        self.sessions.add(session)
        if self._task is None or self._task.done():
            self._task = session.loop.create_task(self._run(session.loop))

    def discard(self, session: ImapSession) -> None:
        self.sessions.discard(session)

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        while self.sessions:
            await asyncio.sleep(self.listener.poll_interval)
            try:
                await self._tick(loop)
            except Exception:  # noqa: BLE001 - keep polling for the others
                log.exception("IDLE poll failed")

    async def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        watched: dict[tuple[int, bytes], Any] = {}
        sessions = []
        for s in list(self.sessions):
            selected = s.ctx.selected if s.ctx is not None else None
            if s._closing or selected is None:
                continue
            sessions.append((s, selected))
            watched.setdefault(selected.folder.watch_key, selected.folder)
        if not sessions:
            return
        latest = await loop.run_in_executor(self.listener.executor(), _latest_views, watched)
        now = loop.time()
        for s, selected in sessions:
            if s not in self.sessions:
                continue
            view = latest.get(selected.folder.watch_key)
            behind = (view is None or selected.pending_expunges
                      or selected.folder.behind(view))
            s._idle_tick(bool(behind), now)


def _latest_views(watched: dict[tuple[int, bytes], Any]) -> dict[tuple[int, bytes], Any]:
    """The newest view of each watched folder (missing: gone; its sessions find out)."""
    out = {}
    for key, folder in watched.items():
        try:
            out[key] = folder.latest()
        except Exception:  # noqa: BLE001 - StoreError or a disk error: the sync reports it
            continue
    return out


_command_counters: dict[str, Any] = {}


def _command_counter(name: str) -> Any:
    child = _command_counters.get(name)
    if child is None:
        child = _command_counters[name] = metrics.IMAP_COMMANDS.labels(command=name)
    return child
