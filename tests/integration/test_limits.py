"""Connection limits and the idle timeout (RFC 5321 §4.5.3.2), on a server set up for them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.raw_smtp import RawSmtp
from support.relay_server import RelayProcess


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    server = RelayProcess(tmp_path_factory.mktemp("tight"), server={"workers": 1},
                          limits={"max_connections": 4, "max_connections_per_ip": 2,
                                  "idle_timeout": 1.0})
    with server:
        yield server


@pytest.fixture
def tight(tight_server: RelayProcess) -> RelayProcess:
    """The server, once it has noticed that the previous test's clients are gone."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with RawSmtp(tight_server.port) as probe:
            if probe.greeting.code == 220:
                break
        time.sleep(0.05)
    time.sleep(0.1)  # and the probe itself is gone
    return tight_server


def test_too_many_connections_from_one_ip_is_421_4_7_0(tight: RelayProcess) -> None:
    with RawSmtp(tight.port) as a, RawSmtp(tight.port) as b:
        assert a.greeting.code == b.greeting.code == 220
        with RawSmtp(tight.port) as c:
            assert (c.greeting.code, c.greeting.status) == (421, "4.7.0")
            assert c.closed()
        with RawSmtp(tight.port, source="127.0.0.2") as other:
            assert other.greeting.code == 220  # the limit is per address


def test_too_many_connections_in_all_is_421_4_7_0(tight: RelayProcess) -> None:
    clients = [RawSmtp(tight.port, source=f"127.0.0.{10 + i}") for i in range(4)]
    try:
        assert all(c.greeting.code == 220 for c in clients)
        with RawSmtp(tight.port, source="127.0.0.20") as c:
            assert (c.greeting.code, c.greeting.status) == (421, "4.7.0")
    finally:
        for c in clients:
            c.close()


def test_idle_client_is_dropped_with_421(tight: RelayProcess) -> None:
    with RawSmtp(tight.port) as c:
        c.ehlo()
        started = time.monotonic()
        r = c.reply()  # nothing sent: the server speaks first when the timer fires
        assert (r.code, r.status) == (421, "4.4.2")
        assert 0.9 <= time.monotonic() - started < 5
        assert c.closed()


def test_activity_keeps_a_session_alive(tight: RelayProcess) -> None:
    with RawSmtp(tight.port) as c:
        for _ in range(6):
            time.sleep(0.3)
            assert c.cmd("NOOP").code == 250


def test_slow_data_counts_as_activity(tight: RelayProcess, tmp_path: Path) -> None:
    with RawSmtp(tight.port) as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@remote.test>")
        c.cmd("RCPT TO:<x@elsewhere.test>")
        assert c.cmd("DATA").code == 354
        for i in range(5):
            time.sleep(0.4)
            c.send(b"line %d\r\n" % i)
        r = c.cmd(b".")
        assert r.code == 250
