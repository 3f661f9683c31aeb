"""Outbound delivery end to end: real dnsmasq for MX, real aiosmtpd receivers on
127.0.0.2 / 127.0.0.3, the relay as a subprocess in between."""

from __future__ import annotations

import email
import email.policy
import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.dnsmasq import Dnsmasq
from support.relay_server import RelayProcess
from support.sink import Sink

DEAD = "127.0.0.4"  # nothing listens there


def common_free_port() -> int:
    """A port free on 127.0.0.2, .3 and .4 alike (the MX port is one number for all)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            port = int(s.getsockname()[1])
        try:
            for host in ("127.0.0.3", "127.0.0.4"):
                with socket.socket() as t:
                    t.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    port = common_free_port()
    dns = Dnsmasq(tmp_path_factory.mktemp("dns"))
    dns.host("mx1.net.test", "127.0.0.2").host("mx2.net.test", "127.0.0.3")
    dns.host("dead.net.test", DEAD)
    dns.mx("pref.test", "mx2.net.test", 20).mx("pref.test", "mx1.net.test", 10)
    dns.mx("fallback.test", "dead.net.test", 10).mx("fallback.test", "mx2.net.test", 20)
    dns.host("implicit.test", "127.0.0.3")
    dns.null_mx("nullmx.test")
    dns.servfail("servfail.test")
    for name in ("partial", "retry", "expire", "reuse", "hold", "restart", "loop", "tls"):
        dns.mx(f"{name}.test", "mx1.net.test", 10)
    dns.start()
    sinks = {h: Sink(h, port).start() for h in ("127.0.0.2", "127.0.0.3")}
    relay = RelayProcess(
        tmp_path_factory.mktemp("relay"),
        server={"workers": 2},
        delivery={"enabled": True, "nameservers": [dns.nameserver], "port": port, "retry_schedule": ["1s"],
                  "max_queue_lifetime": "60s", "delay_warning": 0,
                  "max_connections_per_destination": 1, "connection_cache_time": "5s",
                  "connect_timeout": "2s"})
    relay.add_user("alice@example.test")
    relay.add_user("bob@example.test")
    relay.start()
    try:
        yield {"relay": relay, "dns": dns, "sinks": sinks, "port": port}
    finally:
        relay.stop()
        for sink in sinks.values():
            sink.stop()
        dns.stop()


def send(relay: RelayProcess, sender: str, recipients: list[str], subject: str,
         body: str = "Hello.\r\n") -> None:
    msg = f"From: {sender or 'mailer-daemon@x.test'}\r\nSubject: {subject}\r\n\r\n{body}"
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        assert s.sendmail(sender, recipients, msg.encode()) == {}


def wait_for(check: Callable[[], object], timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {check}")


def maildir(relay: RelayProcess, account: str) -> list[bytes]:
    local, domain = account.split("@")
    new = relay.data_dir / "mail" / domain / local / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def dsns_for(relay: RelayProcess, account: str, subject: str) -> list[email.message.Message]:
    out = []
    for raw in maildir(relay, account):
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        if msg.get_content_type() == "multipart/report" and subject.encode() in raw:
            out.append(msg)
    return out


def status_groups(dsn: email.message.Message) -> list[dict[str, str]]:
    part = dsn.get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    groups = part.get_payload()[1:]
    return [{k.lower(): str(v) for k, v in g.items()} for g in groups]


def entry(relay: RelayProcess, recipient: str) -> dict[str, object] | None:
    for e in relay.queue():
        if recipient in e["recipients"]:  # type: ignore[operator]
            return e
    return None


def test_lowest_preference_mx_gets_the_mail_with_our_received_header(world) -> None:
    relay, sinks = world["relay"], world["sinks"]
    send(relay, "alice@example.test", ["x@pref.test"], "pref")
    got = wait_for(lambda: sinks["127.0.0.2"].for_recipient("x@pref.test"))
    assert not sinks["127.0.0.3"].for_recipient("x@pref.test")
    data = got[0].data
    assert data.startswith(b"Received: from ") and b"by mx.example.test (relay)" in data
    assert b"Subject: pref" in data
    wait_for(lambda: entry(relay, "x@pref.test") is None)


def test_next_mx_when_the_first_is_down(world) -> None:
    relay, sinks = world["relay"], world["sinks"]
    send(relay, "alice@example.test", ["y@fallback.test"], "fallback")
    wait_for(lambda: sinks["127.0.0.3"].for_recipient("y@fallback.test"))


def test_implicit_mx_uses_the_domain_address(world) -> None:
    relay, sinks = world["relay"], world["sinks"]
    send(relay, "alice@example.test", ["z@implicit.test"], "implicit")
    wait_for(lambda: sinks["127.0.0.3"].for_recipient("z@implicit.test"))


@pytest.mark.parametrize("domain, status", [("nullmx.test", "5.1.10"),
                                            ("nxdomain.test", "5.1.2")])
def test_undeliverable_domain_bounces_with_a_dsn(world, domain: str, status: str) -> None:
    relay = world["relay"]
    subject = f"bounce-{domain}"
    send(relay, "alice@example.test", [f"u@{domain}"], subject)
    dsn = wait_for(lambda: dsns_for(relay, "alice@example.test", subject))[0]
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    kinds = [p.get_content_type() for p in dsn.get_payload()]
    assert kinds == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    groups = status_groups(dsn)
    assert groups[0]["final-recipient"] == f"rfc822; u@{domain}"
    assert groups[0]["action"] == "failed" and groups[0]["status"] == status
    assert f"Subject: {subject}" in dsn.get_payload()[2].get_payload()
    raw = next(r for r in maildir(relay, "alice@example.test") if subject.encode() in r)
    assert raw.startswith(b"Return-Path: <>\r\nDelivered-To: alice@example.test\r\n")
    wait_for(lambda: entry(relay, f"u@{domain}") is None)


def test_servfail_defers(world) -> None:
    relay = world["relay"]
    send(relay, "alice@example.test", ["s@servfail.test"], "servfail")
    e = wait_for(lambda: (x := entry(relay, "s@servfail.test")) and x["attempts"] and x)
    assert e["state"] == "deferred"
    assert e["attempts"] >= 1 and e["last_error"]
    assert relay.cli("queue", "delete", str(e["id"])).returncode == 0


def test_partial_failure_is_handled_per_recipient(world) -> None:
    relay, sink = world["relay"], world["sinks"]["127.0.0.2"]
    sink.rule("bad@partial.test", "550 5.1.1 No such user here")
    sink.rule("later@partial.test", "451 4.3.0 Try again later")
    send(relay, "alice@example.test",
         ["good@partial.test", "bad@partial.test", "later@partial.test"], "partial")
    wait_for(lambda: sink.for_recipient("good@partial.test"))
    dsn = wait_for(lambda: dsns_for(relay, "alice@example.test", "partial"))[0]
    groups = status_groups(dsn)
    assert [(g["final-recipient"], g["action"], g["status"]) for g in groups] == [
        ("rfc822; bad@partial.test", "failed", "5.1.1")]
    assert "550 5.1.1 No such user here" in groups[0]["diagnostic-code"]
    e = wait_for(lambda: entry(relay, "later@partial.test"))
    assert e["recipients"] == ["later@partial.test"]
    assert "451 4.3.0" in str(e["last_error"])
    assert relay.cli("queue", "delete", str(e["id"])).returncode == 0


def test_retry_after_a_temporary_failure_then_success(world) -> None:
    relay, sink = world["relay"], world["sinks"]["127.0.0.2"]
    sink.rule("again@retry.test", "451 4.7.1 Greylisted, come back later", times=1)
    send(relay, "alice@example.test", ["again@retry.test"], "retry")
    wait_for(lambda: sink.for_recipient("again@retry.test"))
    wait_for(lambda: entry(relay, "again@retry.test") is None)


def test_connection_reuse_for_one_destination(world) -> None:
    relay, sink = world["relay"], world["sinks"]["127.0.0.2"]
    before = sink.connections
    for i in range(5):
        send(relay, "alice@example.test", [f"r{i}@reuse.test"], f"reuse {i}")
    wait_for(lambda: all(sink.for_recipient(f"r{i}@reuse.test") for i in range(5)))
    assert sink.connections - before <= 2  # one, or two if the cache expired mid-way


def test_never_bounce_a_bounce(world) -> None:
    relay, sink = world["relay"], world["sinks"]["127.0.0.2"]
    sink.rule("gone@loop.test", "550 5.1.1 gone")
    send(relay, "", ["gone@loop.test"], "bounce of bounce")
    wait_for(lambda: entry(relay, "gone@loop.test") is None)
    wait_for(lambda: "never bounce a bounce" in relay.log_text())


def test_local_delivery_writes_the_maildir(world) -> None:
    relay = world["relay"]
    send(relay, "someone@pref.test", ["bob@example.test"], "local one")
    raw = wait_for(lambda: [r for r in maildir(relay, "bob@example.test") if b"local one" in r])[0]
    assert raw.startswith(b"Return-Path: <someone@pref.test>\r\nDelivered-To: bob@example.test\r\n"
                          b"Received: from ")
    assert raw.endswith(b"Hello.\r\n")
    assert not list((relay.data_dir / "mail" / "example.test" / "bob" / "tmp").iterdir())


def test_hold_release_flush_delete_against_the_running_server(world) -> None:
    relay, sink = world["relay"], world["sinks"]["127.0.0.2"]
    sink.rule("h@hold.test", "451 4.3.0 not yet")
    send(relay, "alice@example.test", ["h@hold.test"], "hold")
    e = wait_for(lambda: (x := entry(relay, "h@hold.test")) and x["attempts"] and x)
    qid = str(e["id"])
    assert relay.cli("queue", "hold", qid).returncode == 0
    assert entry(relay, "h@hold.test")["state"] == "hold"
    attempts = entry(relay, "h@hold.test")["attempts"]
    time.sleep(2.5)  # the 1 s retry schedule would have retried by now
    assert entry(relay, "h@hold.test")["attempts"] == attempts
    sink.rule("h@hold.test", "250 2.1.5 fine now")
    with sink.lock:
        del sink.rules["h@hold.test"]
    assert relay.cli("queue", "release", qid).returncode == 0
    wait_for(lambda: sink.for_recipient("h@hold.test"))
    wait_for(lambda: entry(relay, "h@hold.test") is None)
    assert relay.cli("queue", "delete", qid).returncode == 1  # already gone


def test_metrics_count_deliveries(world) -> None:
    import urllib.request

    relay = world["relay"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{relay.metrics_port}/metrics",
                                  timeout=10).read().decode()
    for name in ('relay_messages_delivered_total{kind="remote"}',
                 'relay_messages_delivered_total{kind="local"}',
                 "relay_messages_bounced_total", "relay_messages_deferred_total",
                 "relay_delivery_duration_seconds_bucket", "relay_outbound_connections_active",
                 'relay_dns_lookups_total{result="ok"}', "relay_local_deliveries_total"):
        assert name in text, name
