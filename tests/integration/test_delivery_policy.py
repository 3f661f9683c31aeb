"""Delivery settings that need a relay of their own: smarthost, queue lifetime expiry,
restart with deferred mail, STARTTLS to the next hop, the peer's SIZE limit."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest
from support.relay_server import RelayProcess
from support.sink import Sink
from test_delivery import common_free_port, dsns_for, entry, maildir, send, status_groups, wait_for


@pytest.fixture
def sink_port() -> int:
    return common_free_port()


def smarthost_relay(tmp_path: Path, port: int, **delivery: object) -> RelayProcess:
    relay = RelayProcess(tmp_path / "relay", server={"workers": 1}, delivery={
        "enabled": True, "smarthost": f"127.0.0.3:{port}", "retry_schedule": ["1s"],
        "delay_warning": 0, "connect_timeout": "2s", **delivery})
    relay.add_user("alice@example.test")
    return relay


def test_smarthost_takes_all_remote_mail(tmp_path: Path, sink_port: int) -> None:
    sink = Sink("127.0.0.3", sink_port).start()
    relay = smarthost_relay(tmp_path, sink_port)
    try:
        with relay:
            send(relay, "alice@example.test", ["a@far.test", "b@other.test"], "smarthost")
            got = wait_for(lambda: sink.for_recipient("a@far.test"))
            assert set(got[0].recipients) == {"a@far.test", "b@other.test"}  # one transaction
            wait_for(lambda: not relay.queue())
    finally:
        sink.stop()


def test_expired_message_bounces_with_4_4_7(tmp_path: Path, sink_port: int) -> None:
    sink = Sink("127.0.0.3", sink_port).start()
    sink.rule("slow@far.test", "451 4.3.0 not today")
    relay = smarthost_relay(tmp_path, sink_port, max_queue_lifetime="3s")
    try:
        with relay:
            send(relay, "alice@example.test", ["slow@far.test"], "expiring")
            dsn = wait_for(lambda: dsns_for(relay, "alice@example.test", "expiring"), 30)[0]
            group = status_groups(dsn)[0]
            assert group["action"] == "failed" and group["status"] == "4.4.7"
            assert "451 4.3.0 not today" in group["diagnostic-code"]
            wait_for(lambda: entry(relay, "slow@far.test") is None)
            wait_for(lambda: "bounced to=<slow@far.test> status=4.4.7" in relay.log_text())
    finally:
        sink.stop()


def test_deferred_mail_survives_a_restart_with_its_attempts(tmp_path: Path,
                                                             sink_port: int) -> None:
    sink = Sink("127.0.0.3", sink_port).start()
    sink.rule("later@far.test", "451 4.3.0 not yet")
    relay = smarthost_relay(tmp_path, sink_port, retry_schedule=["1h"])
    try:
        with relay:
            send(relay, "alice@example.test", ["later@far.test"], "restart")
            wait_for(lambda: (x := entry(relay, "later@far.test")) and x["attempts"])
        assert relay.queue()[0]["attempts"] == 1  # stopped server: the record is on disk
        assert relay.queue()[0]["state"] == "deferred"
        with sink.lock:
            sink.rules.clear()
        with relay:
            time.sleep(1.5)
            assert not sink.for_recipient("later@far.test")  # not due for an hour
            assert relay.cli("queue", "flush").returncode == 0
            wait_for(lambda: sink.for_recipient("later@far.test"))
            wait_for(lambda: not relay.queue())
    finally:
        sink.stop()


class _TlsSink(Sink):
    """A sink that offers STARTTLS with a throwaway certificate."""

    def __init__(self, host: str, port: int, cert: Path, key: Path) -> None:
        super().__init__(host, port)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        handler = self.controller.handler
        from support.sink import _CountingSMTP

        self.controller.factory = lambda: _CountingSMTP(  # type: ignore[method-assign]
            handler, hostname=f"sink-{host}", enable_SMTPUTF8=True, decode_data=False,
            tls_context=ctx, require_starttls=False)


def test_opportunistic_starttls_to_the_next_hop(tmp_path: Path, sink_port: int) -> None:
    from relay.tls import _make_self_signed

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    _make_self_signed("sink.test", cert, key)
    sink = _TlsSink("127.0.0.3", sink_port, cert, key).start()
    relay = smarthost_relay(tmp_path, sink_port)
    try:
        with relay:
            send(relay, "alice@example.test", ["t@far.test"], "tls")
            got = wait_for(lambda: sink.for_recipient("t@far.test"))
            assert got[0].tls
            wait_for(lambda: "delivered to=<t@far.test>" in relay.log_text())
            assert "tls=yes" in relay.log_text()
    finally:
        sink.stop()


def test_message_over_the_peer_size_limit_bounces_5_3_4(tmp_path: Path, sink_port: int) -> None:
    sink = Sink("127.0.0.3", sink_port)
    sink.controller.factory = (lambda f=sink.controller.factory: _sized(f()))  # type: ignore
    sink.start()
    relay = smarthost_relay(tmp_path, sink_port)
    try:
        with relay:
            send(relay, "alice@example.test", ["big@far.test"], "too big", "x" * 5000 + "\r\n")
            dsn = wait_for(lambda: dsns_for(relay, "alice@example.test", "too big"))[0]
            assert status_groups(dsn)[0]["status"] == "5.3.4"
            assert not sink.for_recipient("big@far.test")
            assert maildir(relay, "alice@example.test")
    finally:
        sink.stop()


def _sized(smtp):  # type: ignore[no-untyped-def]
    smtp.data_size_limit = 1000  # announced as SIZE 1000 (RFC 1870)
    return smtp



def test_delay_warning_is_sent_once(tmp_path: Path, sink_port: int) -> None:
    sink = Sink("127.0.0.3", sink_port).start()
    sink.rule("slow@far.test", "451 4.3.0 still not today")
    relay = smarthost_relay(tmp_path, sink_port, delay_warning="2s")
    try:
        with relay:
            send(relay, "alice@example.test", ["slow@far.test"], "warn me")
            dsn = wait_for(lambda: dsns_for(relay, "alice@example.test", "warn me"), 30)[0]
            assert dsn["Subject"].startswith("Delayed Mail")
            group = status_groups(dsn)[0]
            assert group["action"] == "delayed" and group["status"] == "4.3.0"
            time.sleep(3)  # more retries, but no second warning
            assert len(dsns_for(relay, "alice@example.test", "warn me")) == 1
            assert entry(relay, "slow@far.test") is not None  # still queued
    finally:
        sink.stop()


def test_a_receiver_that_never_greets_times_out_and_defers(tmp_path: Path,
                                                           sink_port: int) -> None:
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.3", sink_port))
    silent.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])  # accept, then say nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    relay = smarthost_relay(tmp_path, sink_port, command_timeout="1s", retry_schedule=["1h"])
    try:
        with relay:
            send(relay, "alice@example.test", ["mute@far.test"], "hang")
            e = wait_for(lambda: (x := entry(relay, "mute@far.test")) and x["attempts"] and x, 30)
            assert e["state"] == "deferred"
            assert "timed out" in str(e["last_error"])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        silent.close()


def test_no_reply_to_the_final_dot_defers_and_never_loses_the_message(
        tmp_path: Path, sink_port: int) -> None:
    """RFC 5321 §4.5.3.2.6 / §6.1: the receiver may or may not have the message; the
    relay keeps it and tries again (a possible duplicate, never a loss)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.3", sink_port))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    got_dot = threading.Event()
    held: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        conn.settimeout(0.2)
        conn.sendall(b"220 mute ESMTP\r\n")
        buf, in_data = b"", False
        while not stop.is_set():
            try:
                chunk = conn.recv(65536)
            except OSError:
                continue
            if not chunk:
                return
            buf += chunk
            while not in_data and b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                verb = line[:4].upper()
                if verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    in_data = True
                elif verb in (b"EHLO", b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    conn.sendall(b"250 ok\r\n")
                else:
                    conn.sendall(b"500 what\r\n")
            if in_data and b"\r\n.\r\n" in buf:
                got_dot.set()  # ... and never answer it

    def accept() -> None:
        while not stop.is_set():
            try:
                conn = listener.accept()[0]
            except OSError:
                continue
            held.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    relay = smarthost_relay(tmp_path, sink_port, data_timeout="1s", retry_schedule=["1h"])
    try:
        with relay:
            send(relay, "alice@example.test", ["mute@far.test"], "no final reply")
            assert got_dot.wait(20)  # the whole message went out
            e = wait_for(lambda: (x := entry(relay, "mute@far.test")) and x["attempts"] and x, 30)
            assert e["state"] == "deferred"
            assert "timed out" in str(e["last_error"])
            assert not dsns_for(relay, "alice@example.test", "no final reply")  # not bounced
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
