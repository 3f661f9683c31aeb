"""\\Recent over real sockets (RFC 3501 §2.3.2, §6.3.1-2, §6.3.10, §6.4.4, §7.3.2): mail
delivered by SMTP to the relay subprocess (two workers, so two sessions may well be in two
processes sharing the index), read with imaplib. The first session to SELECT holds new
mail as \\Recent and no later one does; EXAMINE and STATUS count without claiming; mail
arriving during IDLE is recent for the session that sees it first."""

from __future__ import annotations

import imaplib
import re
import smtplib
import time
from collections.abc import Iterator

import pytest
from support.relay_server import RelayProcess, add_users, free_port


USERS = ("ann", "ben", "cat", "dan", "eve")


@pytest.fixture(scope="module")
def mda(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    imap = free_port()
    relay = RelayProcess(tmp_path_factory.mktemp("recent"), delivery={"enabled": True},
                         listen={"imap": [f"127.0.0.1:{imap}"]})
    relay.imap_port = imap  # type: ignore[attr-defined]
    add_users(relay, USERS)
    with relay:
        yield relay


def deliver(relay: RelayProcess, user: str, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        for i in range(count):
            body = b"Subject: note %d\r\n\r\nbody %d\r\n" % (i, i)
            assert s.sendmail("sender@remote.test", [f"{user}@example.test"], body) == {}


def connect(relay: RelayProcess, user: str) -> imaplib.IMAP4:
    box = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)  # type: ignore[attr-defined]
    box.login(f"{user}@example.test", f"{user}-pw")
    return box


def status(box: imaplib.IMAP4, item: str, mailbox: str = "INBOX") -> int:
    typ, data = box.status(mailbox, f"({item})")
    found = re.search(rb"%s (\d+)" % item.encode(), data[0])  # type: ignore[arg-type]
    assert typ == "OK" and found is not None, data
    return int(found.group(1))


def wait_messages(relay: RelayProcess, user: str, n: int) -> None:
    """Until local delivery has put `n` messages in INBOX (STATUS claims nothing)."""
    box = connect(relay, user)
    try:
        deadline = time.monotonic() + 20
        while status(box, "MESSAGES") < n:
            assert time.monotonic() < deadline, f"{user} never had {n} messages"
            time.sleep(0.1)
    finally:
        box.logout()


def select(box: imaplib.IMAP4, readonly: bool = False) -> int:
    """SELECT (or EXAMINE) INBOX; the "* n RECENT" it answered (taken, with EXISTS, from
    imaplib's untagged responses, so later ones stand alone)."""
    assert box.select("INBOX", readonly=readonly)[0] == "OK"
    box.response("EXISTS")
    typ, data = box.response("RECENT")
    assert data != [None], "no RECENT response"
    return int(data[-1])  # type: ignore[arg-type]


def flags(box: imaplib.IMAP4, seqs: str) -> list[bytes]:
    typ, data = box.fetch(seqs, "(FLAGS)")
    assert typ == "OK"
    found = [re.search(rb"FLAGS \(([^)]*)\)", d) for d in data]  # type: ignore[arg-type]
    assert all(found), data
    return [m.group(1) for m in found]  # type: ignore[union-attr]


def search(box: imaplib.IMAP4, *keys: str) -> bytes:
    typ, data = box.search(None, *keys)
    assert typ == "OK"
    return data[0]  # type: ignore[return-value]


def test_the_first_select_claims_delivered_mail_and_a_later_one_finds_none(
        mda: RelayProcess) -> None:
    deliver(mda, "ann", 3)
    wait_messages(mda, "ann", 3)
    first, later = connect(mda, "ann"), connect(mda, "ann")
    try:
        assert select(first) == 3
        assert flags(first, "1:3") == [b"\\Recent"] * 3
        assert select(later) == 0
        assert flags(later, "1:3") == [b""] * 3
        assert search(first, "RECENT") == b"1 2 3" and search(first, "OLD") == b""
        assert search(later, "RECENT") == b"" and search(later, "OLD") == b"1 2 3"
    finally:
        first.logout()
        later.logout()


def test_search_new_is_recent_and_unseen(mda: RelayProcess) -> None:
    deliver(mda, "ben", 3)
    wait_messages(mda, "ben", 3)
    box = connect(mda, "ben")
    try:
        assert select(box) == 3
        assert box.store("2", "+FLAGS", "(\\Seen)")[1] == [b"2 (FLAGS (\\Seen \\Recent))"]
        assert search(box, "NEW") == b"1 3"
        assert search(box, "RECENT", "SEEN") == b"2"
        assert search(box, "NOT", "NEW") == b"2"
    finally:
        box.logout()


def test_examine_and_status_count_recent_without_claiming(mda: RelayProcess) -> None:
    deliver(mda, "cat", 2)
    wait_messages(mda, "cat", 2)
    looker, claimer = connect(mda, "cat"), connect(mda, "cat")
    try:
        assert status(looker, "RECENT") == 2
        assert select(looker, readonly=True) == 2
        assert flags(looker, "1:2") == [b"\\Recent"] * 2  # recent in this session too
        assert status(claimer, "RECENT") == 2
        assert select(claimer) == 2  # neither EXAMINE nor STATUS took them
        assert status(looker, "RECENT") == 0
        assert select(looker, readonly=True) == 0
    finally:
        looker.logout()
        claimer.logout()


def test_a_delivery_during_idle_is_recent_for_the_idling_session(mda: RelayProcess) -> None:
    deliver(mda, "dan", 1)
    wait_messages(mda, "dan", 1)
    first, idler = connect(mda, "dan"), connect(mda, "dan")
    try:
        assert select(first) == 1
        assert select(idler) == 0
        tag = idler._new_tag()  # type: ignore[attr-defined]
        idler.send(tag + b" IDLE\r\n")
        assert idler.readline().startswith(b"+ ")
        deliver(mda, "dan", 1)
        idler.sock.settimeout(15)
        assert idler.readline() == b"* 2 EXISTS\r\n"
        assert idler.readline() == b"* 1 RECENT\r\n"  # RFC 3501 §7.3.2, with EXISTS
        idler.send(b"DONE\r\n")
        assert idler.readline() == tag + b" OK IDLE terminated\r\n"
        assert flags(idler, "1:2") == [b"", b"\\Recent"]
        assert first.noop()[0] == "OK"
        assert first.response("EXISTS")[1] == [b"2"]
        assert first.response("RECENT")[1] == [None]  # still its one: nothing to say
        assert flags(first, "1:2") == [b"\\Recent", b""]
    finally:
        first.logout()
        idler.logout()


def test_appended_mail_is_recent_for_the_next_session_to_select(mda: RelayProcess) -> None:
    box = connect(mda, "eve")
    try:
        assert box.append("INBOX", None, None, b"Subject: a\r\n\r\nx\r\n")[0] == "OK"
        assert status(box, "RECENT") == 1
        assert select(box) == 1
        # Appended to the mailbox this session has selected: recent here (§6.3.11).
        assert box.append("INBOX", None, None, b"Subject: b\r\n\r\ny\r\n")[0] == "OK"
        assert box.noop()[0] == "OK"
        assert box.response("EXISTS")[1] == [b"2"] and box.response("RECENT")[1] == [b"2"]
        assert search(box, "RECENT") == b"1 2"
    finally:
        box.logout()
    again = connect(mda, "eve")
    try:
        assert select(again) == 0  # gone with the session that held them
    finally:
        again.logout()
