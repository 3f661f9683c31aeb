"""IMAP command reader (RFC 3501 §9): every command form, literals (synchronizing, LITERAL+,
LITERAL-, oversize), sequence sets, errors with their tags, hostile input, chunking."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.mda.imap.arguments import (
    Append,
    AppendMessage,
    Authenticate,
    Command,
    Copy,
    Create,
    Enable,
    Expunge,
    Fetch,
    Id,
    ListQuery,
    Login,
    MailboxName,
    QuotaRoot,
    Rename,
    Search,
    Select,
    Status,
    Store,
    StoreMode,
)
from relay.mda.imap.fetch_items import FetchItem, Section, parse_section
from relay.mda.imap.grammar import COMMAND_ARGS, KNOWN_COMMANDS
from relay.mda.imap.parser import (
    LITERAL_MINUS_MAX,
    CommandReader,
    NeedLiteral,
    ParseError,
    ReaderStateError,
)
from relay.mda.imap.search_keys import SearchKey
from relay.mda.imap.sequence_set import SequenceSet, parse_sequence_set
from relay.mda.imap.tokens import ErrorKind

Result = Command | NeedLiteral | ParseError


def run(stream: bytes, chunks: list[bytes] | None = None, accept: bool = True,
        **limits: int | None) -> list[Result]:
    """Feed `stream` (or `chunks`), draining after every feed; synchronizing literals are
    accepted (or rejected) as a session would."""
    reader = CommandReader(**limits)  # type: ignore[arg-type]
    out: list[Result] = []
    for chunk in chunks if chunks is not None else [stream]:
        reader.feed(chunk)
        while (result := reader.next()) is not None:
            out.append(result)
            if isinstance(result, NeedLiteral):
                reader.accept_literal() if accept else reader.reject_literal()
    return out


def one(line: bytes) -> Result:
    """The single result for `line` (continuation requests accepted and left out)."""
    results = [r for r in run(line) if not isinstance(r, NeedLiteral)]
    assert len(results) == 1, results
    return results[0]


def args(line: bytes) -> object:
    result = one(line)
    assert isinstance(result, Command), result
    return result.args


def error(line: bytes) -> ParseError:
    result = one(line)
    assert isinstance(result, ParseError), result
    return result


def seq(text: str) -> SequenceSet:
    return parse_sequence_set(text)


# ---- commands without arguments -------------------------------------------------------------


@pytest.mark.parametrize("name", ["CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE",
                                  "UNSELECT", "NAMESPACE", "IDLE", "EXPUNGE"])
def test_commands_without_arguments(name: str) -> None:
    assert one(b"a1 " + name.lower().encode() + b"\r\n") == Command("a1", name)


def test_argument_after_noop_is_bad_with_tag() -> None:
    e = error(b"a1 NOOP x\r\n")
    assert (e.tag, e.kind, e.status, e.command) == ("a1", ErrorKind.SYNTAX, "BAD", "NOOP")


def test_done_ends_idle() -> None:
    assert one(b"DONE\r\n") == Command("", "DONE")
    assert one(b"done\r\n") == Command("", "DONE")


def test_every_command_has_an_args_type() -> None:
    assert set(COMMAND_ARGS) == (KNOWN_COMMANDS - {"UID"}) | {"DONE"}


# ---- LOGIN, AUTHENTICATE --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a LOGIN joe secret\r\n", Login("joe", "secret")),
        (b'a LOGIN "joe smith" "se\\"c\\\\ret"\r\n', Login("joe smith", 'se"c\\ret')),
        (b'a login joe ""\r\n', Login("joe", "")),
        (b"a LOGIN joe p]ss\r\n", Login("joe", "p]ss")),  # "]" is an ASTRING-CHAR
        ('a LOGIN "jöe" "pässword"\r\n'.encode(), Login("jöe", "pässword")),
    ],
)
def test_login(line: bytes, expected: Login) -> None:
    assert args(line) == expected


def test_login_password_as_synchronizing_literal() -> None:
    results = run(b"a LOGIN joe {6}\r\nse\r\nt!\r\n")
    assert results == [NeedLiteral("a", 6, "LOGIN"),
                       Command("a", "LOGIN", args=Login("joe", "se\r\nt!"))]


def test_login_missing_password_is_bad() -> None:
    assert error(b"a LOGIN joe\r\n").tag == "a"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a AUTHENTICATE PLAIN\r\n", Authenticate("PLAIN")),
        (b"a authenticate plain AGpvZQBzZWNyZXQ=\r\n",
         Authenticate("PLAIN", b"AGpvZQBzZWNyZXQ=")),
        (b"a AUTHENTICATE EXTERNAL =\r\n", Authenticate("EXTERNAL", b"=")),  # RFC 4959 §3
    ],
)
def test_authenticate(line: bytes, expected: Authenticate) -> None:
    assert args(line) == expected


def test_authenticate_continuation_lines_are_read_raw() -> None:
    reader = CommandReader()
    reader.feed(b"a AUTHENTICATE PLAIN\r\nAGpvZQBzZWNyZXQ=\r\n*\r\n")
    assert reader.next() == Command("a", "AUTHENTICATE", args=Authenticate("PLAIN"))
    assert reader.next_line() == b"AGpvZQBzZWNyZXQ="
    assert reader.next_line() == b"*"
    assert reader.next_line() is None


# ---- mailbox commands -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a SELECT INBOX\r\n", Select("INBOX")),
        (b"a SELECT inbox\r\n", Select("INBOX")),  # RFC 3501 §5.1
        (b'a SELECT "InBox"\r\n', Select("INBOX")),
        (b"a SELECT INBOX.Sent\r\n", Select("INBOX.Sent")),
        (b"a SELECT Archive (CONDSTORE)\r\n", Select("Archive", condstore=True)),
        (b"a SELECT ~peter/mail/&U,BTFw-/&ZeVnLIqe-\r\n", Select("~peter/mail/台北/日本語")),
        (b"a SELECT {5}\r\nTrash\r\n", Select("Trash")),
    ],
)
def test_select(line: bytes, expected: Select) -> None:
    assert args(line) == expected


def test_examine_uses_select_arguments() -> None:
    assert one(b"a EXAMINE Sent\r\n") == Command("a", "EXAMINE", args=Select("Sent"))


def test_invalid_modified_utf7_mailbox_is_no() -> None:
    e = error(b"a SELECT &Jjo\r\n")
    assert (e.tag, e.kind, e.status) == ("a", ErrorKind.BAD_MAILBOX_NAME, "NO")


def test_eight_bit_mailbox_needs_utf8_accept() -> None:
    line = 'a SELECT "Боксы"\r\n'.encode()
    assert error(line).kind is ErrorKind.BAD_MAILBOX_NAME
    reader = CommandReader()
    reader.utf8_mailboxes = True  # RFC 6855 §3, after ENABLE UTF8=ACCEPT
    reader.feed(line)
    assert reader.next() == Command("a", "SELECT", args=Select("Боксы"))


def test_unknown_select_parameter_is_bad() -> None:
    assert error(b"a SELECT INBOX (FOO)\r\n").kind is ErrorKind.SYNTAX


@pytest.mark.parametrize("name", ["DELETE", "SUBSCRIBE", "UNSUBSCRIBE", "GETQUOTAROOT"])
def test_single_mailbox_commands(name: str) -> None:
    assert args(b"t " + name.encode() + b" a/&AOk-\r\n") == MailboxName("a/é")


def test_create_with_and_without_special_use() -> None:
    assert args(b"a CREATE Drafts\r\n") == Create("Drafts")
    assert args(b"a CREATE Drafts (USE (\\Drafts))\r\n") == Create("Drafts", ("\\Drafts",))


def test_rename() -> None:
    assert args(b'a RENAME "Old box" New\r\n') == Rename("Old box", "New")


def test_status() -> None:
    assert args(b"a STATUS INBOX (MESSAGES UNSEEN uidnext HIGHESTMODSEQ)\r\n") == Status(
        "INBOX", ("MESSAGES", "UNSEEN", "UIDNEXT", "HIGHESTMODSEQ"))


def test_status_unknown_item_is_bad() -> None:
    assert error(b"a STATUS INBOX (BOGUS)\r\n").tag == "a"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'a LIST "" *\r\n', ListQuery("", ("*",))),
        (b'a LIST "" %\r\n', ListQuery("", ("%",))),
        (b"a LIST ~/Mail/ %/foo]\r\n", ListQuery("~/Mail/", ("%/foo]",))),
        (b'a LIST "" ""\r\n', ListQuery("", ("",))),
        (b'a LIST (SPECIAL-USE) "" *\r\n', ListQuery("", ("*",), ("SPECIAL-USE",))),
        (b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" (INBOX Sent/%)\r\n',
         ListQuery("", ("INBOX", "Sent/%"), ("SUBSCRIBED", "RECURSIVEMATCH"))),
        (b'a LIST "" * RETURN (SPECIAL-USE SUBSCRIBED CHILDREN)\r\n',
         ListQuery("", ("*",), (), ("SPECIAL-USE", "SUBSCRIBED", "CHILDREN"))),
        (b'a LIST "" % RETURN (STATUS (MESSAGES UNSEEN))\r\n',  # RFC 5819
         ListQuery("", ("%",), (), ("STATUS",), ("MESSAGES", "UNSEEN"))),
    ],
)
def test_list(line: bytes, expected: ListQuery) -> None:
    assert args(line) == expected


def test_lsub() -> None:
    assert one(b'a LSUB "#news." comp.mail.*\r\n') == Command(
        "a", "LSUB", args=ListQuery("#news.", ("comp.mail.*",)))


# ---- APPEND ---------------------------------------------------------------------------------


def test_append_with_flags_and_date() -> None:
    message = b"From: a@b\r\n\r\nhi\r\n"
    results = run(b'a APPEND saved-messages (\\Seen $Label) "07-Feb-1994 21:52:25 -0800" {%d}\r\n'
                  % len(message) + message + b"\r\n")
    when = dt.datetime(1994, 2, 7, 21, 52, 25, tzinfo=dt.timezone(-dt.timedelta(hours=8)))
    assert results == [
        NeedLiteral("a", len(message), "APPEND"),
        Command("a", "APPEND", args=Append("saved-messages", (
            AppendMessage(("\\Seen", "$Label"), when, message),))),
    ]


def test_append_without_options_and_with_literal_plus() -> None:
    assert run(b"a APPEND INBOX {3+}\r\nabc\r\n") == [
        Command("a", "APPEND", args=Append("INBOX", (AppendMessage((), None, b"abc"),)))]


def test_multiappend() -> None:  # RFC 3502
    results = run(b"a APPEND INBOX {1+}\r\nx (\\Draft) {1+}\r\ny\r\n")
    assert results == [Command("a", "APPEND", args=Append("INBOX", (
        AppendMessage((), None, b"x"), AppendMessage(("\\Draft",), None, b"y"))))]


def test_append_literal8() -> None:  # RFC 3516 §4.4
    assert run(b"a APPEND INBOX ~{3+}\r\na\0b\r\n") == [
        Command("a", "APPEND", args=Append("INBOX", (AppendMessage((), None, b"a\0b", True),)))]


def test_literal8_outside_append_is_bad() -> None:
    results = run(b"a LOGIN ~{1+}\r\nx y\r\nb NOOP\r\n")
    assert isinstance(results[0], ParseError) and results[0].tag == "a"
    assert results[1] == Command("b", "NOOP")


def test_append_date_with_single_digit_day() -> None:
    result = run(b'a APPEND INBOX " 7-Feb-1994 21:52:25 +0000" {1+}\r\nx\r\n')[0]
    assert isinstance(result, Command) and isinstance(result.args, Append)
    assert result.args.messages[0].internaldate == dt.datetime(1994, 2, 7, 21, 52, 25,
                                                               tzinfo=dt.UTC)


@pytest.mark.parametrize("date", [b'"31-Feb-1994 21:52:25 +0000"', b'"07-Foo-1994 21:52:25 +0000"',
                                  b'"07-Feb-1994 21:52 +0000"'])
def test_bad_append_date_is_bad(date: bytes) -> None:
    result = run(b"a APPEND INBOX " + date + b" {1+}\r\nx\r\n")[0]
    assert isinstance(result, ParseError) and result.tag == "a"


def test_append_recent_flag_is_bad() -> None:  # RFC 3501 §2.3.2: \Recent is server-set
    assert isinstance(run(b"a APPEND INBOX (\\Recent) {1+}\r\nx\r\n")[0], ParseError)


def test_append_quoted_message_is_bad() -> None:
    assert error(b'a APPEND INBOX "hello"\r\n').tag == "a"


# ---- FETCH ----------------------------------------------------------------------------------


def fetch(line: bytes) -> Fetch:
    result = args(line)
    assert isinstance(result, Fetch)
    return result


@pytest.mark.parametrize(
    ("macro", "names"),
    [
        (b"ALL", ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")),
        (b"fast", ("FLAGS", "INTERNALDATE", "RFC822.SIZE")),
        (b"FULL", ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")),
    ],
)
def test_fetch_macros_expand(macro: bytes, names: tuple[str, ...]) -> None:  # RFC 3501 §6.4.5
    assert fetch(b"a FETCH 1 " + macro + b"\r\n").items == tuple(FetchItem(n) for n in names)


def test_fetch_macro_inside_parentheses_is_bad() -> None:
    assert error(b"a FETCH 1 (ALL)\r\n").tag == "a"


@pytest.mark.parametrize(
    ("att", "item"),
    [
        (b"ENVELOPE", FetchItem("ENVELOPE")),
        (b"flags", FetchItem("FLAGS")),
        (b"INTERNALDATE", FetchItem("INTERNALDATE")),
        (b"RFC822", FetchItem("RFC822")),
        (b"RFC822.HEADER", FetchItem("RFC822.HEADER")),
        (b"RFC822.SIZE", FetchItem("RFC822.SIZE")),
        (b"RFC822.TEXT", FetchItem("RFC822.TEXT")),
        (b"BODY", FetchItem("BODY")),
        (b"BODYSTRUCTURE", FetchItem("BODYSTRUCTURE")),
        (b"UID", FetchItem("UID")),
        (b"MODSEQ", FetchItem("MODSEQ")),
        (b"BODY[]", FetchItem("BODY", Section())),
        (b"BODY.PEEK[]", FetchItem("BODY", Section(), peek=True)),
        (b"BODY[HEADER]", FetchItem("BODY", Section((), "HEADER"))),
        (b"BODY[TEXT]", FetchItem("BODY", Section((), "TEXT"))),
        (b"BODY[1]", FetchItem("BODY", Section((1,)))),
        (b"BODY[1.2.3]", FetchItem("BODY", Section((1, 2, 3)))),
        (b"BODY[1.2.MIME]", FetchItem("BODY", Section((1, 2), "MIME"))),
        (b"BODY[3.HEADER]", FetchItem("BODY", Section((3,), "HEADER"))),
        (b"BODY[4.2.TEXT]", FetchItem("BODY", Section((4, 2), "TEXT"))),
        (b"BODY[HEADER.FIELDS (DATE FROM)]",
         FetchItem("BODY", Section((), "HEADER.FIELDS", ("DATE", "FROM")))),
        (b"BODY.PEEK[2.HEADER.FIELDS.NOT (Subject \"X-Spam\")]<10.20>",
         FetchItem("BODY", Section((2,), "HEADER.FIELDS.NOT", ("Subject", "X-Spam")), (10, 20),
                   True)),
        (b"BODY[]<0.2048>", FetchItem("BODY", Section(), (0, 2048))),
        (b"BINARY[1]", FetchItem("BINARY", Section((1,)))),
        (b"BINARY.PEEK[2]<0.10>", FetchItem("BINARY", Section((2,)), (0, 10), True)),
        (b"BINARY.SIZE[1]", FetchItem("BINARY.SIZE", Section((1,)))),
        (b"BINARY[]", FetchItem("BINARY", Section())),
    ],
)
def test_fetch_attributes(att: bytes, item: FetchItem) -> None:
    assert fetch(b"a FETCH 1 " + att + b"\r\n").items == (item,)
    assert fetch(b"a FETCH 1 (UID " + att + b")\r\n").items == (FetchItem("UID"), item)


@pytest.mark.parametrize("att", [b"BODY[MIME]", b"BODY.PEEK", b"BODY[1.]", b"BODY[0]",
                                 b"BODY[HEADER.FIELDS ()]", b"BODY[HEADER.FIELDS]",
                                 b"BODY[]<0>", b"BODY[]<0.0>", b"BINARY[1.TEXT]", b"BODY[BOGUS]",
                                 b"RFC822.BOGUS", b"BODY[HEADER.FIELDS (A:B)]", b"()"])
def test_bad_fetch_attributes_are_bad(att: bytes) -> None:
    e = error(b"a FETCH 1 " + att + b"\r\n")
    assert (e.tag, e.status, e.command) == ("a", "BAD", "FETCH")


def test_header_field_names_may_be_literals() -> None:
    results = run(b"a FETCH 1 BODY[HEADER.FIELDS ({4}\r\nDATE FROM)]\r\n")
    assert results[-1] == Command("a", "FETCH", args=Fetch(seq("1"), (
        FetchItem("BODY", Section((), "HEADER.FIELDS", ("DATE", "FROM"))),)))


def test_uid_fetch_with_changedsince_and_vanished() -> None:  # RFC 7162 §3.1.4, §3.2.6
    result = one(b"a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n")
    assert result == Command("a", "FETCH", True, Fetch(seq("300:500"), (FetchItem("FLAGS"),),
                                                       12345, True))


def test_vanished_without_uid_is_bad() -> None:
    assert error(b"a FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)\r\n").tag == "a"


def test_response_keys() -> None:  # RFC 3501 §7.4.2
    f = fetch(b"a FETCH 1 (BODY.PEEK[1.HEADER.FIELDS (DATE)]<5.6> BODY[] RFC822.SIZE "
              b"BINARY[2]<0.1>)\r\n")
    assert [i.response_key() for i in f.items] == [
        "BODY[1.HEADER.FIELDS (DATE)]<5>", "BODY[]", "RFC822.SIZE", "BINARY[2]<0>"]


# ---- STORE, COPY, MOVE, EXPUNGE -------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a STORE 2:4 +FLAGS (\\Deleted)\r\n",
         Store(seq("2:4"), StoreMode.ADD, False, ("\\Deleted",))),
        (b"a STORE 1 -FLAGS.SILENT (\\seen $Junk)\r\n",
         Store(seq("1"), StoreMode.REMOVE, True, ("\\Seen", "$Junk"))),
        (b"a STORE 1 FLAGS ()\r\n", Store(seq("1"), StoreMode.REPLACE, False, ())),
        (b"a STORE 1:* flags \\Answered \\Flagged\r\n",
         Store(seq("1:*"), StoreMode.REPLACE, False, ("\\Answered", "\\Flagged"))),
        (b"a STORE 7 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Draft)\r\n",
         Store(seq("7"), StoreMode.ADD, True, ("\\Draft",), 320162338)),
    ],
)
def test_store(line: bytes, expected: Store) -> None:
    assert args(line) == expected


@pytest.mark.parametrize("line", [b"a STORE 1 +FLAGS (\\Recent)\r\n", b"a STORE 1 ~FLAGS (x)\r\n",
                                  b"a STORE 1 FLAGS.LOUD (x)\r\n", b"a STORE 1 +FLAGS\r\n"])
def test_bad_store_is_bad(line: bytes) -> None:
    assert error(line).tag == "a"


def test_uid_store_copy_move_expunge() -> None:
    assert one(b"a UID STORE 10 +FLAGS (x)\r\n") == Command(
        "a", "STORE", True, Store(seq("10"), StoreMode.ADD, False, ("x",)))
    assert one(b"a COPY 2:4 MEETING\r\n") == Command("a", "COPY", args=Copy(seq("2:4"),
                                                                            "MEETING"))
    assert one(b"a UID MOVE 42 Trash\r\n") == Command("a", "MOVE", True, Copy(seq("42"),
                                                                              "Trash"))
    assert one(b"a UID EXPUNGE 3000:3002\r\n") == Command("a", "EXPUNGE", True,
                                                          Expunge(seq("3000:3002")))


def test_uid_with_other_command_is_unknown() -> None:
    e = error(b"a UID NOOP\r\n")
    assert (e.tag, e.kind) == ("a", ErrorKind.UNKNOWN_COMMAND)


# ---- SEARCH ---------------------------------------------------------------------------------


def search(line: bytes) -> Search:
    result = args(line)
    assert isinstance(result, Search)
    return result


def key(line: bytes) -> SearchKey:
    return search(b"a SEARCH " + line + b"\r\n").key


@pytest.mark.parametrize("name", ["ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD",
                                  "RECENT", "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT",
                                  "UNFLAGGED", "UNSEEN"])
def test_search_flag_keys(name: str) -> None:
    assert key(name.lower().encode()) == SearchKey(name)


@pytest.mark.parametrize("name", ["BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"])
def test_search_text_keys(name: str) -> None:
    assert key(name.encode() + b' "Smith, J"') == SearchKey(name, ("Smith, J",))
    assert key(name.encode() + b" smith") == SearchKey(name, ("smith",))


@pytest.mark.parametrize("name", ["BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"])
def test_search_date_keys(name: str) -> None:
    assert key(name.encode() + b" 1-Feb-1994") == SearchKey(name, (dt.date(1994, 2, 1),))
    assert key(name.encode() + b' "01-feb-1994"') == SearchKey(name, (dt.date(1994, 2, 1),))


def test_search_other_keys() -> None:
    assert key(b"KEYWORD $Junk") == SearchKey("KEYWORD", ("$Junk",))
    assert key(b"UNKEYWORD foo") == SearchKey("UNKEYWORD", ("foo",))
    assert key(b"LARGER 1024") == SearchKey("LARGER", (1024,))
    assert key(b"SMALLER 0") == SearchKey("SMALLER", (0,))
    assert key(b"HEADER X-Mailer \"\"") == SearchKey("HEADER", ("X-Mailer", ""))
    assert key(b"UID 1:*") == SearchKey("UID", (seq("1:*"),))
    assert key(b"2,4:6") == SearchKey("SEQ", (seq("2,4:6"),))
    assert key(b"$") == SearchKey("SEQ", (SequenceSet(saved=True),))
    assert key(b"OLDER 3600") == SearchKey("OLDER", (3600,))
    assert key(b"YOUNGER 60") == SearchKey("YOUNGER", (60,))
    assert key(b"MODSEQ 620162338") == SearchKey("MODSEQ", (620162338, None, None))
    assert key(b'MODSEQ "/flags/\\\\draft" all 620162338') == SearchKey(
        "MODSEQ", (620162338, "/flags/\\draft", "ALL"))


def test_search_program_nesting() -> None:  # RFC 3501 §6.4.4 examples
    assert key(b'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"') == SearchKey("AND", (
        SearchKey("FLAGGED"), SearchKey("SINCE", (dt.date(1994, 2, 1),)),
        SearchKey("NOT", (SearchKey("FROM", ("Smith",)),))))
    assert key(b"OR (SEEN FLAGGED) NOT (DELETED)") == SearchKey("OR", (
        SearchKey("AND", (SearchKey("SEEN"), SearchKey("FLAGGED"))),
        SearchKey("NOT", (SearchKey("DELETED"),))))


def test_search_charset_decodes_strings() -> None:
    s = search(b"a SEARCH CHARSET ISO-8859-1 SUBJECT {3}\r\n\xe9t\xe9\r\n"
               .replace(b"{3}\r\n", b"{3+}\r\n"))
    assert (s.charset, s.key) == ("ISO-8859-1", SearchKey("SUBJECT", ("été",)))


def test_search_unknown_charset_is_no_badcharset() -> None:  # RFC 3501 §6.4.4
    e = error(b"a SEARCH CHARSET X-BOGUS TEXT x\r\n")
    assert (e.tag, e.kind, e.status, e.code) == ("a", ErrorKind.BAD_CHARSET, "NO",
                                                 "BADCHARSET (US-ASCII UTF-8)")


def test_search_non_text_codec_is_badcharset() -> None:
    assert error(b"a SEARCH CHARSET rot13 TEXT x\r\n").kind is ErrorKind.BAD_CHARSET


def test_search_return_options() -> None:  # RFC 4731
    s = search(b"a UID SEARCH RETURN (MIN COUNT) CHARSET UTF-8 UNSEEN\r\n")
    assert (s.return_options, s.charset, s.key) == (("MIN", "COUNT"), "UTF-8",
                                                    SearchKey("UNSEEN"))


@pytest.mark.parametrize("line", [b"a SEARCH\r\n", b"a SEARCH BOGUS\r\n", b"a SEARCH ()\r\n",
                                  b"a SEARCH OR SEEN\r\n", b"a SEARCH SINCE 1994\r\n",
                                  b"a SEARCH LARGER x\r\n", b"a SEARCH 0\r\n",
                                  b"a SEARCH UNSEEN  SEEN\r\n"])
def test_bad_search_is_bad_with_tag(line: bytes) -> None:
    e = error(line)
    assert (e.tag, e.status) == ("a", "BAD")


def test_deep_search_nesting_is_refused_not_a_crash() -> None:
    e = error(b"a SEARCH " + b"NOT " * 5000 + b"SEEN\r\n")
    assert e.tag == "a" and "deeply" in e.text
    e = error(b"a SEARCH " + b"(" * 5000 + b"SEEN" + b")" * 5000 + b"\r\n")
    assert e.tag == "a"


# ---- ID, ENABLE, quota ----------------------------------------------------------------------


def test_id() -> None:  # RFC 2971
    assert args(b'a ID ("name" "sodr" "version" "19.34" "vendor" NIL)\r\n') == Id(
        (("name", "sodr"), ("version", "19.34"), ("vendor", None)))
    assert args(b"a ID NIL\r\n") == Id(None)


def test_enable() -> None:  # RFC 5161
    assert args(b"a ENABLE CONDSTORE utf8=accept\r\n") == Enable(("CONDSTORE", "UTF8=ACCEPT"))
    assert error(b"a ENABLE\r\n").tag == "a"


def test_getquota() -> None:
    assert args(b'a GETQUOTA ""\r\n') == QuotaRoot("")


# ---- sequence sets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "largest", "ranges"),
    [
        ("1:5,7,*", 10, [(1, 5), (7, 7), (10, 10)]),
        ("*:4", 10, [(4, 10)]),  # RFC 3501 §9: "*:4" is 4 to the last
        ("2,4:7,9,12:*", 15, [(2, 2), (4, 7), (9, 9), (12, 15)]),  # RFC 3501 §9 example
        ("3:1", 10, [(1, 3)]),
        ("1:3,2:6", 10, [(1, 6)]),
        ("4,5,6", 10, [(4, 6)]),
        ("559:*", 500, [(500, 500)]),  # RFC 3501 §6.4.8
        ("600", 500, []),
        ("*", 0, []),
        ("1:4294967295", 3, [(1, 3)]),
    ],
)
def test_sequence_set_resolve(text: str, largest: int, ranges: list[tuple[int, int]]) -> None:
    assert seq(text).resolve(largest) == ranges


def test_huge_sequence_set_is_not_expanded() -> None:
    s = seq("1:4294967295")
    started = time.perf_counter()
    assert s.contains(4294967295, 4294967295)
    assert s.resolve(4294967295) == [(1, 4294967295)]
    assert time.perf_counter() - started < 0.1
    values = s.values(4294967295)
    assert [next(values) for _ in range(3)] == [1, 2, 3]


def test_sequence_set_membership_with_star() -> None:
    s = seq("1:3,*")
    assert [n for n in range(1, 9) if s.contains(n, 8)] == [1, 2, 3, 8]


def test_sequence_set_round_trips_as_text() -> None:
    assert str(seq("1:5,7,*:4,*")) == "1:5,7,*:4,*"
    assert str(SequenceSet(saved=True)) == "$"
    assert seq("2:9,12").max_explicit() == 12


@pytest.mark.parametrize("text", ["0", "1:", ",1", "1,", "4294967296", "1:0", "a", "", "1::2",
                                  "99999999999999999999999"])
def test_bad_sequence_sets_raise(text: str) -> None:
    with pytest.raises(ValueError):
        parse_sequence_set(text)


def test_parse_section_helper() -> None:
    assert parse_section("1.2.HEADER.FIELDS (DATE FROM)") == Section(
        (1, 2), "HEADER.FIELDS", ("DATE", "FROM"))
    assert str(parse_section("4.2.header.fields.not (A \"B(\")")) == \
        '4.2.HEADER.FIELDS.NOT (A "B(")'
    with pytest.raises(ValueError):
        parse_section("MIME")


# ---- tags and malformed lines ---------------------------------------------------------------


def test_tag_may_hold_any_astring_char_but_plus() -> None:
    assert one(b"a.b]c$1 NOOP\r\n") == Command("a.b]c$1", "NOOP")
    e = error(b"+ NOOP\r\n")
    assert e.tag is None and e.kind is ErrorKind.SYNTAX


def test_unknown_command_is_bad_with_tag() -> None:
    e = error(b"a7 FROB x\r\n")
    assert (e.tag, e.kind, e.status, e.fatal) == ("a7", ErrorKind.UNKNOWN_COMMAND, "BAD", False)


def test_missing_command_is_bad_with_tag() -> None:
    e = error(b"a7\r\n")
    assert (e.tag, e.kind) == ("a7", ErrorKind.UNKNOWN_COMMAND)


def test_untaggable_line_is_star_bad() -> None:
    assert error(b" NOOP\r\n").tag is None
    assert error(b"(x) NOOP\r\n").tag is None


def test_reader_continues_after_errors() -> None:
    assert run(b"a FROB\r\nb LOGIN\r\n\r\nc NOOP\r\n")[-1] == Command("c", "NOOP")


def test_bare_lf_line_ending_is_tolerated() -> None:
    assert run(b"a NOOP\nb NOOP\r\n") == [Command("a", "NOOP"), Command("b", "NOOP")]


def test_empty_lines_are_ignored() -> None:
    assert run(b"\r\n\r\na NOOP\r\n") == [Command("a", "NOOP")]


# ---- literals -------------------------------------------------------------------------------


def test_rejected_literal_drops_the_command() -> None:
    # The session answered "a NO" instead of "+"; the client sends its next command.
    assert run(b"a APPEND Nope {5}\r\nb NOOP\r\n", accept=False) == [
        NeedLiteral("a", 5, "APPEND"), Command("b", "NOOP")]


def test_need_literal_repeats_until_answered() -> None:
    reader = CommandReader()
    reader.feed(b"a LOGIN {3}\r\n")
    assert reader.next() == reader.next() == NeedLiteral("a", 3, "LOGIN")


def test_accept_without_pending_literal_is_a_glue_bug() -> None:
    reader = CommandReader()
    with pytest.raises(ReaderStateError):
        reader.accept_literal()
    with pytest.raises(ReaderStateError):
        reader.reject_literal()
    reader.feed(b"a LOGIN {3}\r\n")
    reader.next()
    with pytest.raises(ReaderStateError):
        reader.next_line()


def test_zero_length_literal() -> None:
    assert run(b"a LOGIN {0}\r\n {0+}\r\n\r\n") == [
        NeedLiteral("a", 0, "LOGIN"), Command("a", "LOGIN", args=Login("", ""))]


def test_oversize_synchronizing_literal_is_refused_before_continuation() -> None:
    # No "+" is sent, so the client never sends the octets: the next line is a new command.
    results = run(b"a LOGIN joe {70000}\r\nb NOOP\r\n")
    assert results == [ParseError("a", ErrorKind.TOO_BIG, "literal too big", "BAD", "TOOBIG",
                                  command="LOGIN"),
                       Command("b", "NOOP")]


def test_oversize_append_is_no_toobig() -> None:  # RFC 7889 §4
    results = run(b"a APPEND INBOX {2000}\r\nb NOOP\r\n", max_append=1000)
    assert results == [ParseError("a", ErrorKind.TOO_BIG, "literal too big", "NO", "TOOBIG",
                                  command="APPEND"),
                       Command("b", "NOOP")]


def test_oversize_non_synchronizing_literal_is_counted_away() -> None:
    reader = CommandReader(max_append=1000)
    reader.feed(b"a APPEND INBOX {5000000+}\r\n")
    assert reader.next() == ParseError("a", ErrorKind.TOO_BIG, "literal too big", "NO",
                                       "TOOBIG", command="APPEND")
    for _ in range(50):
        reader.feed(b"x" * 100_000)
        assert reader.next() is None
        assert reader.buffered == 0  # swallowed, not buffered
    reader.feed(b" (\\Seen) {3+}\r\nabc\r\nb NOOP\r\n")  # the rest of the refused command
    assert reader.next() == Command("b", "NOOP")


def test_literal_minus_limits_non_synchronizing_literals() -> None:  # RFC 7888 §4
    big = LITERAL_MINUS_MAX + 1
    results = run(b"a APPEND INBOX {%d+}\r\n" % big + b"x" * big + b"\r\nb NOOP\r\n",
                  max_nonsync=LITERAL_MINUS_MAX)
    assert results == [ParseError("a", ErrorKind.TOO_BIG, "non-synchronizing literal too big",
                                  "BAD", "TOOBIG", command="APPEND"),
                       Command("b", "NOOP")]
    ok = run(b"a APPEND INBOX {4096+}\r\n" + b"x" * 4096 + b"\r\n",
             max_nonsync=LITERAL_MINUS_MAX)
    assert isinstance(ok[0], Command)
    # Synchronizing literals stay allowed up to the APPEND limit.
    sync = run(b"a APPEND INBOX {8000}\r\n" + b"x" * 8000 + b"\r\n", max_nonsync=4096)
    assert isinstance(sync[1], Command)


def test_other_commands_are_bounded_by_max_command() -> None:
    ok = run(b"a LOGIN joe {100}\r\n" + b"p" * 100 + b"\r\n", max_command=200)
    assert isinstance(ok[-1], Command)
    refused = run(b"a LOGIN joe {300}\r\nb NOOP\r\n", max_command=200)
    assert [type(r) for r in refused] == [ParseError, Command]


def test_command_text_over_limit_across_literals_is_refused() -> None:
    # Every line is under the limit; text plus literal is not.
    stream = b"a LOGIN {60+}\r\n" + b"x" * 60 + b" " + b"y" * 60 + b"\r\nb NOOP\r\n"
    results = run(stream, max_command=100)
    assert isinstance(results[0], ParseError) and results[0].kind is ErrorKind.TOO_BIG
    assert results[1] == Command("b", "NOOP")


def test_huge_announced_size_is_refused_without_overflow() -> None:
    results = run(b"a LOGIN {" + b"9" * 5000 + b"}\r\nb NOOP\r\n")
    assert results[0].kind is ErrorKind.TOO_BIG  # type: ignore[union-attr]
    assert results[1] == Command("b", "NOOP")


def test_literal_of_unknown_command_is_refused_before_continuation() -> None:
    assert run(b"a FROB {5}\r\nb NOOP\r\n") == [
        ParseError("a", ErrorKind.UNKNOWN_COMMAND, "unknown command"), Command("b", "NOOP")]


def test_large_append_is_read_in_linear_time() -> None:
    size = 16 * 1024 * 1024
    reader = CommandReader()
    reader.feed(b"a APPEND INBOX {%d+}\r\n" % size)
    started = time.perf_counter()
    chunk = b"y" * 16384
    for _ in range(size // len(chunk)):
        reader.feed(chunk)
        assert reader.next() is None
    reader.feed(b"\r\n")
    result = reader.next()
    assert time.perf_counter() - started < 5
    assert isinstance(result, Command) and isinstance(result.args, Append)
    assert len(result.args.messages[0].data) == size


# ---- hostile input --------------------------------------------------------------------------


def test_long_line_without_crlf_is_fatal_and_bounded() -> None:
    reader = CommandReader()
    for _ in range(160):
        reader.feed(b"A" * 65536)  # 10 MiB of garbage
        result = reader.next()
        if result is not None:
            break
    assert result == ParseError(None, ErrorKind.LINE_TOO_LONG, "line too long", fatal=True)
    assert reader.buffered == 0
    reader.feed(b"\r\na NOOP\r\n")
    assert reader.next() is None  # dead: the session closes the connection


def test_terminated_line_over_the_limit_is_fatal_whatever_the_chunking() -> None:
    stream = b"a LOGIN " + b"x" * 200 + b"\r\n"
    whole = run(stream, max_command=100)
    bytewise = run(stream, [stream[i : i + 1] for i in range(len(stream))], max_command=100)
    assert whole == bytewise == [ParseError(None, ErrorKind.LINE_TOO_LONG, "line too long",
                                            fatal=True)]


STREAM = (b"a1 LOGIN {3}\r\njoe {6+}\r\nsecret\r\n"
          b"a2 SELECT INBOX\r\n"
          b"a3 APPEND INBOX (\\Seen) {12}\r\nhello\r\nworld\r\n"
          b"a4 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS ({4+}\r\nDATE)])\r\n"
          b"a5 FROB\r\n"
          b"a6 LOGIN {99999999}\r\n"
          b"DONE\r\n"
          b"a7 SEARCH CHARSET UTF-8 TEXT {2}\r\n\xc3\xa9\r\n")


def test_stream_split_at_every_byte_gives_the_same_results() -> None:
    whole = run(STREAM)
    assert [type(r).__name__ for r in whole] == [
        "NeedLiteral", "Command", "Command", "NeedLiteral", "Command", "Command", "ParseError",
        "ParseError", "Command", "NeedLiteral", "Command"]
    assert whole[-1] == Command("a7", "SEARCH", args=Search(SearchKey("TEXT", ("é",)), "UTF-8"))
    for i in range(len(STREAM) + 1):
        assert run(STREAM, [STREAM[:i], STREAM[i:]]) == whole, i
    assert run(STREAM, [STREAM[i : i + 1] for i in range(len(STREAM))]) == whole


_TROUBLE = st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b"{", b"}", b"{3}", b"{2+}", b"~{1}",
                            b"{99999}", b"\"", b"\\", b"(", b")", b"[", b"]", b"<", b">", b"*",
                            b"%", b"+", b"a1 ", b"UID ", b"FETCH ", b"BODY[", b"APPEND ",
                            b"LOGIN ", b"SEARCH ", b"NOT ", b"OR ", b"1:*", b"DONE", b"\x00",
                            b"\xff", b"&", b"-", b"INBOX", b"CHARSET ", b"HEADER.FIELDS",
                            b"\"abc\"", b"NIL", b"STORE ", b"+FLAGS", b"\\Seen", b"x" * 40])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(_TROUBLE, st.binary(max_size=12)), max_size=40),
       cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8),
       accept=st.booleans())
def test_random_input_never_raises_and_ignores_chunking(parts: list[bytes], cuts: list[int],
                                                        accept: bool) -> None:
    stream = b"".join(parts)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    whole = run(stream, accept=accept, max_command=256, max_append=1024)
    assert all(isinstance(r, Command | NeedLiteral | ParseError) for r in whole)
    assert run(stream, chunks, accept=accept, max_command=256, max_append=1024) == whole
