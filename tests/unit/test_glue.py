"""relay.glue: the mechanics every session glue shares, with a toy protocol on a fake
transport (no sockets): admission and release, decisions with reading paused (replies in
order, RFC 2920), internal errors costing one session, the idle timer, graceful stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from relay.auth.throttle import ConnectionLimiter
from relay.glue import ListenerBase, SessionGlue

Runner = Callable[..., Any]


class Gauge:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class FakeTransport:
    def __init__(self, address: str = "192.0.2.1") -> None:
        self.address = address
        self.written = b""
        self.reading = True
        self.closed = False
        self.protocol: SessionGlue[Any] | None = None

    def get_extra_info(self, name: str) -> Any:
        return (self.address, 4321) if name == "peername" else None

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        """Like asyncio: connection_lost follows on the next loop iteration."""
        if not self.closed and self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)
        self.closed = True


class LineMachine:
    """A toy machine: each line is a command; WAIT asks for a decision."""

    def __init__(self) -> None:
        self.buffer = b""
        self.out = b""
        self.decided = False

    def receive_data(self, data: bytes) -> None:
        self.buffer += data

    def next_line(self) -> bytes | None:
        line, sep, rest = self.buffer.partition(b"\n")
        if not sep:
            return None
        self.buffer = rest
        return line


@dataclass(kw_only=True)
class ToyListener(ListenerBase):
    decision: asyncio.Future[None]  # what every WAIT awaits


class ToySession(SessionGlue[ToyListener]):
    log = logging.getLogger("relay.toy")
    SESSIONS_ACTIVE = Gauge()
    REFUSAL = b"busy\n"
    INTERNAL_ERROR = b"oops\n"

    def __init__(self, listener: ToyListener) -> None:
        super().__init__(listener, "t1")
        self.machine: LineMachine | None = None

    def _greet(self, address: str) -> None:
        self.peer = address
        self.machine = LineMachine()
        self._write(b"hello " + address.encode() + b"\n")

    def _drive_events(self) -> None:
        assert self.machine is not None
        while not self._busy and not self._closing:
            line = self.machine.next_line()
            if line is None:
                self._flush()
                return
            if line == b"WAIT":
                self._start(self._decide())
            elif line == b"BOOM":
                raise RuntimeError("a bug in the glue")
            else:
                self.machine.out += b"ok " + line + b"\n"

    async def _decide(self) -> None:
        assert self.machine is not None
        await self.listener.decision
        self.machine.out += b"decided\n"

    def _flush(self) -> None:
        assert self.machine is not None
        out, self.machine.out = self.machine.out, b""
        self._write(out)

    def _tls_started(self) -> None:
        raise AssertionError("not used here")

    def _timed_out(self) -> None:
        self._write(b"bye: idle\n")
        self._close()

    def _shut_down(self) -> None:
        self._write(b"bye: stopping\n")
        self._close()


def listener(max_total: int = 10, max_per_ip: int = 10, idle: float = 60.0) -> ToyListener:
    """Called on the running loop (inside a test's main)."""
    return ToyListener(limiter=ConnectionLimiter(max_total, max_per_ip), tls_context=None,
                       idle_timeout=idle, decision=asyncio.get_running_loop().create_future())


def connect(lst: ToyListener, address: str = "192.0.2.1") -> tuple[ToySession, FakeTransport]:
    session = ToySession(lst)
    transport = FakeTransport(address)
    transport.protocol = session
    session.connection_made(transport)
    return session, transport


async def settle() -> None:
    """Let a finished decision's callbacks and the session's next steps run."""
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def fresh_gauge() -> None:
    ToySession.SESSIONS_ACTIVE = Gauge()


def test_an_admitted_client_is_greeted_and_counted(run_async: Runner) -> None:
    async def main() -> None:
        lst = listener()
        session, transport = connect(lst)
        assert transport.written == b"hello 192.0.2.1\n"
        assert lst.sessions == {session: "192.0.2.1"} and lst.limiter.total == 1
        assert ToySession.SESSIONS_ACTIVE.value == 1

    run_async(main)


def test_a_client_over_the_limit_gets_the_refusal_and_is_not_counted(
        run_async: Runner) -> None:
    async def main() -> None:
        lst = listener(max_per_ip=1)
        connect(lst)
        second, transport = connect(lst)
        assert transport.written == b"busy\n" and transport.closed
        await asyncio.sleep(0)  # connection_lost
        assert second not in lst.sessions and lst.limiter.total == 1
        assert ToySession.SESSIONS_ACTIVE.value == 1

    run_async(main)


def test_connection_lost_releases_the_slot(run_async: Runner) -> None:
    async def main() -> None:
        lst = listener(max_total=1)
        session, transport = connect(lst)
        session.data_received(b"QUIT\n")
        session.connection_lost(None)
        assert lst.sessions == {} and lst.limiter.total == 0
        assert ToySession.SESSIONS_ACTIVE.value == 0
        assert connect(lst, "192.0.2.2")[1].written.startswith(b"hello")

    run_async(main)


def test_a_decision_pauses_reading_and_later_replies_wait_for_it(run_async: Runner) -> None:
    async def main() -> None:
        lst = listener()
        session, transport = connect(lst)
        session.data_received(b"A\nWAIT\nB\n")
        assert transport.written == b"hello 192.0.2.1\n"  # RFC 2920: replies in order
        assert not transport.reading
        await asyncio.sleep(0)
        assert transport.written == b"hello 192.0.2.1\n"
        lst.decision.set_result(None)
        await settle()
        assert transport.written == b"hello 192.0.2.1\nok A\ndecided\nok B\n"
        assert transport.reading

    run_async(main)


def test_an_exception_while_driving_costs_one_session(run_async: Runner) -> None:
    async def main() -> None:
        lst = listener()
        session, transport = connect(lst)
        other, _ = connect(lst, "192.0.2.2")
        session.data_received(b"BOOM\n")
        assert transport.written.endswith(b"\noops\n") and transport.closed
        await asyncio.sleep(0)
        assert list(lst.sessions) == [other]

    run_async(main)


def test_an_exception_in_a_decision_costs_one_session(run_async: Runner) -> None:
    async def main() -> None:
        session, transport = connect(lst := listener())
        session.data_received(b"WAIT\n")
        lst.decision.set_exception(RuntimeError("a bug in a decision"))
        await settle()
        assert transport.written.endswith(b"\noops\n") and transport.closed

    run_async(main)


def test_the_idle_timer_ends_a_quiet_session(run_async: Runner) -> None:
    async def main() -> None:
        lst = listener(idle=0.05)
        session, transport = connect(lst)
        await asyncio.sleep(0.2)
        assert transport.written.endswith(b"bye: idle\n") and transport.closed

    run_async(main)


def test_no_idle_timeout_while_a_decision_runs(run_async: Runner) -> None:
    async def main() -> None:
        session, transport = connect(lst := listener(idle=0.05))
        session.data_received(b"WAIT\n")
        await asyncio.sleep(0.2)
        assert not transport.closed
        lst.decision.set_result(None)
        await asyncio.sleep(0)

    run_async(main)


def test_shutdown_closes_idle_sessions_refuses_newcomers_and_spares_busy_ones(
        run_async: Runner) -> None:
    async def main() -> None:
        lst = listener()
        idle, idle_transport = connect(lst)
        busy, busy_transport = connect(lst, "192.0.2.2")
        busy.data_received(b"WAIT\n")
        lst.shutdown()
        assert idle_transport.written.endswith(b"bye: stopping\n") and idle_transport.closed
        assert not busy_transport.closed
        late, late_transport = connect(lst, "192.0.2.3")
        assert late_transport.written == b"busy\n" and late_transport.closed
        lst.decision.set_result(None)
        await asyncio.sleep(0)

    run_async(main)
