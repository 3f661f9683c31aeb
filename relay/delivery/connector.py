"""asyncio glue for ClientMachine: one outbound connection (Postfix's smtp(8) I/O half).

Connects (with a timeout) to one address, drives the machine through greeting, EHLO and
opportunistic STARTTLS, sends transactions, and applies the RFC 5321 §4.5.3.2 timeouts
to every wait for a reply. The machine decides everything else.

Protocol-level I/O, like the server side (smtp/session.py): `data_received` feeds the
machine at once and wakes the coroutine waiting in `_drive` only when it waits; a wait
costs one future and one timer, not a task per read (asyncio.wait_for over a stream).

Imports: asyncio, ssl, relay.delivery.{client,events}, relay.queue.model, relay.metrics.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

from relay import metrics
from relay.delivery.client import ClientMachine
from relay.delivery.events import (
    ClientState,
    Closed,
    Failed,
    Ready,
    Signal,
    StartTls,
    TransactionDone,
)
from relay.queue.model import Outcome

log = logging.getLogger("relay.delivery")
QUIT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    command: float  # RFC 5321 §4.5.3.2.1-5: greeting, MAIL, RCPT, DATA 354
    data: float  # RFC 5321 §4.5.3.2.6: the reply to the final dot


class _Wire(asyncio.Protocol):
    """The socket's side: octets and the peer's close go straight into the machine."""

    def __init__(self, machine: ClientMachine) -> None:
        self.machine = machine
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.machine.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        self.machine.receive_data(b"")
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.machine.receive_data(b"")
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection:
    """A connected, greeted outbound SMTP session; `open()` makes one."""

    def __init__(self, wire: _Wire, timeouts: Timeouts, address: str) -> None:
        self.machine = wire.machine
        self.wire = wire
        self.timeouts = timeouts
        self.address = address
        self.closed = False
        self.handshake_failed = False
        self._loop = asyncio.get_running_loop()  # kept: each lookup costs a getpid()
        metrics.OUTBOUND_CONNECTIONS_ACTIVE.inc()

    @classmethod
    async def open(cls, host: str, address: str, port: int, helo_name: str,
                   timeouts: Timeouts, tls: ssl.SSLContext, server_hostname: str | None,
                   require_tls: bool = False, starttls: bool = True) -> Connection | Failed:
        """Connect and greet; a Failed (connection refused, timeout, 4xx/5xx greeting)
        tells the caller to try the next address.

        Opportunistic TLS as Postfix's "may" level: a failed handshake is retried once
        in plaintext, unless the destination requires TLS."""
        wire = _Wire(ClientMachine(helo_name, host, starttls=starttls))
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: wire, address, port),
                                   timeouts.connect)
        except (OSError, asyncio.TimeoutError) as exc:
            why = "timed out" if isinstance(exc, asyncio.TimeoutError) else (
                exc.strerror or str(exc))
            return Failed(False, None, "4.4.1",
                          f"x-relay; connect to {host}[{address}]:{port}: {why}",
                          f"dns; {host}")
        conn = cls(wire, timeouts, address)
        event = await conn._drive(tls, server_hostname)
        if isinstance(event, Ready) and require_tls and not conn.tls:
            await conn.close()
            # RFC 3207 §4.1 / RFC 3463 X.7.10: we will not send this in plaintext.
            return Failed(False, None, "4.7.10",
                          f"x-relay; TLS is required for {host} but was not offered",
                          f"dns; {host}")
        if isinstance(event, Ready):
            return conn
        await conn.close()
        if conn.handshake_failed and not require_tls:
            return await cls.open(host, address, port, helo_name, timeouts, tls,
                                  server_hostname, require_tls, starttls=False)
        assert isinstance(event, Failed)
        return event

    @property
    def tls(self) -> bool:
        return self.machine.tls_active

    @property
    def usable(self) -> bool:
        return not self.closed and self.machine.idle and not self.wire.lost

    async def send(self, sender: str, recipients: list[str], body: bytes,
                   smtputf8: bool) -> list[Outcome] | Failed:
        """One transaction. A Failed means nothing was tried: try another connection."""
        eight_bit = not body.isascii()
        self.machine.send_message(sender, recipients, body, smtputf8=smtputf8,
                                  eight_bit=eight_bit)
        event = await self._drive(None, None)
        if isinstance(event, TransactionDone):
            return list(event.outcomes)
        assert isinstance(event, Failed)
        await self.close()
        return event

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        metrics.OUTBOUND_CONNECTIONS_ACTIVE.dec()
        try:
            if self.machine.idle and not self.wire.lost:
                self.machine.quit()
                await self._drive(None, None, QUIT_TIMEOUT)
        finally:
            transport = self.wire.transport
            if transport is not None:
                transport.close()

    async def _drive(self, tls: ssl.SSLContext | None, server_hostname: str | None,
                     timeout: float | None = None) -> Ready | TransactionDone | Failed | Closed:
        """Run the machine until it has news for the caller."""
        machine = self.machine
        wire = self.wire
        while True:
            event = machine.next_event()
            out = machine.data_to_send()
            if out:
                transport = wire.transport
                if transport is None or transport.is_closing():
                    machine.receive_data(b"")
                    continue
                transport.write(out)
            if isinstance(event, (Ready, TransactionDone, Failed, Closed)):
                return event
            if isinstance(event, StartTls):
                await self._upgrade(tls, server_hostname)
                continue
            if event is Signal.PAUSED:  # closed machine with nothing more to say
                return Failed(False, None, "4.4.2", "x-relay; connection closed",
                              machine.remote_mta, machine.tls_active)
            await self._wait(timeout or (self.timeouts.data
                                         if machine.state is ClientState.TRANSACTION
                                         else self.timeouts.command))

    async def _wait(self, timeout: float) -> None:
        """Until the peer says something (or closes), at most `timeout` seconds."""
        loop = self._loop
        waiter = self.wire.waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            timed_out = await waiter
        finally:
            timer.cancel()
            self.wire.waiter = None
        if timed_out:
            log.info("timeout waiting for %s[%s]", self.machine.host, self.address)
            self.machine.timed_out()

    async def _upgrade(self, tls: ssl.SSLContext | None, server_hostname: str | None) -> None:
        wire = self.wire
        if tls is None or wire.transport is None:  # STARTTLS is only sent during open()
            self.machine.receive_data(b"")
            return
        loop = asyncio.get_running_loop()
        try:
            transport = await asyncio.wait_for(
                loop.start_tls(wire.transport, wire, tls, server_hostname=server_hostname),
                self.timeouts.command)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            log.info("TLS handshake with %s failed: %s", self.machine.host, exc)
            self.handshake_failed = True
            self.machine.receive_data(b"")
            return
        if transport is None:
            self.machine.receive_data(b"")
            return
        wire.transport = transport  # type: ignore[assignment]
        self.machine.tls_started()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)
