"""SEARCH evaluation (RFC 3501 §6.4.4): every key, OR/NOT nesting, dates against a fixed
`now`, and the message octets loaded only when a key needs them."""

from __future__ import annotations

import datetime as dt

import pytest

from relay.mda.imap.arguments import Search
from relay.mda.imap.message import Message
from relay.mda.imap.parser import CommandReader
from relay.mda.imap.search import MessageInfo, compile_program, matches, needs_message
from relay.mda.imap.search_keys import SearchKey
from relay.mda.imap.sequence_set import SequenceSet
from relay.mda.model import Message as Stored

UTC = dt.UTC
NOW = dt.datetime(1994, 2, 10, 12, 0, 0, tzinfo=UTC)

RAW = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
       b"From: Fred Foobar <foobar@Blurdybloop.example>\r\n"
       b"Subject: =?ISO-8859-1?Q?Caf=E9?= afternoon\r\n"
       b"To: mooch@owatagu.example\r\n"
       b"Cc: Smith <smith@example.org>\r\n"
       b"Bcc: hidden@example.org\r\n"
       b"Message-Id: <B27397-0100000@Blurdybloop.example>\r\n"
       b"X-Mailer: Test\r\n"
       b"X-Empty:\r\n"
       b"MIME-Version: 1.0\r\n"
       b"Content-Type: TEXT/PLAIN; CHARSET=ISO-8859-1\r\n"
       b"Content-Transfer-Encoding: quoted-printable\r\n"
       b"\r\n"
       b"Hello Joe, do you think we can meet at 3:30 tomorrow? Cr=E8me br=FBl=E9e.\r\n")

INFO = MessageInfo(seq=3, uid=42, flags=frozenset({"\\Seen", "\\Flagged", "$Work"}),
                   size=len(RAW), internaldate=dt.datetime(1994, 2, 8, 5, 52, 25, tzinfo=UTC),
                   modseq=700)


class Loader:
    """Counts how often the message octets are asked for."""

    def __init__(self, raw: bytes = RAW) -> None:
        self.raw = raw
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.raw


def program(text: str) -> SearchKey:
    reader = CommandReader()
    reader.feed(b"t SEARCH " + text.encode() + b"\r\n")
    command = reader.next()
    assert command is not None and isinstance(command.args, Search), command  # type: ignore
    return command.args.key  # type: ignore[union-attr]


def search(text: str, info: MessageInfo = INFO, loader: Loader | None = None) -> bool:
    return matches(program(text), info, loader or Loader(), NOW, last_seq=10, last_uid=99)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ALL", True),
        ("SEEN", True), ("UNSEEN", False),
        ("FLAGGED", True), ("UNFLAGGED", False),
        ("ANSWERED", False), ("UNANSWERED", True),
        ("DELETED", False), ("UNDELETED", True),
        ("DRAFT", False), ("UNDRAFT", True),
        ("RECENT", False), ("OLD", True), ("NEW", False),
        ("KEYWORD $Work", True), ("KEYWORD $work", True), ("KEYWORD $Home", False),
        ("UNKEYWORD $Home", True), ("UNKEYWORD $Work", False),
        (f"LARGER {len(RAW) - 1}", True), (f"LARGER {len(RAW)}", False),
        (f"SMALLER {len(RAW) + 1}", True), (f"SMALLER {len(RAW)}", False),
        ("UID 42", True), ("UID 1:41,43:*", False), ("UID *", False), ("UID 50:*", False),
        ("3", True), ("1:2,4:*", False), ("*:3", True), ("*", False),
        ("MODSEQ 700", True), ("MODSEQ 701", False),
        ('MODSEQ "/flags/\\\\seen" all 600', True),
    ],
)
def test_keys_on_message_info(text: str, expected: bool) -> None:
    loader = Loader()
    assert search(text, loader=loader) is expected
    assert loader.calls == 0  # cheap keys never read the message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM foobar", True), ("FROM FRED", True), ("FROM blurdybloop.EXAMPLE", True),
        ("FROM mooch", False),
        ("TO mooch", True), ("TO foobar", False),
        ("CC smith", True), ("BCC hidden", True), ("BCC smith", False),
        ('SUBJECT "café"', True), ('SUBJECT "CAFÉ AFTER"', True),  # RFC 2047 decoded
        ("SUBJECT =?ISO", False),
        ('HEADER Message-ID "<B27397"', True), ("HEADER x-mailer TEST", True),
        ('HEADER X-Mailer ""', True), ('HEADER X-Empty ""', True),  # any such field
        ('HEADER X-Absent ""', False), ("HEADER X-Mailer nope", False),
        ('BODY "meet at 3:30"', True), ('BODY "crème brûlée"', True),  # QP + charset undone
        ("BODY Cr=E8me", False), ("BODY foobar", False),
        ("TEXT foobar", True), ('TEXT "brûlée"', True), ("TEXT absent", False),
    ],
)
def test_keys_on_message_text(text: str, expected: bool) -> None:
    loader = Loader()
    assert search(text, loader=loader) is expected
    assert loader.calls == 1


def test_search_string_with_charset_matches_decoded_text() -> None:
    reader = CommandReader()
    reader.feed(b"t SEARCH CHARSET ISO-8859-1 BODY {5+}\r\ncr\xe8me\r\n")
    command = reader.next()
    key = command.args.key  # type: ignore[union-attr]
    assert matches(key, INFO, Loader(), NOW, last_seq=10, last_uid=99)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Internal date 8-Feb-1994 (time and timezone disregarded).
        ("BEFORE 8-Feb-1994", False), ("BEFORE 9-Feb-1994", True),
        ("ON 8-Feb-1994", True), ("ON 7-Feb-1994", False),
        ("SINCE 8-Feb-1994", True), ("SINCE 9-Feb-1994", False),
        # Date: header 7-Feb-1994 in its own zone (-0800).
        ("SENTBEFORE 7-Feb-1994", False), ("SENTBEFORE 8-Feb-1994", True),
        ("SENTON 7-Feb-1994", True), ("SENTON 8-Feb-1994", False),
        ("SENTSINCE 7-Feb-1994", True), ("SENTSINCE 8-Feb-1994", False),
        # now - internaldate = 2 days 6h 7m 35s = 194855 s (RFC 5032).
        ("OLDER 194854", True), ("OLDER 194855", False),
        ("YOUNGER 194855", True), ("YOUNGER 194854", False),
    ],
)
def test_date_keys(text: str, expected: bool) -> None:
    assert search(text) is expected


def test_sent_keys_fall_back_to_internal_date_without_date_header() -> None:
    loader = Loader(b"Subject: no date\r\n\r\nbody\r\n")
    assert matches(program("SENTON 8-Feb-1994"), INFO, loader, NOW, last_seq=10, last_uid=99)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"', True),  # RFC 3501 §6.4.4 example
        ('FLAGGED SINCE 1-Feb-1994 NOT FROM "Fred"', False),
        ("OR SEEN DELETED", True), ("OR DELETED ANSWERED", False),
        ("OR DELETED (FROM fred SUBJECT café)", True),
        ("NOT NOT SEEN", True), ("NOT (SEEN FLAGGED)", False),
        ("OR NOT SEEN (OR DELETED NOT UNFLAGGED)", True),
        ("(SEEN (FLAGGED (UID 42 (3))))", True),
        ("SEEN UNSEEN", False),
        ("OR (OR DELETED DRAFT) (NOT OR SEEN DELETED)", False),
    ],
)
def test_nesting(text: str, expected: bool) -> None:
    assert search(text) is expected


def test_cheap_keys_decide_before_the_message_is_loaded() -> None:
    loader = Loader()
    assert not search("FROM fred DELETED", loader=loader)  # AND fails on the flag
    assert loader.calls == 0
    assert search("OR SUBJECT x SEEN", loader=loader)  # OR succeeds on the flag
    assert loader.calls == 0


def test_message_is_loaded_once_for_many_text_keys() -> None:
    loader = Loader()
    assert search("FROM fred TO mooch BODY joe TEXT tomorrow SUBJECT afternoon", loader=loader)
    assert loader.calls == 1


def test_needs_message() -> None:
    assert not needs_message(program("OR SEEN (UID 1:* NOT LARGER 5)"))
    assert needs_message(program("OR SEEN (UID 1:* NOT BODY x)"))
    assert needs_message(program("SENTON 1-Jan-2000"))


def test_saved_result_matches_by_uid() -> None:  # RFC 5182
    key = SearchKey("SEQ", (SequenceSet(saved=True),))
    assert matches(key, INFO, Loader(), NOW, last_seq=10, last_uid=99, saved_uids={42})
    assert not matches(key, INFO, Loader(), NOW, last_seq=10, last_uid=99, saved_uids={41})


def test_star_is_the_last_message() -> None:
    last = MessageInfo(seq=10, uid=99, flags=frozenset(), size=1,
                       internaldate=NOW, modseq=1)
    assert search("*", last) and search("UID *", last) and search("UID 500:*", last)


def test_new_is_recent_and_unseen() -> None:
    fresh = MessageInfo(seq=1, uid=1, flags=frozenset({"\\Recent"}), size=1, internaldate=NOW)
    assert search("NEW", fresh) and search("RECENT", fresh) and not search("OLD", fresh)


def test_base64_html_body_is_searched_decoded() -> None:
    raw = (b"Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n"
           b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"PHA+R3LDvMOfZSBhdXMgQmVybGluPC9wPg==\r\n--a--\r\n")
    assert matches(program('BODY "GRÜSSE"'), INFO, Loader(raw), NOW, last_seq=10, last_uid=99)
    assert matches(program('TEXT "grüße aus"'), INFO, Loader(raw), NOW, last_seq=10,
                   last_uid=99)


# ---- compiled programs: the same answers as matches() --------------------------------------


class RawSource:
    """A compiled program's view of one message's octets."""

    def __init__(self, raw: bytes) -> None:
        self.msg = Message(raw)

    def values(self, uid: int, field: str) -> tuple[str, ...]:
        return tuple(v.casefold() for v in self.msg.header_values(field))

    def header(self, uid: int) -> Message:
        return self.msg

    def texts(self, uid: int) -> tuple[str, str]:
        return self.msg.header_text().casefold(), self.msg.body_text().casefold()


PROGRAMS = [
    "ALL", "SEEN", "UNSEEN", "FLAGGED", "UNFLAGGED", "ANSWERED", "UNANSWERED", "DELETED",
    "UNDELETED", "DRAFT", "UNDRAFT", "RECENT", "OLD", "NEW", "KEYWORD $Work",
    "KEYWORD $work", "KEYWORD $Home", "UNKEYWORD $Home", "UNKEYWORD $Work",
    f"LARGER {len(RAW) - 1}", f"LARGER {len(RAW)}", f"SMALLER {len(RAW) + 1}",
    f"SMALLER {len(RAW)}", "UID 42", "UID 1:41,43:*", "UID *", "UID 50:*", "UID 99:40",
    "3", "1:2,4:*", "*:3", "*", "MODSEQ 700", "MODSEQ 701",
    "FROM foobar", "FROM FRED", "FROM mooch", "TO mooch", "CC smith", "BCC hidden",
    'SUBJECT "café"', 'SUBJECT "CAFÉ AFTER"', "SUBJECT =?ISO", 'HEADER Message-ID "<B27397"',
    "HEADER x-mailer TEST", 'HEADER X-Mailer ""', 'HEADER X-Empty ""', 'HEADER X-Absent ""',
    "HEADER X-Mailer nope", 'BODY "meet at 3:30"', 'BODY "crème brûlée"', "BODY Cr=E8me",
    "TEXT foobar", 'TEXT "brûlée"', "TEXT absent",
    "BEFORE 8-Feb-1994", "BEFORE 9-Feb-1994", "ON 8-Feb-1994", "ON 7-Feb-1994",
    "SINCE 8-Feb-1994", "SINCE 9-Feb-1994", "SENTBEFORE 7-Feb-1994", "SENTBEFORE 8-Feb-1994",
    "SENTON 7-Feb-1994", "SENTON 8-Feb-1994", "SENTSINCE 7-Feb-1994", "SENTSINCE 8-Feb-1994",
    "OLDER 194854", "OLDER 194855", "YOUNGER 194855", "YOUNGER 194854",
    'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"', "OR SEEN DELETED", "OR DELETED ANSWERED",
    "OR DELETED (FROM fred SUBJECT café)", "NOT NOT SEEN", "NOT (SEEN FLAGGED)",
    "OR NOT SEEN (OR DELETED NOT UNFLAGGED)", "(SEEN (FLAGGED (UID 42 (3))))", "SEEN UNSEEN",
    "OR (OR DELETED DRAFT) (NOT OR SEEN DELETED)",
]


@pytest.mark.parametrize("raw", [RAW, b"Subject: no date\r\n\r\nbody\r\n"])
@pytest.mark.parametrize("text", PROGRAMS)
def test_compiled_programs_answer_as_matches_does(text: str, raw: bytes) -> None:
    key = program(text)
    compiled = compile_program(key, NOW, last_seq=10, last_uid=99)
    facts = Stored(INFO.uid, INFO.flags, INFO.size, INFO.internaldate.timestamp(), INFO.modseq)
    expected = matches(key, INFO, Loader(raw), NOW, last_seq=10, last_uid=99)
    assert compiled.test(INFO.seq, INFO.uid, facts, RawSource(raw)) is expected


def test_compiled_programs_name_the_header_fields_they_read() -> None:
    compiled = compile_program(program('OR FROM a (SUBJECT b HEADER X-Y z) HEADER X-Z ""'), NOW,
                               last_seq=1, last_uid=1)
    assert compiled.fields == {"from", "subject", "x-y"} and compiled.needs_text
    assert not compile_program(program("UNSEEN SINCE 1-Jan-2000"), NOW, last_seq=1,
                               last_uid=1).fields


def test_compiled_saved_result_matches_by_uid() -> None:
    key = SearchKey("SEQ", (SequenceSet(saved=True),))
    facts = Stored(42, frozenset(), 1, 0.0, 1)
    assert compile_program(key, NOW, last_seq=1, last_uid=1, saved_uids={42}).test(
        1, 42, facts, RawSource(RAW))


@pytest.mark.parametrize(("text", "recent_uid", "expected"), [
    ("RECENT", 42, True), ("RECENT", 7, False), ("OLD", 42, False), ("OLD", 7, True),
    ("NEW", 42, False),  # \Seen: recent but not new
    ("NOT NEW", 42, True), ("OR RECENT DELETED", 42, True)])
def test_compiled_recent_keys_ask_the_session_not_the_flags(text: str, recent_uid: int,
                                                            expected: bool) -> None:
    # \Recent is never a stored flag (RFC 3501 §2.3.2): the session says which UIDs it holds.
    facts = Stored(42, frozenset({"\\Seen"}), 1, 0.0, 1)
    compiled = compile_program(program(text), NOW, last_seq=1, last_uid=42,
                               recent=lambda uid: uid == recent_uid)
    assert compiled.test(1, 42, facts, RawSource(RAW)) is expected


def test_compiled_new_is_recent_and_unseen() -> None:
    facts = Stored(42, frozenset({"\\Flagged"}), 1, 0.0, 1)
    compiled = compile_program(program("NEW"), NOW, last_seq=1, last_uid=42,
                               recent=lambda uid: True)
    assert compiled.test(1, 42, facts, RawSource(RAW))
