"""Mail submission over real sockets: SMTP AUTH (RFC 4954) on port 25 after STARTTLS, the
submission port (STARTTLS, RFC 6409) and the submissions port (implicit TLS, RFC 8314),
completion of Date:/Message-ID: (RFC 6409 §8), the sender check, with smtplib and swaks."""

from __future__ import annotations

import base64
import shutil
import smtplib
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.raw_smtp import RawSmtp
from support.relay_server import RELAY, RelayProcess, free_port

from relay import config as relay_config

UNTRUSTED = "127.0.0.9"  # outside relay_networks (127.0.0.1/32)
PASSWORD = "secret"
ROOT = Path(__file__).resolve().parents[2]


class Submission(RelayProcess):
    """The relay with submission and submissions listeners besides port 25."""

    def __init__(self, workdir: Path) -> None:
        self.submission_port = free_port()
        self.submissions_port = free_port()
        super().__init__(workdir, listen={
            "submission": [f"127.0.0.1:{self.submission_port}"],
            "submissions": [f"127.0.0.1:{self.submissions_port}"]})


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Submission]:
    server = Submission(tmp_path_factory.mktemp("submission"))
    for user in ("alice", "bob", "carol"):
        server.add_user(f"{user}@example.test", PASSWORD)
    with server:
        yield server


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def message(extra: str = "", subject: str = "submitted") -> bytes:
    return (f"From: alice@example.test\r\nTo: far@elsewhere.test\r\n{extra}"
            f"Subject: {subject}\r\n\r\nHello.\r\n").encode()


def body_of(relay: RelayProcess, reply_text: str | bytes) -> bytes:
    text = reply_text.decode() if isinstance(reply_text, bytes) else reply_text
    queue_id = text.rsplit(" ", 1)[-1]
    r = subprocess.run([*RELAY, "queue", "show", queue_id, "-c", str(relay.config)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split(b"\n\n", 1)[1]


def header_lines(body: bytes) -> list[bytes]:
    """Header fields of the stored message, folded lines joined."""
    head = body.split(b"\r\n\r\n", 1)[0]
    return head.replace(b"\r\n\t", b" ").split(b"\r\n")


def send(s: smtplib.SMTP, msg: bytes, sender: str = "alice@example.test",
         rcpt: str = "far@elsewhere.test") -> bytes:
    """One transaction; returns the 250 text of the end of data."""
    s.ehlo_or_helo_if_needed()
    s.mail(sender)
    code, text = s.rcpt(rcpt)
    assert code == 250, (code, text)
    code, text = s.data(msg)
    assert code == 250, (code, text)
    return text


# ---- submission (587-like): STARTTLS, then AUTH ------------------------------------------------


def test_submission_starttls_login_relays_anywhere(relay: Submission) -> None:
    with smtplib.SMTP("127.0.0.1", relay.submission_port, source_address=(UNTRUSTED, 0)) as s:
        s.starttls(context=tls_context())
        code, text = s.login("alice@example.test", PASSWORD)
        assert (code, text) == (235, b"2.7.0 Authentication successful")
        queued = send(s, message())
    body = body_of(relay, queued)
    fields = header_lines(body)
    assert fields[0].startswith(b"Received: from ")
    assert b" with ESMTPSA id " in fields[0]  # RFC 3848


def test_submission_login_mechanism_works_too(relay: Submission) -> None:
    with smtplib.SMTP("127.0.0.1", relay.submission_port) as s:
        s.starttls(context=tls_context())
        s.ehlo()
        s.user, s.password = "bob@example.test", PASSWORD
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235


def test_submission_does_not_offer_auth_before_tls_and_refuses_it_with_538(
        relay: Submission) -> None:
    with RawSmtp(relay.submission_port) as c:
        r = c.ehlo()
        assert "STARTTLS" in r.text and "AUTH" not in r.text
        plain = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()
        r = c.cmd(f"AUTH PLAIN {plain}")
        assert (r.code, r.status) == (538, "5.7.11")
        c.starttls()
        r = c.ehlo()
        assert "AUTH PLAIN LOGIN" in r.text.split("\n")
        assert c.cmd(f"AUTH PLAIN {plain}").code == 235


def test_submission_mail_before_auth_is_530_5_7_0(relay: Submission) -> None:
    with RawSmtp(relay.submission_port, source="127.0.0.1") as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<alice@example.test>")  # even from a trusted network
        assert (r.code, r.status) == (530, "5.7.0")
        c.starttls()
        c.ehlo()
        r = c.cmd("MAIL FROM:<alice@example.test>")
        assert (r.code, r.status) == (530, "5.7.0")


def test_bad_password_is_535_5_7_8_and_counted(relay: Submission) -> None:
    with smtplib.SMTP("127.0.0.1", relay.submission_port, source_address=("127.0.0.7", 0)) as s:
        s.starttls(context=tls_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            s.login("carol@example.test", "wrong")
        assert err.value.smtp_code == 535
        assert err.value.smtp_error == b"5.7.8 Authentication credentials invalid"
        # The session goes on: the right password still works.
        assert s.login("carol@example.test", PASSWORD)[0] == 235
    text = urllib.request.urlopen(f"http://127.0.0.1:{relay.metrics_port}/metrics",
                                  timeout=10).read().decode()
    counted = [line for line in text.splitlines()
               if line.startswith('relay_auth_failures_total{protocol="smtp"}')]
    assert counted and float(counted[0].split()[1]) >= 1


def test_auth_twice_is_503_5_5_1(relay: Submission) -> None:
    with smtplib.SMTP("127.0.0.1", relay.submission_port) as s:
        s.starttls(context=tls_context())
        s.login("alice@example.test", PASSWORD)
        plain = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()
        assert s.docmd("AUTH", f"PLAIN {plain}") == (503, b"5.5.1 Already authenticated")


def test_sender_other_than_the_account_is_553_5_7_1(relay: Submission) -> None:
    with smtplib.SMTP("127.0.0.1", relay.submission_port) as s:
        s.starttls(context=tls_context())
        s.login("alice@example.test", PASSWORD)
        code, text = s.mail("bob@example.test")
        assert (code, text) == (553, b"5.7.1 Sender address not owned by the authenticated user")
        assert s.mail("Alice+lists@example.test")[0] == 250  # a subaddress is hers


# ---- completion (RFC 6409 §8) -----------------------------------------------------------------


def test_date_and_message_id_are_added_when_missing(relay: Submission) -> None:
    with smtplib.SMTP("127.0.0.1", relay.submission_port) as s:
        s.starttls(context=tls_context())
        s.login("alice@example.test", PASSWORD)
        queued = send(s, message())
    queue_id = queued.decode().rsplit(" ", 1)[-1]
    fields = header_lines(body_of(relay, queued))
    assert fields[0].startswith(b"Received: ")
    assert fields[1].startswith(b"Date: ")
    assert fields[2] == f"Message-ID: <{queue_id}@mx.example.test>".encode()
    assert fields[3] == b"From: alice@example.test"  # then the original header section


def test_date_and_message_id_are_left_alone_when_present(relay: Submission) -> None:
    own = "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <mine@client.example>\r\n"
    with smtplib.SMTP("127.0.0.1", relay.submission_port) as s:
        s.starttls(context=tls_context())
        s.login("alice@example.test", PASSWORD)
        queued = send(s, message(extra=own))
    fields = header_lines(body_of(relay, queued))
    assert [f for f in fields if f.lower().startswith(b"date:")] == [
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000"]
    assert [f for f in fields if f.lower().startswith(b"message-id:")] == [
        b"Message-ID: <mine@client.example>"]


def test_mail_relayed_without_auth_is_not_completed(relay: Submission) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, source_address=(UNTRUSTED, 0)) as s:
        queued = send(s, message(), sender="x@remote.test", rcpt="alice@example.test")
    fields = header_lines(body_of(relay, queued))
    assert not any(f.lower().startswith((b"date:", b"message-id:")) for f in fields)


# ---- submissions (465-like): implicit TLS ---------------------------------------------------


def test_submissions_implicit_tls_login_and_send(relay: Submission) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", relay.submissions_port, context=tls_context(),
                          source_address=(UNTRUSTED, 0)) as s:
        code, text = s.ehlo()
        assert b"AUTH PLAIN LOGIN" in text and b"STARTTLS" not in text
        s.login("alice@example.test", PASSWORD)
        queued = send(s, message())
    assert b" with ESMTPSA id " in header_lines(body_of(relay, queued))[0]


def test_submissions_mail_before_auth_is_530_5_7_0(relay: Submission) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", relay.submissions_port, context=tls_context()) as s:
        s.ehlo()
        assert s.mail("alice@example.test") == (530, b"5.7.0 Authentication required")


# ---- port 25: AUTH after STARTTLS lets users relay ----------------------------------------------


def test_port_25_relays_for_an_authenticated_user_from_an_untrusted_address(
        relay: Submission) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, source_address=(UNTRUSTED, 0)) as s:
        s.ehlo()
        assert not s.has_extn("auth")  # no AUTH in plaintext
        s.mail("alice@example.test")
        code, text = s.rcpt("far@elsewhere.test")
        assert (code, text) == (554, b"5.7.1 Relay access denied")
        s.rset()
        s.starttls(context=tls_context())
        s.login("alice@example.test", PASSWORD)
        queued = send(s, message())
    assert b" with ESMTPSA id " in header_lines(body_of(relay, queued))[0]


def test_port_25_auth_before_starttls_is_538_5_7_11(relay: Submission) -> None:
    with RawSmtp(relay.port, source=UNTRUSTED) as c:
        c.ehlo()
        r = c.cmd("AUTH LOGIN")
        assert (r.code, r.status) == (538, "5.7.11")


# ---- swaks ------------------------------------------------------------------------------------


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("swaks")
    assert exe, "swaks is missing: make test installs it (Debian package swaks)"
    return subprocess.run([exe, "--helo", "swaks.test", "--to", "far@elsewhere.test", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_submits_with_starttls_and_auth(relay: Submission, mechanism: str) -> None:
    r = swaks("--server", f"127.0.0.1:{relay.submission_port}", "--tls",
              "--auth", mechanism, "--auth-user", "alice@example.test",
              "--auth-password", PASSWORD, "--from", "alice@example.test",
              "--local-interface", UNTRUSTED)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "<~  235 2.7.0 Authentication successful" in r.stdout
    assert "<~  250 2.0.0 OK queued as" in r.stdout


def test_swaks_submits_over_implicit_tls(relay: Submission) -> None:
    r = swaks("--server", f"127.0.0.1:{relay.submissions_port}", "--tls-on-connect",
              "--auth", "PLAIN", "--auth-user", "alice@example.test",
              "--auth-password", PASSWORD, "--from", "alice@example.test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "<~  250 2.0.0 OK queued as" in r.stdout


def test_swaks_sees_the_bad_password(relay: Submission) -> None:
    r = swaks("--server", f"127.0.0.1:{relay.submission_port}", "--tls",
              "--auth", "PLAIN", "--auth-user", "carol@example.test",
              "--auth-password", "wrong", "--from", "carol@example.test",
              "--local-interface", "127.0.0.8")
    assert r.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid" in r.stdout


# ---- the bundled configuration ------------------------------------------------------------------


def test_bundled_config_listens_for_submission_on_loopback() -> None:
    listen = relay_config.load(ROOT / "config" / "relay.toml").listen
    assert [str(e) for e in listen.submission] == ["127.0.0.1:5587"]
    assert [str(e) for e in listen.submissions] == ["127.0.0.1:5465"]
