"""SmtpSession: asyncio.Protocol glue between a socket and a ServerMachine.

Feeds received octets to the machine, runs the decisions it asks for (policy inline,
intake and AUTH as tasks with reading paused, relay.glue), writes one buffer per
pipelined batch (RFC 2920), answers the idle timer with 421 (RFC 5321 §4.5.3.2),
performs STARTTLS (RFC 3207) and checks SMTP AUTH passwords (RFC 4954) through the
shared throttled Authenticator. One Listener serves port 25 (smtp), submission with
STARTTLS (587) or with implicit TLS (465, RFC 8314). Anything unexpected is logged and
answered 421 4.3.0; the worker never dies of one session.

Imports: asyncio, relay.glue, relay.smtp.{machine,events,policy,replies,settings}, relay.intake,
relay.auth.login (the Authenticator every protocol shares), relay.metrics.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace

from relay import metrics
from relay.auth.login import Authenticator, LoginResult
from relay.glue import ListenerBase, SessionGlue
from relay.intake import Intake, SessionInfo
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
from relay.smtp.machine import ServerMachine
from relay.smtp.policy import Peer, RecipientPolicy, check_sender, is_trusted
from relay.smtp.settings import SmtpSettings, State

log = logging.getLogger("relay.smtp")
_ids = itertools.count(1)


@dataclass(kw_only=True)
class Listener(ListenerBase):
    """What every SMTP session of one listening socket shares (per worker process)."""

    settings: SmtpSettings
    policy: RecipientPolicy
    intake: Intake
    relay_networks: tuple  # type: ignore[type-arg]
    auth: Authenticator | None = None  # SMTP AUTH; settings.auth_available says the same
    name: str = "smtp"  # for logs: smtp | submission | submissions


class SmtpSession(SessionGlue[Listener]):
    log = log
    SESSIONS_ACTIVE = metrics.SMTP_SESSIONS_ACTIVE
    # RFC 5321 §3.8: a server may refuse service with 421 at connection time.
    REFUSAL = R.TOO_MANY_CONNECTIONS.encode()
    INTERNAL_ERROR = R.LOCAL_ERROR.encode()

    def __init__(self, listener: Listener) -> None:
        super().__init__(listener, f"s{next(_ids)}")
        self.machine = ServerMachine(listener.settings, tls_active=listener.implicit_tls)
        self.peer = Peer("", False)

    def _greet(self, address: str) -> None:
        self.peer = Peer(address, is_trusted(address, self.listener.relay_networks))
        metrics.count_reply(220)
        self._write(self.machine.greeting())

    def _refuse(self) -> None:
        metrics.count_reply(R.TOO_MANY_CONNECTIONS.code)
        super()._refuse()

    # ---- driving the machine --------------------------------------------------------

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
                self._start_tls()
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

    def _tls_started(self) -> None:
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

    def _fail(self) -> None:
        self._flush()
        metrics.count_reply(R.LOCAL_ERROR.code)
        super()._fail()

    def _shut_down(self) -> None:
        if self.machine.state in (State.GREETING, State.READY):
            self.machine.close_with(R.SHUTTING_DOWN)
            self._flush()
            self._close()

    def _arm_timer(self) -> None:
        if self._busy:  # our own decision outlasting the timeout is not client idleness
            self._last_active = self.loop.time()
        super()._arm_timer()

    def _timed_out(self) -> None:
        log.info("%s idle timeout", self.id)
        self.machine.close_with(R.IDLE_TIMEOUT)
        self._flush()
        self._close()
