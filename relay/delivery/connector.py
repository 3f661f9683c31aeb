"""asyncio glue for ClientMachine: one outbound connection (Postfix's smtp(8) I/O half).

Connects (with a timeout) to one address, drives the machine through greeting, EHLO and
opportunistic STARTTLS, sends transactions, and applies the RFC 5321 §4.5.3.2 timeouts
to every wait for a reply. The machine decides everything else.

Imports: asyncio, ssl, relay.delivery.client, relay.queue.model, relay.metrics.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

from relay import metrics
from relay.delivery.client import (
    ClientMachine,
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
READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    command: float  # RFC 5321 §4.5.3.2.1-5: greeting, MAIL, RCPT, DATA 354
    data: float  # RFC 5321 §4.5.3.2.6: the reply to the final dot


class Connection:
    """A connected, greeted outbound SMTP session; `open()` makes one."""

    def __init__(self, machine: ClientMachine, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, timeouts: Timeouts, address: str) -> None:
        self.machine = machine
        self.reader = reader
        self.writer = writer
        self.timeouts = timeouts
        self.address = address
        self.closed = False
        self.handshake_failed = False
        metrics.OUTBOUND_CONNECTIONS_ACTIVE.inc()

    @classmethod
    async def open(cls, host: str, address: str, port: int, helo_name: str,
                   timeouts: Timeouts, tls: ssl.SSLContext, server_hostname: str | None,
                   require_tls: bool = False, starttls: bool = True) -> Connection | Failed:
        """Connect and greet; a Failed (connection refused, timeout, 4xx/5xx greeting)
        tells the caller to try the next address.

        Opportunistic TLS as Postfix's "may" level: a failed handshake is retried once
        in plaintext, unless the destination requires TLS."""
        machine = ClientMachine(helo_name, host, starttls=starttls)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address, port, limit=READ_SIZE), timeouts.connect)
        except (OSError, asyncio.TimeoutError) as exc:
            why = "timed out" if isinstance(exc, asyncio.TimeoutError) else (
                exc.strerror or str(exc))
            return Failed(False, None, "4.4.1",
                          f"x-relay; connect to {host}[{address}]:{port}: {why}",
                          f"dns; {host}")
        conn = cls(machine, reader, writer, timeouts, address)
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
        return not self.closed and self.machine.idle and not self.reader.at_eof()

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
            if self.machine.idle:
                self.machine.quit()
                self.writer.write(self.machine.data_to_send())
                await asyncio.wait_for(self._drive(None, None), 5.0)
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            self.writer.close()

    async def _drive(self, tls: ssl.SSLContext | None,
                     server_hostname: str | None) -> Ready | TransactionDone | Failed | Closed:
        """Run the machine until it has news for the caller."""
        machine = self.machine
        while True:
            event = machine.next_event()
            out = machine.data_to_send()
            if out:
                try:
                    self.writer.write(out)
                except (OSError, ConnectionError):
                    machine.receive_data(b"")
                    continue
            if isinstance(event, (Ready, TransactionDone, Failed, Closed)):
                return event
            if isinstance(event, StartTls):
                await self._upgrade(tls, server_hostname)
                continue
            if event is Signal.PAUSED:  # closed machine with nothing more to say
                return Failed(False, None, "4.4.2", "x-relay; connection closed",
                              machine.remote_mta, machine.tls_active)
            timeout = (self.timeouts.data if machine.state is ClientState.TRANSACTION
                       else self.timeouts.command)
            try:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            except asyncio.TimeoutError:
                log.info("timeout waiting for %s[%s]", machine.host, self.address)
                machine.timed_out()
                continue
            except (OSError, ConnectionError):
                data = b""
            machine.receive_data(data)

    async def _upgrade(self, tls: ssl.SSLContext | None, server_hostname: str | None) -> None:
        if tls is None:  # not reachable: STARTTLS is only sent during open()
            self.machine.receive_data(b"")
            return
        try:
            await asyncio.wait_for(
                self.writer.start_tls(tls, server_hostname=server_hostname),
                self.timeouts.command)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            log.info("TLS handshake with %s failed: %s", self.machine.host, exc)
            self.handshake_failed = True
            self.machine.receive_data(b"")
            return
        self.machine.tls_started()
