"""SmtpSession: asyncio.Protocol glue between a socket and a ServerMachine.

Feeds received octets to the machine, runs the decisions it asks for (policy inline,
intake as a task with reading paused so replies stay in order), writes one buffer per
pipelined batch (RFC 2920), keeps the idle timer (RFC 5321 §4.5.3.2), performs
STARTTLS (RFC 3207) and checks SMTP AUTH passwords (RFC 4954) through the shared
throttled Authenticator. One Listener serves port 25 (smtp), submission with STARTTLS
(587) or with implicit TLS (465, RFC 8314). Anything unexpected is logged and answered
421 4.3.0; the worker never dies of one session.

Imports: asyncio, relay.smtp.{machine,events,policy,replies}, relay.intake,
relay.auth.login (the Authenticator every protocol shares), relay.metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections import Counter
from dataclasses import dataclass, field, replace

from relay import metrics
from relay.intake import Intake, SessionInfo
from relay.auth.login import Authenticator, LoginResult
from relay.smtp import replies as R
from relay.smtp.events import (
    Authenticate,
    Closed,
    MailFrom,
    MessageReceived,
    RcptTo,
    Signal,
    StartTls,
)
from relay.smtp.machine import ServerMachine, SmtpSettings, State
from relay.smtp.policy import Peer, RecipientPolicy, check_sender, is_trusted

log = logging.getLogger("relay.smtp")
_ids = itertools.count(1)


@dataclass
class Listener:
    """What every session of one listening socket shares (per worker process)."""

    settings: SmtpSettings
    policy: RecipientPolicy
    intake: Intake
    relay_networks: tuple  # type: ignore[type-arg]
    idle_timeout: float
    max_connections: int
    max_per_ip: int
    tls_context: ssl.SSLContext | None
    auth: Authenticator | None = None  # SMTP AUTH; settings.auth_available says the same
    implicit_tls: bool = False  # submissions (465): TLS from the first octet, RFC 8314
    name: str = "smtp"  # for logs: smtp | submission | submissions
    sessions: set[SmtpSession] = field(default_factory=set)
    per_ip: Counter[str] = field(default_factory=Counter)
    stopping: bool = False

    def shutdown(self) -> None:
        """Graceful stop: idle sessions get 421 now, busy ones after their transaction."""
        self.stopping = True
        for session in list(self.sessions):
            session.close_if_idle()


class SmtpSession(asyncio.Protocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.id = f"s{next(_ids)}"
        self.transport: asyncio.Transport | None = None
        self.machine = ServerMachine(listener.settings, tls_active=listener.implicit_tls)
        self.peer = Peer("", False)
        self._busy = False  # a decision task is running; reading is paused
        self._closing = False
        self._last_active = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername") or ("", 0)
        address = str(peername[0])
        lst = self.listener
        self.peer = Peer(address, is_trusted(address, lst.relay_networks))
        lst.sessions.add(self)
        lst.per_ip[address] += 1
        metrics.SMTP_SESSIONS_ACTIVE.inc()
        if (len(lst.sessions) > lst.max_connections
                or lst.per_ip[address] > lst.max_per_ip or lst.stopping):
            # RFC 5321 §3.8: a server may refuse service with 421 at connection time.
            metrics.count_reply(R.TOO_MANY_CONNECTIONS.code)
            self._write(R.TOO_MANY_CONNECTIONS.encode())
            self._close()
            return
        metrics.count_reply(220)
        self._write(self.machine.greeting())
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        self._last_active = self.loop.time()
        self.machine.receive_data(data)
        self._drive()

    def eof_received(self) -> bool:
        self.machine.receive_data(b"")
        self._drive()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        lst = self.listener
        if self in lst.sessions:
            lst.sessions.discard(self)
            lst.per_ip[self.peer.address] -= 1
            if lst.per_ip[self.peer.address] <= 0:
                del lst.per_ip[self.peer.address]
            metrics.SMTP_SESSIONS_ACTIVE.dec()
        self._closing = True
        if self._timer:
            self._timer.cancel()

    # ---- driving the machine --------------------------------------------------------

    def _drive(self) -> None:
        try:
            self._drive_events()
        except Exception:  # noqa: BLE001 - a bug must cost one session, not the worker
            log.exception("%s internal error", self.id)
            self._flush()
            metrics.count_reply(R.LOCAL_ERROR.code)
            self._write(R.LOCAL_ERROR.encode())
            self._close()

    def _drive_events(self) -> None:
        machine = self.machine
        while not self._busy and not self._closing:
            event = machine.next_event()
            if isinstance(event, RcptTo):
                refusal = self.listener.policy.check(self.peer, event.recipient)
                machine.accept() if refusal is None else machine.reject(refusal)
            elif isinstance(event, MailFrom):
                refusal = check_sender(self.peer, event.sender)
                machine.accept() if refusal is None else machine.reject(refusal)
            elif isinstance(event, Authenticate):
                self._start(self._login(event))
            elif isinstance(event, MessageReceived):
                self._start(self._queue(event))
            elif isinstance(event, StartTls):
                self._flush()
                self._start(self._upgrade())
            elif isinstance(event, Closed):
                self._flush()
                self._close()
            elif event is Signal.NEED_DATA:
                self._flush()
                if self.listener.stopping:
                    self.close_if_idle()
                return
            else:  # Signal.PAUSED cannot happen while not busy
                raise RuntimeError(f"unexpected {event!r}")

    def _start(self, coro) -> None:  # type: ignore[no-untyped-def]
        self._busy = True
        assert self.transport is not None
        self.transport.pause_reading()
        task = self.loop.create_task(coro)
        task.add_done_callback(self._resume)

    def _resume(self, task: asyncio.Task[None]) -> None:
        self._busy = False
        if task.cancelled() or self._closing:
            return
        if task.exception() is not None:
            log.error("%s internal error", self.id, exc_info=task.exception())
            self._flush()
            metrics.count_reply(R.LOCAL_ERROR.code)
            self._write(R.LOCAL_ERROR.encode())
            self._close()
            return
        assert self.transport is not None
        self.transport.resume_reading()
        self._drive()

    async def _queue(self, event: MessageReceived) -> None:
        m = self.machine
        info = SessionInfo(self.id, self.peer.address, m.helo_name, m.esmtp, m.tls_active,
                           self.peer.authenticated is not None)
        reply = await self.listener.intake.submit(event, info)
        m.accept(reply) if reply.is_positive else m.reject(reply)

    async def _login(self, event: Authenticate) -> None:
        auth = self.listener.auth
        assert auth is not None  # the machine offers AUTH only when settings say so
        result, account = await auth.login("smtp", self.peer.address, event.user,
                                           event.password)
        if result is not LoginResult.OK:
            self.machine.auth_failed(temporary=result is LoginResult.BLOCKED)
            return
        self.peer = replace(self.peer, authenticated=account)
        log.info("%s %s login user=<%s> ip=%s mechanism=%s", self.id, self.listener.name,
                 account, self.peer.address, event.mechanism)
        self.machine.auth_ok(account)

    async def _upgrade(self) -> None:
        assert self.transport is not None and self.listener.tls_context is not None
        try:
            transport = await self.loop.start_tls(
                self.transport, self, self.listener.tls_context, server_side=True,
                ssl_handshake_timeout=self.listener.idle_timeout)
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as exc:
            log.info("%s TLS handshake failed: %s", self.id, exc)
            self._closing = True
            self.transport.abort()
            return
        self.transport = transport  # type: ignore[assignment]
        self.peer = replace(self.peer, authenticated=None)  # RFC 3207 §4.2: start afresh
        self.machine.tls_started()
        log.debug("%s TLS established", self.id)

    # ---- output, timers, closing ----------------------------------------------------

    def _flush(self) -> None:
        out = self.machine.data_to_send()
        codes = self.machine.reply_codes
        for code in codes:
            metrics.count_reply(code)
        codes.clear()
        if out:
            self._write(out)

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close_if_idle(self) -> None:
        """Used at shutdown: leave only between transactions (no work in flight)."""
        if self._busy or self._closing:
            return
        if self.machine.state in (State.GREETING, State.READY):
            self.machine.close_with(R.SHUTTING_DOWN)
            self._flush()
            self._close()

    def _arm_timer(self) -> None:
        delay = self._last_active + self.listener.idle_timeout - self.loop.time()
        self._timer = self.loop.call_later(max(delay, 0.05), self._check_idle)

    def _check_idle(self) -> None:
        if self._closing:
            return
        if not self._busy and self.loop.time() - self._last_active >= self.listener.idle_timeout:
            log.info("%s idle timeout", self.id)
            self.machine.close_with(R.IDLE_TIMEOUT)
            self._flush()
            self._close()
            return
        if self._busy:
            self._last_active = self.loop.time()
        self._arm_timer()
