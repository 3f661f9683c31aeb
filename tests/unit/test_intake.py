"""Intake with a real GroupCommitter and QueueStore: Received header, loop check, queue id."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.intake import MAX_RECEIVED, Intake, SessionInfo
from relay.queue.committer import GroupCommitter
from relay.queue.model import Envelope, QueueIdFactory, Recipient
from relay.queue.store import QueueStore
from relay.smtp import replies as R
from relay.smtp.events import MessageReceived
from relay.smtp.grammar import Mailbox

HOST = "mx.example.test"
ALICE = Mailbox("alice", "example.org")
BOB = Mailbox("bob", "example.test")
CAROL = Mailbox("carol", "example.net")
BODY = b"From: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
INFO = SessionInfo(session_id="s1", peer="192.0.2.7", helo="client.example", esmtp=True,
                   tls=False)
MiB = 1 << 20


def message(body: bytes = BODY, recipients: tuple[Mailbox, ...] = (BOB,),
            sender: Mailbox | None = ALICE, smtputf8: bool = False) -> MessageReceived:
    return MessageReceived(sender, recipients, body, smtputf8, chunked=False)


@dataclass
class Outcome:
    reply: R.Reply
    stored: list[tuple[Envelope, bytes]]


class ScriptedIds(QueueIdFactory):
    """Queue ids from a list, to force a collision."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(worker=0)
        self._script = iter(ids)

    def next(self) -> str:
        return next(self._script)


Submit = Callable[..., Outcome]


@pytest.fixture
def intake_submit(tmp_path: Path, run_async: Callable[..., Any]) -> Submit:
    """submit(msg, info=INFO, ids=None, max_map_size=..., existing=()) -> Outcome."""

    def submit(msg: MessageReceived, info: SessionInfo = INFO,
               ids: QueueIdFactory | None = None, max_map_size: int = 64 * MiB,
               existing: tuple[tuple[Envelope, bytes], ...] = ()) -> Outcome:
        store = QueueStore(tmp_path / "queue", map_size=MiB, max_map_size=max_map_size)
        if existing:
            store.enqueue(existing)

        async def main() -> R.Reply:
            committer = GroupCommitter(store, asyncio.get_running_loop())
            try:
                intake = Intake(HOST, committer, ids or QueueIdFactory(worker=0))
                return await intake.submit(msg, info)
            finally:
                committer.stop()

        try:
            reply = run_async(main)
            stored = []
            for env in store.envelopes():
                got = store.get(env.id)
                assert got is not None
                stored.append((env, got[1]))
        finally:
            store.close()
        return Outcome(reply, stored)

    return submit


def received_header(body: bytes) -> bytes:
    """Our trace field: the first field of the stored message, folded lines included."""
    m = re.match(rb"Received:.*?\r\n(?:[ \t].*?\r\n)*", body, re.S)
    assert m, body[:200]
    return m.group(0)


# ---- the reply and the queue record ----------------------------------------------------------


def test_accepted_message_is_250_naming_its_queue_id(intake_submit: Submit) -> None:
    out = intake_submit(message())
    (env, _), = out.stored
    assert out.reply == R.queued(env.id)
    assert out.reply.encode() == b"250 2.0.0 OK queued as " + env.id.encode() + b"\r\n"


def test_queued_body_is_our_received_header_then_the_message(intake_submit: Submit) -> None:
    out = intake_submit(message())
    (env, body), = out.stored
    header = received_header(body)
    assert body == header + BODY
    assert env.size == len(body)


def test_envelope_records_sender_recipients_and_client(intake_submit: Submit) -> None:
    out = intake_submit(message(recipients=(BOB, CAROL), smtputf8=True))
    (env, _), = out.stored
    assert env.sender == "alice@example.org"
    assert [r.address for r in env.recipients] == ["bob@example.test", "carol@example.net"]
    assert env.smtputf8 is True
    assert env.client == "192.0.2.7"


def test_null_sender_is_recorded_as_empty(intake_submit: Submit) -> None:
    out = intake_submit(message(sender=None))
    assert out.stored[0][0].sender == ""


def test_queue_full_is_452_4_3_1_and_nothing_is_queued(intake_submit: Submit) -> None:
    out = intake_submit(message(body=b"x" * (3 * MiB)), max_map_size=MiB)
    assert out.reply == R.QUEUE_FULL
    assert out.reply.encode() == b"452 4.3.1 Insufficient system storage, try again later\r\n"
    assert out.stored == []


def test_queue_id_collision_draws_a_new_id(intake_submit: Submit) -> None:
    # queue/model.py: "the store refuses to overwrite an existing id, so a collision ... is
    # caught and a new id drawn" — the message is queued under the next id, the old one kept.
    taken = Envelope(id="00000000000000000001", sender="", recipients=[Recipient("x@y.test")],
                     arrival=0.0, size=3)
    out = intake_submit(message(), ids=ScriptedIds(["00000000000000000001",
                                                    "00000000000000000002"]),
                        existing=((taken, b"old"),))
    assert out.reply == R.queued("00000000000000000002")
    assert dict((e.id, b) for e, b in out.stored)["00000000000000000001"] == b"old"


# ---- Received header (RFC 5321 §4.4) ----------------------------------------------------

_STAMP = re.compile(
    rb"Received: from (?P<from>\S+) \((?P<tcp>[^)]*)\)\r\n"
    rb"\tby (?P<by>\S+) \(relay\) with (?P<with>[A-Z0-9]+) id (?P<id>[0-9A-F]+)"
    rb"(?:\r\n\tfor <(?P<for>[^>]+)>)?; (?P<date>[^\r\n]+)\r\n$"
)


def stamp(out: Outcome) -> dict[str, bytes]:
    """The named parts of our Received field; "for" is b"" when the clause is absent."""
    (env, body), = out.stored
    m = _STAMP.match(received_header(body))
    assert m, received_header(body)
    fields = {k: v or b"" for k, v in m.groupdict().items()}
    assert fields["id"] == env.id.encode()
    return fields


def test_received_names_helo_peer_host_protocol_id_recipient_and_date(
        intake_submit: Submit) -> None:
    out = intake_submit(message())
    (env, body), = out.stored
    date = email.utils.format_datetime(
        email.utils.parsedate_to_datetime(stamp(out)["date"].decode()))
    assert received_header(body) == (
        b"Received: from client.example ([192.0.2.7])\r\n"
        b"\tby mx.example.test (relay) with ESMTP id " + env.id.encode() + b"\r\n"
        b"\tfor <bob@example.test>; " + date.encode() + b"\r\n")


def test_received_date_is_rfc5322_and_now(intake_submit: Submit) -> None:
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    out = intake_submit(message())
    after = datetime.datetime.now(datetime.timezone.utc)
    when = email.utils.parsedate_to_datetime(stamp(out)["date"].decode())
    assert when.tzinfo is not None
    assert before - datetime.timedelta(seconds=1) <= when <= after


def test_received_for_clause_only_with_one_recipient(intake_submit: Submit) -> None:
    # RFC 5321 §7.2: naming every recipient would disclose Bcc lists.
    fields = stamp(intake_submit(message(recipients=(BOB, CAROL))))
    assert fields["for"] == b""


def test_received_for_clause_names_the_single_recipient(intake_submit: Submit) -> None:
    assert stamp(intake_submit(message()))["for"] == b"bob@example.test"


@pytest.mark.parametrize(
    ("esmtp", "tls", "smtputf8", "protocol"),
    [
        (True, False, False, b"ESMTP"),
        (True, True, False, b"ESMTPS"),
        (False, False, False, b"SMTP"),
        (True, False, True, b"UTF8SMTP"),
        (True, True, True, b"UTF8SMTPS"),
    ],
)
def test_received_with_protocol_follows_rfc3848_and_rfc6531(
        intake_submit: Submit, esmtp: bool, tls: bool, smtputf8: bool, protocol: bytes
) -> None:
    info = SessionInfo("s1", "192.0.2.7", "client.example", esmtp=esmtp, tls=tls)
    assert stamp(intake_submit(message(smtputf8=smtputf8), info))["with"] == protocol


def test_received_with_esmtpa_when_authenticated(intake_submit: Submit) -> None:
    info = SessionInfo("s1", "192.0.2.7", "client.example", esmtp=True, tls=True,
                       authenticated=True)
    assert stamp(intake_submit(message(), info))["with"] == b"ESMTPSA"


def test_received_ipv4_peer_is_an_address_literal(intake_submit: Submit) -> None:
    assert stamp(intake_submit(message()))["tcp"] == b"[192.0.2.7]"


def test_received_ipv6_peer_is_an_ipv6_address_literal(intake_submit: Submit) -> None:
    # RFC 5321 §4.4 TCP-info is an address-literal; §4.1.3: "[IPv6:" IPv6-addr "]".
    info = SessionInfo("s1", "2001:db8::25", "client.example", esmtp=True, tls=False)
    assert stamp(intake_submit(message(), info))["tcp"] == b"[IPv6:2001:db8::25]"


def test_received_from_without_helo_is_unknown(intake_submit: Submit) -> None:
    info = SessionInfo("s1", "192.0.2.7", "", esmtp=False, tls=False)
    assert stamp(intake_submit(message(), info))["from"] == b"unknown"


def test_received_helo_cannot_inject_header_lines(intake_submit: Submit) -> None:
    info = SessionInfo("s1", "192.0.2.7", "evil\r\nX-Injected: yes", esmtp=True, tls=False)
    out = intake_submit(message(), info)
    header = received_header(out.stored[0][1])
    assert b"\r\nX-Injected" not in header
    assert header.count(b"\r\n") == 3


# ---- submission completion (RFC 6409 §8) ------------------------------------------------

AUTHENTICATED = SessionInfo(session_id="s1", peer="192.0.2.7", helo="client.example",
                            esmtp=True, tls=True, authenticated=True)


def test_submission_without_date_and_message_id_gets_both_after_received(
        intake_submit: Submit) -> None:
    out = intake_submit(message(), AUTHENTICATED)
    (env, body), = out.stored
    header = received_header(body)
    rest = body[len(header):]
    date, message_id, original = rest.split(b"\r\n", 2)
    assert date.startswith(b"Date: ")
    assert email.utils.parsedate_to_datetime(date[6:].decode()).tzinfo is not None
    assert message_id == b"Message-ID: <" + env.id.encode() + b"@mx.example.test>"
    assert original == BODY
    assert env.size == len(body)


def test_submission_with_date_and_message_id_is_left_alone(intake_submit: Submit) -> None:
    original = (b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@client.example>\r\n"
                + BODY)
    (_, body), = intake_submit(message(body=original), AUTHENTICATED).stored
    assert body == received_header(body) + original


def test_submission_with_only_a_date_gets_only_a_message_id(intake_submit: Submit) -> None:
    original = b"date: Mon, 1 Jan 2024 00:00:00 +0000\r\n" + BODY
    (env, body), = intake_submit(message(body=original), AUTHENTICATED).stored
    assert body == (received_header(body) + b"Message-ID: <" + env.id.encode()
                    + b"@mx.example.test>\r\n" + original)


def test_date_in_the_body_does_not_count(intake_submit: Submit) -> None:
    original = b"Subject: x\r\n\r\nDate: in the body\r\nMessage-ID: <also@body>\r\n"
    (_, body), = intake_submit(message(body=original), AUTHENTICATED).stored
    rest = body[len(received_header(body)):]
    assert rest.startswith(b"Date: ") and b"\r\nMessage-ID: <" in rest
    assert rest.endswith(original)


def test_relayed_mail_is_not_completed(intake_submit: Submit) -> None:
    (_, body), = intake_submit(message()).stored
    assert body == received_header(body) + BODY


# ---- mail loops (RFC 5321 §6.3) ---------------------------------------------------------


def with_received(n: int) -> bytes:
    trace = b"".join(b"Received: from hop%d.example by hop%d.example; Mon, 1 Jan 2024 00:00:00 "
                     b"+0000\r\n" % (i, i + 1) for i in range(n))
    return trace + BODY


def test_message_with_49_received_headers_is_accepted(intake_submit: Submit) -> None:
    assert MAX_RECEIVED == 50
    out = intake_submit(message(body=with_received(49)))
    assert out.reply.code == 250
    assert out.stored[0][1].count(b"Received:") == 50


def test_message_with_50_received_headers_is_554_5_4_6(intake_submit: Submit) -> None:
    out = intake_submit(message(body=with_received(50)))
    assert out.reply == R.MAIL_LOOP
    assert out.reply.encode() == b"554 5.4.6 Too many Received headers: mail loop\r\n"
    assert out.stored == []


def test_received_in_the_body_is_not_counted(intake_submit: Submit) -> None:
    body = b"Subject: x\r\n\r\n" + b"Received: quoted\r\n" * 60
    assert intake_submit(message(body=body)).reply.code == 250
