"""The inbound SMTP server over real sockets: replies, policy, limits, extensions."""

from __future__ import annotations

import smtplib
import ssl
import subprocess

import pytest
from support.raw_smtp import RawSmtp
from support.relay_server import RELAY, RelayProcess

UNTRUSTED = "127.0.0.9"  # outside relay_networks (127.0.0.1/32)


def message(subject: str = "hello", body: str = "Hi there.\r\n") -> bytes:
    return (f"From: someone@remote.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\n"
            + body).encode()


def queued(relay: RelayProcess, reply_text: str) -> dict[str, object]:
    queue_id = reply_text.rsplit(" ", 1)[-1]
    entries = [e for e in relay.queue() if e["id"] == queue_id]
    assert len(entries) == 1, (queue_id, relay.queue())
    return entries[0]


def body_of(relay: RelayProcess, queue_id: str) -> bytes:
    r = subprocess.run([*RELAY, "queue", "show", queue_id, "-c", str(relay.config)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split(b"\n\n", 1)[1]


def test_greeting_and_ehlo_advertise_extensions(relay: RelayProcess) -> None:
    with RawSmtp(relay.port) as c:
        assert c.greeting.code == 220 and "mx.example.test" in c.greeting.text
        r = c.ehlo()
        assert r.code == 250
        keywords = {line.split()[0] for line in r.text.split("\n")[1:]}
        assert {"PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8",
                "CHUNKING", "STARTTLS"} <= keywords
        assert "SIZE 200000" in r.text


def test_local_delivery_is_queued_with_received_header(relay: RelayProcess) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, source_address=(UNTRUSTED, 0)) as s:
        s.ehlo("sender.example.net")
        s.mail("someone@remote.test")
        s.rcpt("alice@example.test")
        code, text = s.data(message(body="line\r\n.leading dot\r\n"))
    assert code == 250 and text.startswith(b"2.0.0 OK queued as ")
    entry = queued(relay, text.decode())
    assert entry["sender"] == "someone@remote.test"
    assert entry["recipients"] == ["alice@example.test"]
    body = body_of(relay, str(entry["id"]))
    first = body.split(b"\n", 3)
    assert first[0].startswith(b"Received: from sender.example.net ([127.0.0.9])")
    assert f"with ESMTP id {entry['id']}".encode() in first[1]
    assert b"for <alice@example.test>;" in first[2]
    assert body.endswith(b"line\r\n.leading dot\r\n")  # smtplib stuffed it, we unstuffed it


def test_unknown_local_user_is_550_5_1_1(relay: RelayProcess) -> None:
    with RawSmtp(relay.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@remote.test>").code == 250
        r = c.cmd("RCPT TO:<nobody@example.test>")
        assert (r.code, r.status) == (550, "5.1.1")


def test_subaddress_reaches_the_account(relay: RelayProcess) -> None:
    with RawSmtp(relay.port, source=UNTRUSTED) as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@remote.test>")
        assert c.cmd("RCPT TO:<Alice+news@EXAMPLE.test>").code == 250


def test_untrusted_client_cannot_relay(relay: RelayProcess) -> None:
    with RawSmtp(relay.port, source=UNTRUSTED) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@remote.test>").code == 250
        r = c.cmd("RCPT TO:<victim@elsewhere.test>")
        assert (r.code, r.status) == (554, "5.7.1")
        r = c.cmd("RCPT TO:<victim@[192.0.2.1]>")
        assert (r.code, r.status) == (554, "5.7.1")
        assert c.cmd("RCPT TO:<bob@example.test>").code == 250


def test_trusted_network_may_relay(relay: RelayProcess) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        refused = s.sendmail("me@example.test", ["far@elsewhere.test"], message())
    assert refused == {}
    assert any(e["recipients"] == ["far@elsewhere.test"] for e in relay.queue())


@pytest.mark.parametrize("script, expected", [
    (["MAIL FROM:<a@b.test>"], (503, "5.5.1")),  # before EHLO
    (["EHLO x.test", "RCPT TO:<alice@example.test>"], (503, "5.5.1")),
    (["EHLO x.test", "DATA"], (503, "5.5.1")),
    (["EHLO x.test", "MAIL FROM:<a@b.test>", "DATA"], (503, "5.5.1")),
    (["EHLO x.test", "MAIL FROM:<a@b.test>", "MAIL FROM:<a@b.test>"], (503, "5.5.1")),
    (["EHLO x.test", "MAIL FROM:a@b.test"], (501, "5.5.4")),
    (["EHLO x.test", "MAIL FROM:<not an address>"], (501, "5.1.7")),
    (["EHLO x.test", "MAIL FROM:<a@b.test> FOO=BAR"], (555, "5.5.4")),
    (["EHLO x.test", "MAIL FROM:<a@b.test> SIZE=999999999"], (552, "5.3.4")),
    (["EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<@>"], (501, "5.1.3")),
    (["EHLO"], (501, "5.5.4")),
    (["FROB"], (500, "5.5.2")),
    (["VRFY alice"], (252, "2.5.0")),
    (["HELP"], (214, "2.0.0")),
    (["NOOP"], (250, "2.0.0")),
    (["RSET"], (250, "2.0.0")),
], ids=lambda v: repr(v) if isinstance(v, tuple) else " / ".join(v))
def test_command_replies(relay: RelayProcess, script: list[str], expected: tuple[int, str]) -> None:
    with RawSmtp(relay.port) as c:
        for line in script[:-1]:
            assert c.cmd(line).code < 400
        r = c.cmd(script[-1])
        assert (r.code, r.status) == expected, r
        assert c.cmd("NOOP").code == 250  # the session continues


def test_quit_closes_with_221(relay: RelayProcess) -> None:
    with RawSmtp(relay.port) as c:
        r = c.cmd("QUIT")
        assert (r.code, r.status) == (221, "2.0.0")
        assert c.closed()


def test_command_line_over_512_octets_is_500_5_5_2_and_session_continues(relay: RelayProcess) -> None:
    with RawSmtp(relay.port) as c:
        c.ehlo()
        r = c.cmd("NOOP " + "x" * 600)
        assert (r.code, r.status) == (500, "5.5.2")
        r = c.cmd("MAIL FROM:<" + "a" * 5000 + "@b.test>")
        assert (r.code, r.status) == (500, "5.5.2")
        assert c.cmd("MAIL FROM:<a@remote.test>").code == 250


def test_message_over_max_size_is_552_5_3_4(relay: RelayProcess) -> None:
    with RawSmtp(relay.port) as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 250 + b".\r\n")
        r = c.reply()
        assert (r.code, r.status) == (552, "5.3.4")
        assert c.cmd("NOOP").code == 250


def test_too_many_recipients_is_452_4_5_3(relay: RelayProcess) -> None:
    with RawSmtp(relay.port) as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@remote.test>")
        c.send(b"".join(b"RCPT TO:<r%d@elsewhere.test>\r\n" % i for i in range(101)))
        replies = [c.reply() for _ in range(101)]
        assert all(r.code == 250 for r in replies[:100])
        assert (replies[100].code, replies[100].status) == (452, "4.5.3")


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"])
def test_bare_line_endings_never_end_data_and_are_refused(relay: RelayProcess,
                                                          fake_end: bytes) -> None:
    """SMTP smuggling (CVE-2023-51764): a fake end of data must not start a new command."""
    with RawSmtp(relay.port) as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.cmd("DATA").code == 354
        smuggled = (b"Subject: outer\r\n\r\nbody" + fake_end
                    + b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
                    b"DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")
        c.send(smuggled)
        r = c.reply()
        assert (r.code, r.status) == (550, "5.6.0")
        assert c.cmd("NOOP").code == 250  # exactly one reply: nothing was smuggled
    assert not any(e["sender"] == "admin@example.test" for e in relay.queue())


def test_pipelined_transaction_replies_in_order(relay: RelayProcess) -> None:
    with RawSmtp(relay.port) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
               b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        codes = [c.reply().code for _ in range(5)]
        assert codes == [250, 250, 550, 250, 354]
        c.send(b"Subject: p\r\n\r\npipelined\r\n.\r\nMAIL FROM:<b@remote.test>\r\n"
               b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
        r = c.reply()
        assert r.code == 250 and "queued as" in r.text
        assert [c.reply().code for _ in range(3)] == [250, 250, 354]
        c.send(b"second\r\n.\r\nQUIT\r\n")
        assert c.reply().code == 250
        assert c.reply().code == 221
    entry = queued(relay, r.text)
    assert entry["recipients"] == ["alice@example.test", "bob@example.test"]


def test_bdat_chunks_are_queued(relay: RelayProcess) -> None:
    with RawSmtp(relay.port) as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        part1 = b"Subject: chunked\r\n\r\n.first\r\n"
        part2 = b"second\n.\nnot an end\r\n"
        c.send(b"BDAT %d\r\n" % len(part1) + part1)
        assert c.reply().code == 250
        r = c.cmd(b"BDAT %d LAST\r\n" % len(part2) + part2)
        assert r.code == 250 and "queued as" in r.text
    entry = queued(relay, r.text)
    assert body_of(relay, str(entry["id"])).endswith(part1 + part2)  # no unstuffing in BDAT


def test_bdat_without_transaction_is_503_and_octets_skipped(relay: RelayProcess) -> None:
    with RawSmtp(relay.port) as c:
        c.ehlo()
        c.send(b"BDAT 12 LAST\r\nNOOP\r\nNOOP\r\n")
        r = c.reply()
        assert (r.code, r.status) == (503, "5.5.1")
        assert c.cmd("NOOP").code == 250


def test_starttls_then_mail(relay: RelayProcess) -> None:
    with RawSmtp(relay.port) as c:
        c.ehlo()
        c.starttls()
        r = c.cmd("MAIL FROM:<a@remote.test>")
        assert (r.code, r.status) == (503, "5.5.1")  # RFC 3207 §4.2: greet again
        r = c.ehlo()
        assert "STARTTLS" not in r.text
        assert c.cmd("MAIL FROM:<a@remote.test>").code == 250
        assert c.cmd("RCPT TO:<alice@example.test>").code == 250
        assert c.cmd("DATA").code == 354
        r = c.cmd(b"Subject: tls\r\n\r\nsecret\r\n.")
        assert r.code == 250
    body = body_of(relay, r.text.rsplit(" ", 1)[-1])
    assert b"with ESMTPS id" in body.split(b"\r\n", 2)[1]


def test_smtplib_starttls(relay: RelayProcess) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.starttls(context=ctx)
        assert s.sendmail("a@remote.test", ["bob@example.test"], message()) == {}


def test_smtputf8_addresses(relay: RelayProcess) -> None:
    with RawSmtp(relay.port) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<josé@remote.test>")
        assert (r.code, r.status) == (553, "5.6.7")
        assert c.cmd("MAIL FROM:<josé@remote.test> SMTPUTF8").code == 250
        assert c.cmd("RCPT TO:<bob@example.test>").code == 250
        assert c.cmd("DATA").code == 354
        r = c.cmd("Subject: ñ\r\n\r\nüñí\r\n.".encode())
        assert r.code == 250
    body = body_of(relay, r.text.rsplit(" ", 1)[-1])
    assert b"with UTF8SMTP id" in body


def test_mail_loop_is_554_5_4_6(relay: RelayProcess) -> None:
    def send(hops: int) -> tuple[int, str]:
        headers = b"".join(b"Received: from hop%d.test by x.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                           % i for i in range(hops))
        with RawSmtp(relay.port) as c:
            c.ehlo()
            c.cmd("MAIL FROM:<a@remote.test>")
            c.cmd("RCPT TO:<alice@example.test>")
            c.cmd("DATA")
            r = c.cmd(headers + b"Subject: loop\r\n\r\nx\r\n.")
            return r.code, r.status
    assert send(50) == (554, "5.4.6")
    assert send(49)[0] == 250  # with ours that makes 50, Postfix's hopcount_limit


def test_metrics_endpoint_exposes_the_names(relay: RelayProcess) -> None:
    import urllib.request

    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("a@remote.test", ["bob@example.test"], message())
    text = urllib.request.urlopen(f"http://127.0.0.1:{relay.metrics_port}/metrics",
                                  timeout=10).read().decode()
    for name in ("relay_messages_received_total", "relay_smtp_sessions_active",
                 'relay_queue_messages{state="active"}', 'relay_smtp_replies_total{code="250"}',
                 "relay_queue_commit_seconds_bucket", 'parser="cython"'):
        assert name in text, name
    received = [line for line in text.splitlines()
                if line.startswith("relay_messages_received_total ")]
    assert float(received[0].split()[1]) >= 1
