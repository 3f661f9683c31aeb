"""POP3 with real clients (Python's poplib, curl): mail delivered over SMTP comes back
byte-identical; STLS and implicit TLS; UPDATE-state deletion; the maildrop lock."""

from __future__ import annotations

import poplib
import shutil
import smtplib
import ssl
import subprocess
import time
from collections.abc import Iterator

import pytest
from support.relay_server import RelayProcess, free_port


def tls_client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


@pytest.fixture(scope="module")
def mda(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    pop3, pop3s = free_port(), free_port()
    relay = RelayProcess(tmp_path_factory.mktemp("pop3"), delivery={"enabled": True},
                         listen={"pop3": [f"127.0.0.1:{pop3}"], "pop3s": [f"127.0.0.1:{pop3s}"]})
    relay.pop3_port, relay.pop3s_port = pop3, pop3s  # type: ignore[attr-defined]
    for user in ("carol", "dave", "erin", "frank"):
        relay.add_user(f"{user}@example.test", f"{user}-pw")
    with relay:
        yield relay


def deliver(relay: RelayProcess, to: str, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        assert s.sendmail("sender@remote.test", [to], body) == {}


def wait_count(relay: RelayProcess, user: str, n: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        box = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=10)  # type: ignore[attr-defined]
        box.user(user)
        box.pass_(user.split("@")[0] + "-pw")
        count = box.stat()[0]
        box.quit()
        if count >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{user} never had {n} messages")


def stored(relay: RelayProcess, account: str) -> list[bytes]:
    local, domain = account.split("@")
    root = relay.data_dir / "mail" / domain / local
    return [p.read_bytes() for d in ("new", "cur") for p in sorted((root / d).iterdir())]


def test_retr_is_byte_identical_to_the_delivered_file(mda: RelayProcess) -> None:
    body = (b"From: x@remote.test\r\nSubject: pop3 identity\r\n\r\nline one\r\n"
            b".starts with a dot\r\n..two dots\r\n\r\nlast\r\n")
    deliver(mda, "carol@example.test", body)
    wait_count(mda, "carol@example.test", 1)
    box = poplib.POP3("127.0.0.1", mda.pop3_port)  # type: ignore[attr-defined]
    box.user("carol@example.test")
    box.pass_("carol-pw")
    resp, lines, octets = box.retr(1)
    box.quit()
    got = b"\r\n".join(lines) + b"\r\n"  # poplib strips CRLF and un-stuffs dots
    assert got == stored(mda, "carol@example.test")[0]
    assert got.endswith(body)


def test_stls_and_uidl_stable_across_sessions(mda: RelayProcess) -> None:
    deliver(mda, "dave@example.test", b"Subject: a\r\n\r\n1\r\n")
    deliver(mda, "dave@example.test", b"Subject: b\r\n\r\n2\r\n")
    wait_count(mda, "dave@example.test", 2)
    box = poplib.POP3("127.0.0.1", mda.pop3_port)  # type: ignore[attr-defined]
    assert "STLS" in box.capa()
    box.stls(context=tls_client())
    box.user("dave@example.test")
    box.pass_("dave-pw")
    first = box.uidl()[1]
    box.quit()
    box = poplib.POP3_SSL("127.0.0.1", mda.pop3s_port, context=tls_client())  # type: ignore[attr-defined]
    box.user("dave@example.test")
    box.pass_("dave-pw")
    assert box.uidl()[1] == first
    box.quit()


def test_dele_takes_effect_only_at_quit(mda: RelayProcess) -> None:
    deliver(mda, "erin@example.test", b"Subject: keep\r\n\r\nk\r\n")
    deliver(mda, "erin@example.test", b"Subject: drop\r\n\r\nd\r\n")
    wait_count(mda, "erin@example.test", 2)
    box = poplib.POP3("127.0.0.1", mda.pop3_port)  # type: ignore[attr-defined]
    box.user("erin@example.test")
    box.pass_("erin-pw")
    box.dele(2)
    box.sock.close()  # vanish without QUIT: RFC 1939 §6, nothing is deleted
    time.sleep(0.3)
    box = poplib.POP3("127.0.0.1", mda.pop3_port)  # type: ignore[attr-defined]
    box.user("erin@example.test")
    box.pass_("erin-pw")
    assert box.stat()[0] == 2
    box.dele(2)
    box.quit()
    assert len(stored(mda, "erin@example.test")) == 1
    assert b"Subject: keep" in stored(mda, "erin@example.test")[0]


def test_a_locked_maildrop_refuses_a_second_session(mda: RelayProcess) -> None:
    deliver(mda, "frank@example.test", b"Subject: x\r\n\r\nx\r\n")
    wait_count(mda, "frank@example.test", 1)
    first = poplib.POP3("127.0.0.1", mda.pop3_port)  # type: ignore[attr-defined]
    first.user("frank@example.test")
    first.pass_("frank-pw")
    second = poplib.POP3("127.0.0.1", mda.pop3_port)  # type: ignore[attr-defined]
    second.user("frank@example.test")
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        second.pass_("frank-pw")
    first.quit()


def test_bad_password_is_refused_and_counted(mda: RelayProcess) -> None:
    box = poplib.POP3("127.0.0.1", mda.pop3_port)  # type: ignore[attr-defined]
    box.user("carol@example.test")
    with pytest.raises(poplib.error_proto, match=r"AUTH"):
        box.pass_("wrong")
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{mda.metrics_port}/metrics").read().decode()
    assert 'relay_auth_failures_total{protocol="pop3"}' in text


def test_curl_lists_and_retrieves_over_pop3s(mda: RelayProcess) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is missing: make test installs it (Debian package curl)"
    deliver(mda, "carol@example.test", b"Subject: via curl\r\n\r\nhello curl\r\n")
    wait_count(mda, "carol@example.test", 2)
    url = f"pop3s://127.0.0.1:{mda.pop3s_port}/"  # type: ignore[attr-defined]
    listing = subprocess.run([curl, "-sS", "-k", "-u", "carol@example.test:carol-pw", url],
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert len(listing.stdout.strip().splitlines()) >= 2
    msg = subprocess.run([curl, "-sS", "-k", "-u", "carol@example.test:carol-pw", url + "2"],
                         capture_output=True, timeout=30)
    assert msg.returncode == 0 and b"hello curl" in msg.stdout
