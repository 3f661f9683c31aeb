"""SessionGlue and ListenerBase: what the SMTP, IMAP and POP3 session glues share.

SessionGlue is the asyncio.Protocol half every `*/session.py` has in common; the
subclass keeps what is its protocol's own: the machine, how its events are dispatched,
and what it says at connection refusal, at internal errors, at timeouts and at shutdown.

- Admission: at connection time a client over the listener's limits (one
  auth.throttle.ConnectionLimiter per listener) or arriving while it stops is refused
  with the protocol's temporary refusal (RFC 5321 §3.8 421, RFC 3501 §7.1.5 BYE).
- Decisions: a coroutine the machine waits for (login, queue commit, STARTTLS) runs as a
  task with reading paused, and the machine is driven on when it ends, so replies keep
  the order of the commands, pipelined or not (RFC 2920 §3).
- Idle timer: one loop.call_later per session, re-armed from the last activity
  (RFC 5321 §4.5.3.2, RFC 3501 §5.4, RFC 1939 §3); no timeout while a decision runs.
- STARTTLS: loop.start_tls on the same socket after the go-ahead was written (RFC 3207
  §4, RFC 2595 §4, RFC 3501 §6.2.1); the subclass then tells its machine to start
  afresh. A failed handshake aborts the connection.
- Errors: anything unexpected while driving the machine or in a decision is logged and
  costs this one session (`_fail`), never the worker.

Imports: asyncio, ssl, logging, stdlib; relay.auth.throttle (the connection limiter).
Nothing of any protocol, role or metric: the subclasses bring those.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from relay.auth.throttle import ConnectionLimiter


@dataclass(kw_only=True)
class ListenerBase:
    """What every session of one listening socket shares (per worker process)."""

    limiter: ConnectionLimiter
    tls_context: ssl.SSLContext | None
    implicit_tls: bool = False  # TLS from the first octet (RFC 8314)
    idle_timeout: float
    handshake_timeout: float = 60.0  # STARTTLS handshake (SMTP: the idle timeout)
    # Admitted sessions and the address each was counted under in `limiter`.
    sessions: dict[SessionGlue[Any], str] = field(default_factory=dict, init=False, repr=False)
    stopping: bool = field(default=False, init=False)

    def shutdown(self) -> None:
        """Graceful stop: refuse newcomers; idle sessions close now, busy ones after."""
        self.stopping = True
        for session in list(self.sessions):
            session.close_if_idle()


ListenerT = TypeVar("ListenerT", bound=ListenerBase)


class SessionGlue(asyncio.Protocol, Generic[ListenerT]):
    """One connection: admission, decisions with reading paused, idle timer, STARTTLS,
    closing. A subclass sets `machine`, `peer`, the class data below, and the hooks that
    raise NotImplementedError here."""

    log: ClassVar[logging.Logger]  # the protocol's logger
    SESSIONS_ACTIVE: ClassVar[Any]  # its metrics gauge
    REFUSAL: ClassVar[bytes]  # the answer to a client over the limits
    INTERNAL_ERROR: ClassVar[bytes]  # the last words after an internal error
    machine: Any  # set by the subclass's __init__ (None until `_greet`, if it likes)

    def __init__(self, listener: ListenerT, session_id: str) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.id = session_id
        self.transport: Any = None
        self.peer: Any = ""  # the client as the protocol knows it
        self._busy = False  # a decision (IMAP: also a command) runs; no idle timeout
        self._closing = False
        self._last_active = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        address = str((transport.get_extra_info("peername") or ("",))[0])
        lst = self.listener
        if lst.stopping or not lst.limiter.admit(address):
            self._refuse()
            self._close()
            return
        lst.sessions[self] = address
        self.SESSIONS_ACTIVE.inc()
        self._greet(address)
        self._arm_timer()

    def _greet(self, address: str) -> None:
        """An admitted client from `address`: set up the machine, write its greeting."""
        raise NotImplementedError

    def _refuse(self) -> None:
        self._write(self.REFUSAL)

    def data_received(self, data: bytes) -> None:
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
        if self._timer is not None:
            self._timer.cancel()
        address = self.listener.sessions.pop(self, None)
        if address is not None:
            self.listener.limiter.release(address)
            self.SESSIONS_ACTIVE.dec()

    # ---- driving the machine ------------------------------------------------------------

    def _drive(self) -> None:
        try:
            self._drive_events()
        except Exception:  # noqa: BLE001 - a bug must cost one session, not the worker
            self.log.exception("%s internal error", self.id)
            self._fail()

    def _drive_events(self) -> None:
        """Act on the machine's events until it needs data or a decision was started."""
        raise NotImplementedError

    def _fail(self) -> None:
        self._write(self.INTERNAL_ERROR)
        self._close()

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a decision with reading paused; `_resume` drives the machine on."""
        self._busy = True
        self._pause_reading()
        self.loop.create_task(coro).add_done_callback(self._resume)

    def _resume(self, task: asyncio.Task[None]) -> None:
        self._busy = False
        if task.cancelled():
            return
        exc = task.exception()
        if self._closing:  # nobody left to answer
            if exc is not None:
                self.log.debug("%s error after close", self.id, exc_info=exc)
            return
        if exc is not None:
            self.log.error("%s internal error", self.id, exc_info=exc)
            self._fail()
            return
        self._resume_reading()
        self._drive()

    def _pause_reading(self) -> None:
        self.transport.pause_reading()

    def _resume_reading(self) -> None:
        self.transport.resume_reading()

    def _start_tls(self) -> None:
        """After the machine's go-ahead for STARTTLS/STLS: write it, then upgrade."""
        self._flush()
        self._start(self._upgrade())

    async def _upgrade(self) -> None:
        assert self.listener.tls_context is not None
        try:
            transport = await self.loop.start_tls(
                self.transport, self, self.listener.tls_context, server_side=True,
                ssl_handshake_timeout=self.listener.handshake_timeout)
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as exc:
            self.log.info("%s TLS handshake failed: %s", self.id, exc)
            self._closing = True
            self.transport.abort()
            return
        self.transport = transport
        self._tls_started()

    def _tls_started(self) -> None:
        """The handshake finished on the new transport: reset what TLS resets."""
        raise NotImplementedError

    # ---- output, timers, closing --------------------------------------------------------

    def _flush(self) -> None:
        """Write what the machine has to send."""
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close_if_idle(self) -> None:
        """Used at shutdown: leave only between transactions (no decision in flight)."""
        if not (self._busy or self._closing):
            self._shut_down()

    def _shut_down(self) -> None:
        """Not busy at a graceful stop: close if between transactions. By default the
        session stays (the composition root aborts what is left)."""

    def _idle_timeout(self) -> float:
        return self.listener.idle_timeout

    def _arm_timer(self) -> None:
        delay = self._last_active + self._idle_timeout() - self.loop.time()
        self._timer = self.loop.call_later(max(delay, 0.05), self._check_idle)

    def _check_idle(self) -> None:
        if self._closing:
            return
        if not self._busy and self.loop.time() - self._last_active >= self._idle_timeout():
            self._timed_out()
            return
        self._arm_timer()

    def _timed_out(self) -> None:
        """The idle timer expired: say so and close."""
        raise NotImplementedError
