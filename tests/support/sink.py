"""Real SMTP receivers (aiosmtpd) on 127.0.0.2 / 127.0.0.3 for delivery tests.

Each Sink records what it received and how many connections it saw, and answers RCPT
per recipient as the test says: accept, reject (5xx), defer (4xx), or defer only the
first N times.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool


@dataclass
class Rule:
    reply: str  # e.g. "550 5.1.1 No such user"
    times: int | None = None  # None: always; n: only the first n times


class _CountingSMTP(SMTP):
    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        sink: Sink = self.event_handler.sink
        with sink.lock:
            sink.connections += 1
        super().connection_made(transport)


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        with self.sink.lock:
            rule = self.sink.rules.get(address.lower())
            if rule is not None and (rule.times is None or rule.times > 0):
                if rule.times is not None:
                    rule.times -= 1
                return rule.reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        with self.sink.lock:
            self.sink.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                               data, session.ssl is not None))
        return "250 2.0.0 Sunk"


class Sink:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.rules: dict[str, Rule] = {}
        self.connections = 0
        handler = _Handler(self)
        self.controller = Controller(
            handler, hostname=host, port=port, server_hostname=f"sink-{host}",
            ready_timeout=10, decode_data=False, enable_SMTPUTF8=True)
        self.controller.factory = lambda: _CountingSMTP(  # type: ignore[method-assign]
            handler, hostname=f"sink-{host}", enable_SMTPUTF8=True, decode_data=False)

    def rule(self, address: str, reply: str, times: int | None = None) -> None:
        with self.lock:
            self.rules[address.lower()] = Rule(reply, times)

    def for_recipient(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if address in m.recipients]

    def start(self) -> Sink:
        self.controller.start()
        with self.lock:
            self.connections = 0  # the controller's own readiness probe
        return self

    def stop(self) -> None:
        self.controller.stop()
