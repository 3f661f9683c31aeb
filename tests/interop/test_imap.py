"""IMAP with Python clients (imaplib, imapclient) and raw sockets against the real relay:
mail delivered over SMTP comes back byte-identical over IMAP and POP3; the usual client
calls (select, fetch, store, search, append, copy, UID MOVE, expunge); IDLE woken by an
SMTP delivery; two sessions on one mailbox; STARTTLS and imaps; bad input cut off."""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator

import pytest
from imapclient import IMAPClient
from support.relay_server import RelayProcess, add_users, free_port


USERS = ("anna", "bert", "cleo", "dora", "emil", "fred", "gina")


def tls_client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


@pytest.fixture(scope="module")
def mda(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    imap, imaps, pop3 = free_port(), free_port(), free_port()
    relay = RelayProcess(tmp_path_factory.mktemp("imap"), delivery={"enabled": True},
                         listen={"imap": [f"127.0.0.1:{imap}"], "imaps": [f"127.0.0.1:{imaps}"],
                                 "pop3": [f"127.0.0.1:{pop3}"]})
    relay.imap_port, relay.imaps_port, relay.pop3_port = imap, imaps, pop3  # type: ignore[attr-defined]
    add_users(relay, USERS)
    with relay:
        yield relay


def deliver(relay: RelayProcess, to: str, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        assert s.sendmail("sender@remote.test", [to], body) == {}


def connect(relay: RelayProcess, user: str) -> imaplib.IMAP4:
    box = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)  # type: ignore[attr-defined]
    box.login(f"{user}@example.test", f"{user}-pw")
    return box


def wait_exists(relay: RelayProcess, user: str, n: int) -> None:
    deadline = time.monotonic() + 20
    box = connect(relay, user)
    try:
        while time.monotonic() < deadline:
            typ, data = box.status("INBOX", "(MESSAGES)")
            if int(re.search(rb"MESSAGES (\d+)", data[0]).group(1)) >= n:  # type: ignore[union-attr]
                return
            time.sleep(0.1)
    finally:
        box.logout()
    raise AssertionError(f"{user} never had {n} messages")


def stored(relay: RelayProcess, user: str) -> list[bytes]:
    root = relay.data_dir / "mail" / "example.test" / user
    return [p.read_bytes() for d in ("new", "cur") for p in sorted((root / d).iterdir())]


def test_delivered_mail_is_byte_identical_over_imap_and_pop3(mda: RelayProcess) -> None:
    body = (b"From: x@remote.test\r\nSubject: identity\r\n\r\nline one\r\n.dot line\r\n"
            b"caf\xc3\xa9\r\n\r\nlast\r\n")
    deliver(mda, "anna@example.test", body)
    wait_exists(mda, "anna", 1)
    box = connect(mda, "anna")
    box.select("INBOX")
    typ, data = box.uid("FETCH", "1", "(BODY.PEEK[])")
    got = data[0][1]  # type: ignore[index]
    assert got == stored(mda, "anna")[0] and got.endswith(body)
    assert box.uid("FETCH", "1", "(RFC822.SIZE)")[1] == [b"1 (UID 1 RFC822.SIZE %d)" % len(got)]
    box.logout()
    pop = poplib.POP3("127.0.0.1", mda.pop3_port)  # type: ignore[attr-defined]
    pop.user("anna@example.test")
    pop.pass_("anna-pw")
    assert b"\r\n".join(pop.retr(1)[1]) + b"\r\n" == got
    pop.quit()


def test_imaplib_session(mda: RelayProcess) -> None:
    for i in range(3):
        deliver(mda, "bert@example.test", b"Subject: note %d\r\n\r\nbody %d\r\n" % (i, i))
    wait_exists(mda, "bert", 3)
    box = connect(mda, "bert")
    typ, data = box.list()
    assert b'(\\HasNoChildren \\Sent) "/" "Sent"' in data
    assert box.select("INBOX") == ("OK", [b"3"])
    typ, data = box.fetch("1:3", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert [d[1] for d in data if isinstance(d, tuple)] == [
        b"Subject: note %d\r\n\r\n" % i for i in range(3)]
    # The first session to select new mail holds it \Recent (RFC 3501 §2.3.2).
    assert box.store("2", "+FLAGS", "(\\Flagged)")[1] == [b"2 (FLAGS (\\Flagged \\Recent))"]
    assert box.search(None, "FLAGGED") == ("OK", [b"2"])
    assert box.search(None, "BODY", '"body 1"') == ("OK", [b"2"])
    typ, data = box.append("Drafts", "(\\Draft)", None, b"Subject: draft\r\n\r\nwip\r\n")
    assert typ == "OK" and re.match(rb"\[APPENDUID \d+ 1\]", data[0])  # type: ignore[arg-type]
    typ, data = box.copy("1", "Trash")
    assert typ == "OK" and re.match(rb"\[COPYUID \d+ 1 1\]", data[0])  # type: ignore[arg-type]
    typ, data = box.uid("MOVE", "3", "Junk")
    assert typ == "OK" and box.untagged_responses.pop("EXPUNGE") == [b"3"]
    box.store("1", "+FLAGS", "(\\Deleted)")
    assert box.expunge() == ("OK", [b"1"])
    typ, data = box.uid("SEARCH", None, "ALL")  # type: ignore[arg-type]
    assert data == [b"2"]
    assert box.status("Junk", "(MESSAGES)")[1] == [b'"Junk" (MESSAGES 1)']
    box.create("Projects/2024")
    box.rename("Projects", "Archive")
    assert b'(\\HasNoChildren) "/" "Archive/2024"' in box.list('""', "Archive/*")[1]
    box.close()
    box.logout()


def test_idle_is_woken_by_an_smtp_delivery(mda: RelayProcess) -> None:
    box = connect(mda, "cleo")
    box.select("INBOX")
    tag = box._new_tag()  # type: ignore[attr-defined]
    box.send(tag + b" IDLE\r\n")
    assert box.readline().startswith(b"+ ")
    started = time.monotonic()
    deliver(mda, "cleo@example.test", b"Subject: wake up\r\n\r\nnow\r\n")
    box.sock.settimeout(10)
    assert box.readline() == b"* 1 EXISTS\r\n"
    assert box.readline() == b"* 1 RECENT\r\n"  # RFC 3501 §7.3.2, with EXISTS
    assert time.monotonic() - started < 5
    box.send(b"DONE\r\n")
    assert box.readline() == tag + b" OK IDLE terminated\r\n"
    box.logout()


def test_imapclient_idle_and_high_level_calls(mda: RelayProcess) -> None:
    client = IMAPClient("127.0.0.1", port=mda.imaps_port, ssl=True,  # type: ignore[attr-defined]
                        ssl_context=tls_client(), timeout=10)
    client.login("dora@example.test", "dora-pw")
    assert client.find_special_folder(b"\\Trash") == "Trash"
    assert client.namespace().personal == (("", "/"),)
    assert client.id_()[0][:2] == (b"name", b"relay")
    client.select_folder("INBOX")
    client.idle()
    deliver(mda, "dora@example.test", b"Subject: idle\r\n\r\nhello\r\n")
    responses = client.idle_check(timeout=10)
    client.idle_done()
    assert (1, b"EXISTS") in responses
    messages = client.search(["UNSEEN"])
    assert messages == [1]
    fetched = client.fetch(messages, ["ENVELOPE", "FLAGS", "BODY[TEXT]"])
    assert fetched[1][b"ENVELOPE"].subject == b"idle"
    assert fetched[1][b"BODY[TEXT]"] == b"hello\r\n"
    assert b"\\Seen" in fetched[1][b"FLAGS"]
    client.add_flags(messages, ["$Important"])
    assert client.get_flags(messages)[1] == (b"\\Seen", b"\\Recent", b"$Important")
    client.move(messages, "Trash")
    assert client.folder_status("Trash", ["MESSAGES"])[b"MESSAGES"] == 1
    client.logout()


def test_two_sessions_see_each_others_changes(mda: RelayProcess) -> None:
    for i in range(3):
        deliver(mda, "emil@example.test", b"Subject: %d\r\n\r\nx\r\n" % i)
    wait_exists(mda, "emil", 3)
    first, second = connect(mda, "emil"), connect(mda, "emil")
    first.select("INBOX")
    second.select("INBOX")
    second.store("1", "+FLAGS", "(\\Flagged)")
    second.store("2", "+FLAGS", "(\\Deleted)")
    second.expunge()
    first.noop()
    assert first.untagged_responses.pop("FETCH", []) == [  # first selected: \Recent here
        b"1 (UID 1 FLAGS (\\Flagged \\Recent))"]
    assert first.untagged_responses.pop("EXPUNGE", []) == [b"2"]
    typ, data = first.fetch("1:*", "(UID)")
    assert data == [b"1 (UID 1)", b"2 (UID 3)"]
    first.logout()
    second.logout()


def test_starttls_then_login(mda: RelayProcess) -> None:
    box = imaplib.IMAP4("127.0.0.1", mda.imap_port)  # type: ignore[attr-defined]
    assert "STARTTLS" in box.capabilities
    box.starttls(ssl_context=tls_client())
    assert "STARTTLS" not in box.capabilities
    box.login("fred@example.test", "fred-pw")
    assert box.select("Sent")[0] == "OK"
    box.logout()


def test_bad_password_is_refused_and_counted(mda: RelayProcess) -> None:
    box = imaplib.IMAP4("127.0.0.1", mda.imap_port)  # type: ignore[attr-defined]
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        box.login("gina@example.test", "wrong")
    box.logout()
    time.sleep(0.6)  # the worker pushes counters every half second
    text = urllib.request.urlopen(f"http://127.0.0.1:{mda.metrics_port}/metrics").read().decode()
    assert 'relay_auth_failures_total{protocol="imap"}' in text
    assert 'relay_imap_commands_total{command="LOGIN"}' in text
    assert "relay_imap_sessions_active" in text


def raw(relay: RelayProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", relay.imap_port), timeout=10)  # type: ignore[attr-defined]
    assert s.recv(4096).startswith(b"* OK [CAPABILITY ")
    return s


def read_until_closed(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def test_garbage_is_cut_off_and_the_server_carries_on(mda: RelayProcess) -> None:
    s = raw(mda)
    try:
        s.sendall(b"x" * (10 * 1024 * 1024))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert b"* BYE line too long\r\n" in read_until_closed(s)
    s.close()
    s = raw(mda)
    s.sendall(b"a SELECT\r\nb LOGIN gina@example.test gina-pw\r\n")
    time.sleep(0.5)
    reply = s.recv(65536)
    assert reply.startswith(b"a BAD ") and b"b OK " in reply
    s.sendall(b"c APPEND INBOX {99999999999}\r\n")
    assert s.recv(4096) == b"c NO [TOOBIG] literal too big\r\n"
    s.sendall(b"d APPEND INBOX {99999999+}\r\n" + b"y" * 65536)
    assert read_until_closed(s) == b"d NO [TOOBIG] literal too big\r\n* BYE Too much data\r\n"
    s.close()
    box = connect(mda, "gina")
    assert box.select("INBOX") == ("OK", [b"0"])
    box.logout()
