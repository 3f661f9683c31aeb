"""ImapSession (the asyncio glue) in-process on stock asyncio, over real loopback sockets:
timers (RFC 3501 §5.4 autologout), IDLE polling, the connection limit, large FETCH output
streamed in order, and a client vanishing mid-command. (The relay subprocess in the other
interop tests runs the same glue on uvloop.)"""

from __future__ import annotations

import asyncio
import imaplib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.auth.accounts import AccountStore
from relay.auth.throttle import ConnectionLimiter
from relay.mda.imap.session import ImapListener, ImapSession
from relay.auth.login import Authenticator
from relay.mda.maildir import MaildirStore
from relay.mda.store import MailStore

USER, PASSWORD = "una@example.test", "una-pw"


class Server:
    """An asyncio loop in a thread serving ImapSession on 127.0.0.1."""

    def __init__(self, tmp: Path, **settings: object) -> None:
        self.accounts = AccountStore(tmp / "accounts")
        self.accounts.add(USER, PASSWORD)
        self.mail = MailStore(tmp / "mail")
        self.maildir = MaildirStore(tmp / "mail")
        self.settings = settings
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()
        assert self._ready.wait(10)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        listener = ImapListener(store=self.mail, auth=Authenticator(self.accounts),
                                limiter=ConnectionLimiter(10, self.settings.pop("per_ip", 5)),  # type: ignore[arg-type]
                                tls_context=None, implicit_tls=False, allow_plaintext=False,
                                **self.settings)  # type: ignore[arg-type]
        server = await asyncio.get_running_loop().create_server(
            lambda: ImapSession(listener), "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()

    def close(self) -> None:
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        self.mail.close()
        self.accounts.close()

    def client(self) -> imaplib.IMAP4:
        box = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        box.login(USER, PASSWORD)
        return box


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A Server with ImapListener settings from the test's `settings` parameter."""
    s = Server(tmp_path, **getattr(request, "param", {}))
    yield s
    s.close()


def settings(**values: object) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("server", [values], indirect=True, ids=[""])


def raw(server: Server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert s.recv(4096).startswith(b"* OK [CAPABILITY ")
    return s


@settings(login_timeout=0.3)
def test_autologout_before_login(server: Server) -> None:
    s = raw(server)
    s.settimeout(5)
    assert s.recv(4096) == b"* BYE Autologout; idle for too long\r\n"
    assert s.recv(4096) == b""


@settings(per_ip=1)
def test_connection_limit_says_bye(server: Server) -> None:
    first = raw(server)
    second = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert second.recv(4096) == b"* BYE [UNAVAILABLE] Too many connections\r\n"
    first.close()
    second.close()


@settings(poll_interval=0.1)
def test_idle_reports_deliveries_and_flag_changes(server: Server) -> None:
    server.maildir.deliver(USER, b"Subject: one\r\n\r\n1\r\n")
    box = server.client()
    box.select("INBOX")
    other = server.client()
    other.select("INBOX")
    box.send(b"t1 IDLE\r\n")
    assert box.readline() == b"+ idling\r\n"
    server.maildir.deliver(USER, b"Subject: two\r\n\r\n2\r\n")
    assert box.readline() == b"* 2 EXISTS\r\n"
    assert box.readline() == b"* 2 RECENT\r\n"  # it selected first, and claimed the new one
    other.store("1", "+FLAGS", "(\\Answered)")
    assert box.readline() == b"* 1 FETCH (UID 1 FLAGS (\\Answered \\Recent))\r\n"
    other.store("1", "+FLAGS", "(\\Deleted)")
    other.expunge()
    line = box.readline()
    if line.startswith(b"* 1 FETCH"):  # the poll may have caught the STORE on its own
        line = box.readline()
    assert line == b"* 1 EXPUNGE\r\n"
    box.send(b"DONE\r\n")
    assert box.readline() == b"t1 OK IDLE terminated\r\n"
    assert box.fetch("1", "(UID)")[1] == [b"1 (UID 2)"]
    box.logout()
    other.logout()


def test_large_fetch_is_streamed_in_order(server: Server) -> None:
    bodies = [b"Subject: %d\r\n\r\n" % i + (b"%05d " % i) * 40_000 + b"\r\n" for i in range(8)]
    for body in bodies:
        server.maildir.deliver(USER, body)
    box = server.client()
    box.select("INBOX")
    typ, data = box.fetch("1:*", "(BODY.PEEK[])")
    assert [d[1] for d in data if isinstance(d, tuple)] == bodies
    assert box.noop()[0] == "OK"
    box.logout()


def test_a_client_vanishing_mid_fetch_harms_nobody(server: Server) -> None:
    for i in range(8):
        server.maildir.deliver(USER, b"Subject: %d\r\n\r\n" % i + b"x" * 500_000 + b"\r\n")
    s = raw(server)
    s.sendall(b"a LOGIN una@example.test una-pw\r\nb SELECT INBOX\r\nc FETCH 1:* BODY[]\r\n")
    received = b""
    while b"* 1 FETCH" not in received:
        received += s.recv(65536)
    s.close()  # with most of the 4 MB response unread
    box = server.client()
    box.select("INBOX")
    assert box.search(None, "SEEN")[1] != [b""]  # the FETCH did run
    assert box.fetch("8", "(RFC822.SIZE)")[0] == "OK"
    box.logout()


@settings(poll_interval=0.05, idle_keepalive=0.2)
def test_a_quiet_idle_gets_keepalives(server: Server) -> None:
    box = server.client()
    box.select("INBOX")
    box.send(b"t1 IDLE\r\n")
    assert box.readline() == b"+ idling\r\n"
    assert box.readline() == b"* OK Still here\r\n"
    box.send(b"DONE\r\n")
    while (line := box.readline()) == b"* OK Still here\r\n":
        pass
    assert line == b"t1 OK IDLE terminated\r\n"
    box.logout()


@settings(poll_interval=0.05)
def test_every_idle_session_on_a_mailbox_hears_of_a_delivery(server: Server) -> None:
    boxes = [server.client() for _ in range(3)]
    for i, box in enumerate(boxes):
        box.select("INBOX")
        box.send(b"t%d IDLE\r\n" % i)
        assert box.readline() == b"+ idling\r\n"
    server.maildir.deliver(USER, b"Subject: one\r\n\r\n1\r\n")
    recent = []
    for i, box in enumerate(boxes):
        assert box.readline() == b"* 1 EXISTS\r\n"
        box.send(b"DONE\r\n")
        line = box.readline()
        if line == b"* 1 RECENT\r\n":
            recent.append(i)
            line = box.readline()
        assert line == b"t%d OK IDLE terminated\r\n" % i
        box.logout()
    assert len(recent) == 1  # RFC 3501 §2.3.2: one session, whichever synced first


def test_pipelined_commands_then_a_half_close_get_every_answer(server: Server) -> None:
    for i in range(3):
        server.maildir.deliver(USER, b"Subject: %d\r\n\r\n" % i + b"x" * 100_000 + b"\r\n")
    s = raw(server)
    s.sendall(b"a LOGIN una@example.test una-pw\r\nb SELECT INBOX\r\n"
              b"c FETCH 1:* BODY.PEEK[]\r\nd NOOP\r\ne LOGOUT\r\n")
    s.shutdown(socket.SHUT_WR)
    received = b""
    while chunk := s.recv(65536):
        received += chunk
    s.close()
    assert received.count(b" FETCH (BODY[] {") == 3
    for tag in (b"a", b"b", b"c", b"d", b"e"):
        assert b"\r\n" + tag + b" OK " in b"\r\n" + received
