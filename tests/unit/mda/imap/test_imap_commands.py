"""IMAP command implementations against a real MailStore in tmp_path: exact response
octets for SELECT, FETCH, STORE, COPY, MOVE, EXPUNGE, SEARCH, APPEND and the mailbox
commands, sequence-number renumbering (RFC 3501 §7.4.1), and what a second session sees.

`Client` parses a command line with the real CommandReader and runs commands.execute();
it returns everything written (untagged responses, then the tagged line).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.mda import index as index_module
from relay.mda.imap import commands
from relay.mda.imap.arguments import Command
from relay.mda.imap.context import Context
from relay.mda.imap.parser import CommandReader
from relay.mda.imap.responses import Transition
from relay.mda.maildir import MaildirStore
from relay.mda.folder import Folder
from relay.mda.store import MailStore

ADDRESS = "bob@example.org"
MSG = [
    b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: one\r\n"
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\nfirst body\r\n",
    b"From: Carol <carol@example.org>\r\nSubject: two apples\r\n\r\nsecond body\r\n",
    b"From: Dave <dave@example.org>\r\nSubject: three\r\nContent-Type: multipart/mixed; "
    b"boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\npart one\r\n--b1\r\n"
    b"Content-Type: text/html\r\n\r\n<p>two</p>\r\n--b1--\r\n",
]


class Client:
    def __init__(self, store: MailStore) -> None:
        account = store.account(ADDRESS)
        account.ensure_defaults()
        self.ctx = Context(account, clock=lambda: 1_700_000_000.0)
        self.last: Command | None = None
        self.done = None

    def __call__(self, line: bytes) -> bytes:
        reader = CommandReader()
        reader.feed(line + b"\r\n")
        cmd = reader.next()
        assert isinstance(cmd, Command), cmd
        out: list[bytes] = []

        class Sink:
            def write(self, data: bytes) -> None:
                out.append(data)

        self.done = done = commands.execute(self.ctx, cmd, Sink())
        return b"".join(out) + done.line(cmd.tag)

    @property
    def folder(self) -> Folder:
        assert self.ctx.selected is not None
        return self.ctx.selected.folder


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MailStore]:
    s = MailStore(tmp_path / "mail")
    yield s
    s.close()


@pytest.fixture
def deliver(tmp_path: Path):  # type: ignore[no-untyped-def]
    maildir = MaildirStore(tmp_path / "mail")
    return lambda body: maildir.deliver(ADDRESS, body)


@pytest.fixture
def client(store: MailStore, deliver) -> Client:  # type: ignore[no-untyped-def]
    for body in MSG:
        deliver(body)
    Client(store)(b"s SELECT INBOX")  # an earlier session claimed them: none is \Recent here
    c = Client(store)
    c(b"s SELECT INBOX")
    return c


def lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")[:-1]


# ---- SELECT / EXAMINE -------------------------------------------------------------------


def test_select_reports_the_mailbox(store: MailStore, deliver) -> None:  # type: ignore[no-untyped-def]
    for body in MSG:
        deliver(body)
    c = Client(store)
    out = c(b"a SELECT INBOX")
    uv, nxt = c.folder.uidvalidity, c.folder.uidnext
    assert lines(out) == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
        b"Flags permitted",
        b"* 3 EXISTS",
        b"* 3 RECENT",  # the first session to select new mail claims it (RFC 3501 §2.3.2)
        b"* OK [UNSEEN 1] First unseen",
        b"* OK [UIDVALIDITY %d] UIDs valid" % uv,
        b"* OK [UIDNEXT %d] Predicted next UID" % nxt,
        b"* OK [HIGHESTMODSEQ %d] Highest" % c.folder.highestmodseq,
        b"a OK [READ-WRITE] SELECT completed",
    ]
    assert nxt == 4
    assert c.done.transition is Transition.SELECTED


def test_examine_is_read_only(client: Client) -> None:
    out = client(b"e EXAMINE INBOX")
    assert out.startswith(b"* OK [CLOSED] Previous mailbox closed\r\n")
    assert b"* OK [PERMANENTFLAGS ()] No permanent flags permitted\r\n" in out
    assert out.endswith(b"e OK [READ-ONLY] EXAMINE completed\r\n")
    assert client(b"f STORE 1 +FLAGS (\\Seen)") == b"f NO Mailbox is read-only\r\n"
    assert client(b"g EXPUNGE") == b"g NO Mailbox is read-only\r\n"
    assert client(b"h FETCH 1 BODY[TEXT]") == \
        b"* 1 FETCH (BODY[TEXT] {12}\r\nfirst body\r\n)\r\nh OK FETCH completed\r\n"


def test_select_of_a_missing_mailbox_deselects(client: Client) -> None:
    out = client(b"a SELECT Nope")
    assert out == (b"* OK [CLOSED] Previous mailbox closed\r\n"
                   b"a NO [NONEXISTENT] Mailbox does not exist\r\n")
    assert client.done.transition is Transition.UNSELECTED
    assert client.ctx.selected is None


# ---- FETCH ------------------------------------------------------------------------------


def test_fetch_index_items_read_no_file(client: Client) -> None:
    selected = client.ctx.selected
    assert selected is not None
    sizes = [m.size for m in client.folder.messages()]
    out = client(b"f FETCH 1:* (UID FLAGS RFC822.SIZE)")
    assert lines(out) == [
        b"* 1 FETCH (UID 1 FLAGS () RFC822.SIZE %d)" % sizes[0],
        b"* 2 FETCH (UID 2 FLAGS () RFC822.SIZE %d)" % sizes[1],
        b"* 3 FETCH (UID 3 FLAGS () RFC822.SIZE %d)" % sizes[2],
        b"f OK FETCH completed",
    ]
    assert re.fullmatch(rb'\* 1 FETCH \(INTERNALDATE "[ 0-9]\d-[A-Z][a-z]{2}-\d{4} '
                        rb'\d\d:\d\d:\d\d \+0000"\)\r\ng OK FETCH completed\r\n',
                        client(b"g FETCH 1 INTERNALDATE"))
    assert selected.cache.reads == 0


def test_body_peek_does_not_set_seen_and_body_does(client: Client) -> None:
    assert client(b"a FETCH 1 BODY.PEEK[TEXT]") == \
        b"* 1 FETCH (BODY[TEXT] {12}\r\nfirst body\r\n)\r\na OK FETCH completed\r\n"
    assert client(b"b FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS ())\r\nb OK FETCH completed\r\n"
    assert client(b"c FETCH 1 BODY[TEXT]") == (b"* 1 FETCH (BODY[TEXT] {12}\r\nfirst body\r\n"
                                               b" FLAGS (\\Seen))\r\nc OK FETCH completed\r\n")
    assert client(b"d FETCH 1 FLAGS") == \
        b"* 1 FETCH (FLAGS (\\Seen))\r\nd OK FETCH completed\r\n"


def test_body_is_the_stored_file_byte_for_byte(client: Client) -> None:
    out = client(b"a FETCH 2 BODY.PEEK[]")
    raw = client.folder.read(2)
    assert raw == MSG[1]
    assert out == b"* 2 FETCH (BODY[] {%d}\r\n%s)\r\na OK FETCH completed\r\n" % (len(raw), raw)


def test_partial_fetch(client: Client) -> None:
    assert client(b"a FETCH 1 BODY.PEEK[]<6.5>") == \
        b"* 1 FETCH (BODY[]<6> {5}\r\nAlice)\r\na OK FETCH completed\r\n"
    assert client(b"b FETCH 1 BODY.PEEK[]<9999.5>") == \
        b"* 1 FETCH (BODY[]<9999> {0}\r\n)\r\nb OK FETCH completed\r\n"


def test_header_fields_and_rfc822_items(client: Client) -> None:
    assert client(b"a FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]") == \
        b"* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {23}\r\nSubject: two apples\r\n\r\n)\r\n" \
        b"a OK FETCH completed\r\n"
    header = MSG[1][: MSG[1].index(b"\r\n\r\n") + 4]
    assert client(b"b FETCH 2 RFC822.HEADER") == \
        b"* 2 FETCH (RFC822.HEADER {%d}\r\n%s)\r\nb OK FETCH completed\r\n" % (len(header),
                                                                               header)
    assert client(b"c FETCH 2 FLAGS") == b"* 2 FETCH (FLAGS ())\r\nc OK FETCH completed\r\n"
    assert client(b"d FETCH 2 RFC822.TEXT").startswith(
        b"* 2 FETCH (RFC822.TEXT {13}\r\nsecond body\r\n FLAGS (\\Seen))")


def test_envelope_reads_only_the_header(client: Client) -> None:
    out = client(b"a FETCH 1 ENVELOPE")
    assert out == (b'* 1 FETCH (ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "one" '
                   b'(("Alice" NIL "alice" "example.org")) (("Alice" NIL "alice" "example.org")) '
                   b'(("Alice" NIL "alice" "example.org")) ((NIL NIL "bob" "example.org")) '
                   b'NIL NIL NIL NIL))\r\na OK FETCH completed\r\n')
    assert client.ctx.selected is not None
    assert client.ctx.selected.cache.full_reads == 0
    assert client.ctx.selected.cache.reads == 1


def test_bodystructure_and_parts(client: Client) -> None:
    out = client(b"a FETCH 3 (BODYSTRUCTURE BODY.PEEK[2] BODY.PEEK[1.MIME] BODY.PEEK[5])")
    assert out == (
        b'* 3 FETCH (BODYSTRUCTURE (("text" "plain" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 8 0 '
        b'NIL NIL NIL NIL)("text" "html" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 0 NIL NIL '
        b'NIL NIL) "mixed" ("boundary" "b1") NIL NIL NIL) BODY[2] {10}\r\n<p>two</p> '
        b'BODY[1.MIME] {28}\r\nContent-Type: text/plain\r\n\r\n BODY[5] NIL)\r\n'
        b'a OK FETCH completed\r\n')


def test_uid_fetch_adds_uid_and_skips_missing_uids(client: Client) -> None:
    assert client(b"a UID FETCH 2:9 FLAGS") == (b"* 2 FETCH (UID 2 FLAGS ())\r\n"
                                                b"* 3 FETCH (UID 3 FLAGS ())\r\n"
                                                b"a OK FETCH completed\r\n")
    assert client(b"b UID FETCH 7 FLAGS") == b"b OK FETCH completed\r\n"


def test_fetch_beyond_the_mailbox_is_bad(client: Client) -> None:
    assert client(b"a FETCH 4 FLAGS") == b"a BAD Invalid message sequence number\r\n"
    assert client(b"c FETCH 1,2:4 FLAGS") == b"c BAD Invalid message sequence number\r\n"
    # RFC 3501 §6.4.8: "n:*" reaches the last message even when n is past it.
    assert client(b"d FETCH 7:* UID") == b"* 3 FETCH (UID 3)\r\nd OK FETCH completed\r\n"
    assert client(b"b UID FETCH $ FLAGS") == \
        b"b BAD $ needs SEARCHRES, which is not supported\r\n"


def test_fetch_modseq_enables_condstore(client: Client) -> None:
    out = client(b"a FETCH 1 (MODSEQ)")
    assert out.startswith(b"* OK [HIGHESTMODSEQ ")
    assert b"* 1 FETCH (MODSEQ (" in out and client.ctx.condstore
    modseq = client.folder.messages()[0].modseq
    client(b"b STORE 2 +FLAGS.SILENT (\\Flagged)")
    assert client(b"c FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % modseq) == \
        b"* 2 FETCH (FLAGS (\\Flagged) MODSEQ (%d))\r\nc OK FETCH completed\r\n" % \
        client.folder.messages()[1].modseq


# ---- STORE ------------------------------------------------------------------------------


def test_store_add_remove_replace(client: Client) -> None:
    assert client(b"a STORE 1:2 +FLAGS (\\Flagged $Label)") == (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label)\r\n"
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label \\*)] "
        b"Flags permitted\r\n"
        b"* 1 FETCH (FLAGS (\\Flagged $Label))\r\n* 2 FETCH (FLAGS (\\Flagged $Label))\r\n"
        b"a OK STORE completed\r\n")
    assert client(b"b STORE 1 -FLAGS (\\Flagged)") == \
        b"* 1 FETCH (FLAGS ($Label))\r\nb OK STORE completed\r\n"
    assert client(b"c UID STORE 2 FLAGS (\\Seen)") == \
        b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\nc OK STORE completed\r\n"
    assert client(b"d STORE 3 +FLAGS.SILENT (\\Answered)") == b"d OK STORE completed\r\n"
    assert [sorted(m.flags) for m in client.folder.messages()] == \
        [["$Label"], ["\\Seen"], ["\\Answered"]]


def test_store_unchangedsince_reports_modified(client: Client) -> None:
    client(b"a STORE 2 +FLAGS.SILENT (\\Seen)")
    before = client.folder.messages()[0].modseq
    out = client(b"b STORE 1:2 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % before)
    assert out.endswith(b"b OK [MODIFIED 2] Conditional STORE failed\r\n")
    assert "\\Flagged" in client.folder.messages()[0].flags
    assert "\\Flagged" not in client.folder.messages()[1].flags


# ---- EXPUNGE / COPY / MOVE --------------------------------------------------------------


def test_expunge_renumbers_as_it_goes(store: MailStore, deliver) -> None:  # type: ignore[no-untyped-def]
    for i in range(5):
        deliver(b"Subject: %d\r\n\r\nx\r\n" % i)
    c = Client(store)
    c(b"a SELECT INBOX")
    c(b"b STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    assert c(b"c EXPUNGE") == b"* 2 EXPUNGE\r\n* 3 EXPUNGE\r\nc OK EXPUNGE completed\r\n"
    assert c(b"d FETCH 1:* UID") == (b"* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 3)\r\n"
                                     b"* 3 FETCH (UID 5)\r\nd OK FETCH completed\r\n")


def test_uid_expunge_only_touches_its_set(client: Client) -> None:
    client(b"a STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    assert client(b"b UID EXPUNGE 2:3") == \
        b"* 2 EXPUNGE\r\n* 2 EXPUNGE\r\nb OK EXPUNGE completed\r\n"
    assert [m.uid for m in client.folder.messages()] == [1]


def test_copy_answers_copyuid(client: Client) -> None:
    trash = client.ctx.account.folder("Trash")
    out = client(b"a COPY 2:3 Trash")
    assert out == b"a OK [COPYUID %d 2:3 1:2] COPY completed\r\n" % trash.uidvalidity
    assert client(b"b COPY 1 Nowhere") == b"b NO [TRYCREATE] Mailbox does not exist\r\n"
    trash.sync()
    assert [client.ctx.account.folder("Trash").status()["MESSAGES"]] == [2]


def test_move_reports_copyuid_then_expunges(client: Client) -> None:
    junk = client.ctx.account.folder("Junk")
    out = client(b"a UID MOVE 1,3 Junk")
    assert out == (b"* OK [COPYUID %d 1,3 1:2] Moved\r\n* 1 EXPUNGE\r\n* 2 EXPUNGE\r\n"
                   b"a OK MOVE completed\r\n" % junk.uidvalidity)
    assert [m.uid for m in client.folder.messages()] == [2]


def test_close_expunges_silently_and_unselect_does_not(client: Client) -> None:
    client(b"a STORE 1 +FLAGS.SILENT (\\Deleted)")
    folder = client.folder
    assert client(b"b UNSELECT") == b"b OK UNSELECT completed\r\n"
    client(b"c SELECT INBOX")
    assert client(b"d CLOSE") == b"d OK CLOSE completed\r\n"
    folder.sync()
    assert [m.uid for m in folder.messages()] == [2, 3]


# ---- SEARCH -----------------------------------------------------------------------------


def test_search_keys(client: Client) -> None:
    client(b"a STORE 2 +FLAGS.SILENT (\\Seen)")
    assert client(b"b SEARCH UNSEEN") == b"* SEARCH 1 3\r\nb OK SEARCH completed\r\n"
    assert client(b"c SEARCH SUBJECT apples") == b"* SEARCH 2\r\nc OK SEARCH completed\r\n"
    assert client(b"d SEARCH OR FROM dave BODY first") == \
        b"* SEARCH 1 3\r\nd OK SEARCH completed\r\n"
    assert client(b"e UID SEARCH 2:* NOT SEEN") == b"* SEARCH 3\r\ne OK SEARCH completed\r\n"
    assert client(b"f SEARCH TEXT nothing-like-this") == b"* SEARCH\r\nf OK SEARCH completed\r\n"
    assert client(b"g SEARCH SENTON 7-Feb-1994") == b"* SEARCH 1\r\ng OK SEARCH completed\r\n"


def test_esearch_and_modseq(client: Client) -> None:
    assert client(b"a SEARCH RETURN (MIN MAX COUNT) ALL") == \
        b'* ESEARCH (TAG "a") MIN 1 MAX 3 COUNT 3\r\na OK SEARCH completed\r\n'
    assert client(b"b UID SEARCH RETURN () 2:3") == \
        b'* ESEARCH (TAG "b") UID ALL 2:3\r\nb OK SEARCH completed\r\n'
    client(b"c STORE 3 +FLAGS.SILENT (\\Flagged)")
    modseq = client.folder.messages()[2].modseq
    out = client(b"d SEARCH MODSEQ %d" % modseq)
    assert out.endswith(b"* SEARCH 3 (MODSEQ %d)\r\nd OK SEARCH completed\r\n" % modseq)


def test_search_parses_each_message_once(client: Client) -> None:
    selected = client.ctx.selected
    assert selected is not None
    client(b"a SEARCH BODY body")
    client(b"b SEARCH SUBJECT o")
    client(b"c FETCH 1:* BODYSTRUCTURE")
    assert selected.cache.reads == 3


# ---- APPEND -----------------------------------------------------------------------------


def test_append_answers_appenduid_and_selected_mailbox_sees_exists(client: Client) -> None:
    out = client(b'a APPEND INBOX (\\Seen) " 1-Feb-2020 10:00:00 +0100" {12+}\r\nSubject: x\r\n')
    # RFC 3501 §6.3.11: the appended message is \Recent, here in the session selecting it.
    assert out == b"* 4 EXISTS\r\n* 1 RECENT\r\na OK [APPENDUID %d 4] APPEND completed\r\n" % \
        client.folder.uidvalidity
    assert client(b"b FETCH 4 (FLAGS INTERNALDATE)") == \
        b'* 4 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE " 1-Feb-2020 09:00:00 +0000")\r\n' \
        b"b OK FETCH completed\r\n"


def test_append_to_a_missing_mailbox_says_trycreate(client: Client) -> None:
    assert client(b"a APPEND Nope {3+}\r\nx\r\n") == \
        b"a NO [TRYCREATE] Mailbox does not exist\r\n"


# ---- mailbox management -------------------------------------------------------------------


def test_list_everything_with_special_use(client: Client) -> None:
    assert lines(client(b'a LIST "" "*"')) == [
        b'* LIST (\\HasNoChildren) "/" "INBOX"',
        b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"',
        b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
        b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
        b"a OK LIST completed",
    ]
    assert client(b'b LIST "" ""') == b'* LIST (\\Noselect) "/" ""\r\nb OK LIST completed\r\n'
    assert client(b'c LIST "" inbox') == \
        b'* LIST (\\HasNoChildren) "/" "INBOX"\r\nc OK LIST completed\r\n'


def test_create_rename_delete_with_hierarchy(client: Client) -> None:
    assert client(b"a CREATE Work/Projects/2024/") == b"a OK CREATE completed\r\n"
    assert lines(client(b'b LIST "" "Work*"')) == [
        b'* LIST (\\HasChildren) "/" "Work"',
        b'* LIST (\\HasChildren) "/" "Work/Projects"',
        b'* LIST (\\HasNoChildren) "/" "Work/Projects/2024"',
        b"b OK LIST completed",
    ]
    assert client(b'c LIST "Work/" "%"') == \
        b'* LIST (\\HasChildren) "/" "Work/Projects"\r\nc OK LIST completed\r\n'
    assert client(b"d CREATE Work") == b"d NO [ALREADYEXISTS] Mailbox already exists\r\n"
    assert client(b"e DELETE Work").startswith(b"e NO [HASCHILDREN]")
    assert client(b"f RENAME Work Play") == b"f OK RENAME completed\r\n"
    assert lines(client(b'g LIST "" "Play/%"')) == [
        b'* LIST (\\HasChildren) "/" "Play/Projects"', b"g OK LIST completed"]
    assert client(b"h DELETE Play/Projects/2024") == b"h OK DELETE completed\r\n"
    assert client(b"i DELETE Nope") == b"i NO [NONEXISTENT] Mailbox does not exist\r\n"
    assert client(b"j DELETE INBOX") == b"j NO [CANNOT] INBOX cannot be deleted\r\n"
    assert client(b"k RENAME Play Sent") == b"k NO [ALREADYEXISTS] Mailbox already exists\r\n"


def test_non_ascii_names_travel_as_modified_utf7(client: Client) -> None:
    assert client(b"a CREATE &ZeVnLIqe-") == b"a OK CREATE completed\r\n"
    assert client(b'b LIST "" "&ZeVnLIqe-"') == \
        b'* LIST (\\HasNoChildren) "/" "&ZeVnLIqe-"\r\nb OK LIST completed\r\n'


def test_deleting_the_selected_mailbox_deselects(client: Client) -> None:
    client(b"a CREATE Box")
    client(b"b SELECT Box")
    assert client(b"c DELETE Box") == b"* OK [CLOSED] Mailbox closed\r\nc OK DELETE completed\r\n"
    assert client.done.transition is Transition.UNSELECTED


def test_subscriptions_lsub_and_list_extended(client: Client) -> None:
    client(b"a CREATE Lists/rust")
    client(b"b SUBSCRIBE Lists/rust")
    client(b"c UNSUBSCRIBE Junk")
    client(b"d SUBSCRIBE Gone")
    assert lines(client(b'e LSUB "" "*"')) == [
        b'* LSUB () "/" "Drafts"', b'* LSUB (\\Noselect) "/" "Gone"', b'* LSUB () "/" "INBOX"',
        b'* LSUB () "/" "Lists/rust"', b'* LSUB () "/" "Sent"', b'* LSUB () "/" "Trash"',
        b"e OK LSUB completed"]
    # RFC 3501 §6.3.9: a pattern that stops above a subscribed name shows its superior.
    assert client(b'f LSUB "" "Lists"') == \
        b'* LSUB (\\Noselect) "/" "Lists"\r\nf OK LSUB completed\r\n'
    assert client(b'g LSUB "" "%"').count(b'(\\Noselect) "/" "Lists"') == 1
    out = client(b'h LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert b'* LIST (\\HasChildren) "/" "Lists" ("CHILDINFO" ("SUBSCRIBED"))\r\n' in out
    assert b'* LIST (\\NonExistent \\Subscribed) "/" "Gone"\r\n' in out
    assert b'"Junk"' not in out
    assert lines(client(b'i LIST (SPECIAL-USE) "" "*"')) == [
        b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"',
        b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
        b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"', b"i OK LIST completed"]
    assert client(b'j LIST "" "INBOX" RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN))') == (
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"\r\n'
        b'* STATUS "INBOX" (MESSAGES 3 UNSEEN 3)\r\nj OK LIST completed\r\n')


def test_status(client: Client) -> None:
    client(b"a STORE 1 +FLAGS.SILENT (\\Seen \\Deleted)")
    assert client(b"b STATUS INBOX (MESSAGES RECENT UIDNEXT UNSEEN DELETED)") == \
        b'* STATUS "INBOX" (MESSAGES 3 RECENT 0 UIDNEXT 4 UNSEEN 2 DELETED 1)\r\n' \
        b"b OK STATUS completed\r\n"
    assert client(b"c STATUS Nope (MESSAGES)") == \
        b"c NO [NONEXISTENT] Mailbox does not exist\r\n"


def test_enable_condstore(client: Client) -> None:
    out = client(b"a ENABLE CONDSTORE UTF8=ACCEPT")
    assert out.endswith(b"* ENABLED CONDSTORE\r\na OK ENABLE completed\r\n")
    assert client.ctx.condstore


# ---- \Recent (RFC 3501 §2.3.2, §6.3.1-2, §7.3.2) -----------------------------------------


@pytest.fixture
def fresh(store: MailStore, deliver) -> Client:  # type: ignore[no-untyped-def]
    """Three messages just delivered, no session has selected INBOX yet."""
    for body in MSG:
        deliver(body)
    return Client(store)


def recent_line(out: bytes) -> bytes:
    return next(line for line in lines(out) if line.endswith(b" RECENT"))


def test_the_first_select_claims_new_mail_and_a_later_one_finds_none(
        store: MailStore, fresh: Client) -> None:
    assert recent_line(fresh(b"a SELECT INBOX")) == b"* 3 RECENT"
    assert fresh(b"b FETCH 1:3 FLAGS") == (
        b"* 1 FETCH (FLAGS (\\Recent))\r\n* 2 FETCH (FLAGS (\\Recent))\r\n"
        b"* 3 FETCH (FLAGS (\\Recent))\r\nb OK FETCH completed\r\n")
    later = Client(store)
    assert recent_line(later(b"a SELECT INBOX")) == b"* 0 RECENT"
    assert later(b"b FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS ())\r\nb OK FETCH completed\r\n"
    assert fresh(b"c FETCH 1 FLAGS") == \
        b"* 1 FETCH (FLAGS (\\Recent))\r\nc OK FETCH completed\r\n"


def test_recent_follows_the_system_flags_and_outlives_store(fresh: Client) -> None:
    fresh(b"a SELECT INBOX")
    assert fresh(b"b STORE 1 +FLAGS (\\Seen $Work)") == (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)\r\n"
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] "
        b"Flags permitted\r\n"
        b"* 1 FETCH (FLAGS (\\Seen \\Recent $Work))\r\nb OK STORE completed\r\n")
    # A client cannot set \Recent (the parser refuses it) nor clear it.
    assert fresh(b"c STORE 1 FLAGS ()") == \
        b"* 1 FETCH (FLAGS (\\Recent))\r\nc OK STORE completed\r\n"


def test_examine_counts_recent_without_claiming(store: MailStore, fresh: Client) -> None:
    assert recent_line(fresh(b"a EXAMINE INBOX")) == b"* 3 RECENT"
    assert fresh(b"b FETCH 2 FLAGS") == \
        b"* 2 FETCH (FLAGS (\\Recent))\r\nb OK FETCH completed\r\n"
    assert recent_line(Client(store)(b"a SELECT INBOX")) == b"* 3 RECENT"


def test_status_counts_recent_without_claiming(store: MailStore, fresh: Client) -> None:
    assert fresh(b"a STATUS INBOX (MESSAGES RECENT)") == \
        b'* STATUS "INBOX" (MESSAGES 3 RECENT 3)\r\na OK STATUS completed\r\n'
    assert fresh(b"b STATUS INBOX (RECENT)").startswith(b'* STATUS "INBOX" (RECENT 3)')
    assert recent_line(fresh(b"c SELECT INBOX")) == b"* 3 RECENT"
    assert Client(store)(b"d STATUS INBOX (RECENT)").startswith(b'* STATUS "INBOX" (RECENT 0)')


def test_search_recent_new_and_old(store: MailStore, fresh: Client, deliver) -> None:  # type: ignore[no-untyped-def]
    fresh(b"a SELECT INBOX")
    fresh(b"b STORE 2 +FLAGS.SILENT (\\Seen)")
    assert fresh(b"c SEARCH RECENT") == b"* SEARCH 1 2 3\r\nc OK SEARCH completed\r\n"
    assert fresh(b"d SEARCH NEW") == b"* SEARCH 1 3\r\nd OK SEARCH completed\r\n"
    assert fresh(b"e SEARCH OLD") == b"* SEARCH\r\ne OK SEARCH completed\r\n"
    later = Client(store)
    later(b"a SELECT INBOX")
    deliver(b"Subject: new\r\n\r\nnew\r\n")
    assert later(b"b SEARCH OLD") == \
        b"* SEARCH 1 2 3\r\n* 4 EXISTS\r\n* 1 RECENT\r\nb OK SEARCH completed\r\n"
    assert later(b"c UID SEARCH RECENT") == b"* SEARCH 4\r\nc OK SEARCH completed\r\n"
    assert later(b"d SEARCH NOT NEW") == b"* SEARCH 1 2 3\r\nd OK SEARCH completed\r\n"


def test_new_mail_while_selected_sends_exists_then_recent(store: MailStore, fresh: Client,
                                                         deliver) -> None:  # type: ignore[no-untyped-def]
    fresh(b"a SELECT INBOX")
    deliver(b"Subject: new\r\n\r\nnew\r\n")
    assert fresh(b"b NOOP") == b"* 4 EXISTS\r\n* 4 RECENT\r\nb OK NOOP completed\r\n"
    # Claimed by another session first: EXISTS, but the recent count has not changed.
    other = Client(store)
    other(b"o SELECT INBOX")
    deliver(b"Subject: newer\r\n\r\nnewer\r\n")
    assert other(b"o NOOP") == b"* 5 EXISTS\r\n* 1 RECENT\r\no OK NOOP completed\r\n"
    assert fresh(b"c NOOP") == b"* 5 EXISTS\r\nc OK NOOP completed\r\n"
    assert fresh(b"d FETCH 5 FLAGS") == b"* 5 FETCH (FLAGS ())\r\nd OK FETCH completed\r\n"


def test_recent_ends_with_the_selection(fresh: Client) -> None:
    fresh(b"a SELECT INBOX")
    fresh(b"b CLOSE")
    assert recent_line(fresh(b"c SELECT INBOX")) == b"* 0 RECENT"
    assert fresh(b"d SEARCH RECENT") == b"* SEARCH\r\nd OK SEARCH completed\r\n"


def test_copies_are_recent_for_the_next_session_to_select_the_target(
        store: MailStore, fresh: Client) -> None:
    fresh(b"a SELECT INBOX")
    fresh(b"b COPY 1:2 Trash")
    fresh(b"c APPEND Trash {1+}\r\nx")
    assert fresh(b"d STATUS Trash (RECENT)").startswith(b'* STATUS "Trash" (RECENT 3)')
    assert recent_line(Client(store)(b"e SELECT Trash")) == b"* 3 RECENT"


def test_copy_into_the_selected_mailbox_is_recent_here(store: MailStore,
                                                       client: Client) -> None:
    other = Client(store)
    other(b"o SELECT INBOX")
    out = client(b"a COPY 1 INBOX")
    assert out.startswith(b"* 4 EXISTS\r\n* 1 RECENT\r\na OK [COPYUID ")
    assert other(b"o NOOP") == b"* 4 EXISTS\r\no OK NOOP completed\r\n"
    assert client(b"b SEARCH RECENT") == b"* SEARCH 4\r\nb OK SEARCH completed\r\n"


def test_a_sync_that_must_claim_runs_inline_only_when_the_write_is_quick(
        store: MailStore, fresh: Client, deliver) -> None:  # type: ignore[no-untyped-def]
    index = fresh.ctx.account.index
    fresh(b"a STATUS INBOX (MESSAGES)")  # the index is current: no scan left
    index._clear_marker()  # all flushed: the next commit would first write the marker
    assert not inline(fresh, b"a SELECT INBOX")  # 3 to claim
    assert inline(fresh, b"a EXAMINE INBOX")  # looks only
    fresh(b"b SELECT INBOX")
    assert inline(fresh, b"a NOOP")  # nothing left to claim
    deliver(b"Subject: new\r\n\r\nnew\r\n")
    Client(store)(b"c STATUS INBOX (MESSAGES)")  # scanned: only the claim is left
    index._clear_marker()
    assert not inline(fresh, b"a NOOP") and not inline(fresh, b"a FETCH 1 FLAGS")
    if index_module.boot_id() is not None:
        index._mark_unsynced()  # as after a commit not flushed: claiming costs no flush
        assert inline(fresh, b"a NOOP")
        assert fresh(b"e NOOP") == b"* 4 EXISTS\r\n* 4 RECENT\r\ne OK NOOP completed\r\n"


# ---- two sessions on one mailbox ----------------------------------------------------------


def test_other_sessions_changes_arrive_where_allowed(store: MailStore, client: Client,
                                                     deliver) -> None:  # type: ignore[no-untyped-def]
    other = Client(store)
    other(b"o1 SELECT INBOX")
    other(b"o2 STORE 1 +FLAGS.SILENT (\\Deleted \\Flagged)")
    assert client(b"a NOOP") == \
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Deleted))\r\na OK NOOP completed\r\n"
    other(b"o3 EXPUNGE")
    deliver(b"Subject: new\r\n\r\nnew\r\n")
    # RFC 3501 §7.4.1: no EXPUNGE during FETCH; the numbering holds, the new mail shows.
    assert client(b"b FETCH 1 UID") == \
        b"* 1 FETCH (UID 1)\r\n* 4 EXISTS\r\n* 1 RECENT\r\nb OK FETCH completed\r\n"
    assert client(b"c FETCH 1 BODY.PEEK[]") == \
        b"c NO [EXPUNGEISSUED] Some messages were expunged\r\n"
    assert client(b"d SEARCH ALL") == b"* SEARCH 1 2 3 4\r\nd OK SEARCH completed\r\n"
    assert client(b"e NOOP") == b"* 1 EXPUNGE\r\ne OK NOOP completed\r\n"
    assert client(b"f UID SEARCH ALL") == b"* SEARCH 2 3 4\r\nf OK SEARCH completed\r\n"


def test_own_store_and_expunge_keep_the_numbering_while_expunges_wait(
        store: MailStore, client: Client) -> None:
    other = Client(store)
    other(b"o1 SELECT INBOX")
    other(b"o2 STORE 1 +FLAGS.SILENT (\\Deleted)")
    other(b"o3 EXPUNGE")
    assert client(b"a FETCH 2 UID") == b"* 2 FETCH (UID 2)\r\na OK FETCH completed\r\n"
    assert client(b"b STORE 3 +FLAGS (\\Deleted)") == \
        b"* 3 FETCH (FLAGS (\\Deleted))\r\nb OK STORE completed\r\n"
    assert client(b"c EXPUNGE") == \
        b"* 3 EXPUNGE\r\n* 1 EXPUNGE\r\nc OK EXPUNGE completed\r\n"
    assert client(b"d FETCH 1:* UID") == b"* 1 FETCH (UID 2)\r\nd OK FETCH completed\r\n"
    other(b"o4 STORE 1 +FLAGS.SILENT (\\Flagged)")
    assert client(b"e NOOP") == \
        b"* 1 FETCH (UID 2 FLAGS (\\Flagged))\r\ne OK NOOP completed\r\n"


def test_a_second_session_reads_no_file_for_headers_or_search(
        store: MailStore, client: Client) -> None:
    fetch = b"FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)] ENVELOPE)"
    first = client(b"a " + fetch)
    assert client(b"b UID SEARCH FROM carol") == b"* SEARCH 2\r\nb OK SEARCH completed\r\n"
    assert client.ctx.selected is not None and client.ctx.selected.cache.reads == 3
    other = Client(store)
    other(b"o1 SELECT INBOX")
    assert other(b"a " + fetch) == first
    assert other(b"b UID SEARCH SUBJECT APPLE") == b"* SEARCH 2\r\nb OK SEARCH completed\r\n"
    assert other.ctx.selected is not None and other.ctx.selected.cache.reads == 0


def test_another_process_takes_headers_from_the_index(store: MailStore, client: Client,
                                                      tmp_path: Path) -> None:
    out = client(b"a FETCH 1:* ENVELOPE")
    second = MailStore(tmp_path / "mail")  # another worker: its own caches, same index
    try:
        c = Client(second)
        c(b"s SELECT INBOX")
        assert c(b"a FETCH 1:* ENVELOPE") == out
        assert c(b"b SEARCH FROM dave") == b"* SEARCH 3\r\nb OK SEARCH completed\r\n"
        assert c.ctx.selected is not None and c.ctx.selected.cache.reads == 0
    finally:
        second.close()


def inline(client: Client, line: bytes) -> bool:
    reader = CommandReader()
    reader.feed(line + b"\r\n")
    cmd = reader.next()
    assert isinstance(cmd, Command)
    return commands.inline(client.ctx, cmd)


def test_commands_answered_from_memory_may_run_inline(client: Client) -> None:
    assert inline(client, b"a NOOP") and inline(client, b"a SELECT INBOX")
    assert inline(client, b"a FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)")
    assert inline(client, b"a SEARCH UNSEEN SINCE 1-Jan-2000 UID 1:*")
    # Headers and bodies only once they are in memory; never a FETCH that sets \Seen.
    assert not inline(client, b"a FETCH 1:* ENVELOPE")
    assert not inline(client, b"a SEARCH FROM alice")
    assert not inline(client, b"a FETCH 2 BODY.PEEK[]")
    client(b"b FETCH 1:* ENVELOPE")
    client(b"c FETCH 2 BODY.PEEK[]")
    client(b"d SEARCH FROM alice")
    assert inline(client, b"a FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert inline(client, b"a FETCH 2 (BODY.PEEK[] BODYSTRUCTURE)")
    assert inline(client, b"a SEARCH OR FROM alice SUBJECT apples")
    assert not inline(client, b"a FETCH 2 BODY[]")
    assert not inline(client, b"a FETCH 1:3 BODY.PEEK[]")  # 1 and 3 were never read
    assert not inline(client, b"a SEARCH BODY apples")
    assert not inline(client, b"a SEARCH HEADER X-Mailer x")
    # Writes: system flags only, and only when nothing would be flushed for them.
    assert not inline(client, b"a STORE 1 +FLAGS ($Work)")
    assert not inline(client, b"a STORE 1 FLAGS (\\Seen)")  # may drop keywords
    assert not inline(client, b"a EXPUNGE") and not inline(client, b"a COPY 1 Trash")
    if index_module.boot_id() is not None:
        client(b"e STORE 1 +FLAGS (\\Seen)")  # a commit not flushed: the marker is there
        assert inline(client, b"a STORE 1 -FLAGS (\\Seen \\Flagged)")


def test_a_directory_changed_on_disk_sends_commands_to_a_thread(client: Client,
                                                                deliver) -> None:  # type: ignore[no-untyped-def]
    deliver(b"Subject: new\r\n\r\nnew\r\n")  # the next sync scans: not on the event loop
    assert not inline(client, b"a NOOP") and not inline(client, b"a FETCH 1 UID")
    assert client(b"b NOOP") == b"* 4 EXISTS\r\n* 1 RECENT\r\nb OK NOOP completed\r\n"


def test_idle_poll_reports_new_mail(client: Client, deliver) -> None:  # type: ignore[no-untyped-def]
    deliver(b"Subject: new\r\n\r\nnew\r\n")
    out: list[bytes] = []

    class Sink:
        def write(self, data: bytes) -> None:
            out.append(data)

    assert commands.poll(client.ctx, Sink()) is None
    assert out == [b"* 4 EXISTS\r\n", b"* 1 RECENT\r\n"]


def test_selected_mailbox_deleted_elsewhere_ends_the_session(store: MailStore,
                                                             client: Client) -> None:
    client(b"a CREATE Box")
    client(b"b SELECT Box")
    Client(store)(b"x DELETE Box")
    assert client(b"c NOOP") == (b"* BYE Selected mailbox was deleted or renamed\r\n"
                                 b"c NO [NONEXISTENT] Selected mailbox no longer exists\r\n")
    assert client.done.transition is Transition.LOGOUT


def test_fetch_of_many_headers_reads_each_file_once(store: MailStore, tmp_path: Path) -> None:
    new = store.account(ADDRESS).path / "new"
    for i in range(1000):  # written straight into new/ (no fsync): only FETCH is measured
        (new / f"{1_700_000_000 + i}.M{i}P1.test").write_bytes(
            b"Subject: message %d\r\nFrom: a@b.c\r\n\r\n" % i + b"body line\r\n" * 50)
    c = Client(store)
    c(b"a SELECT INBOX")
    selected = c.ctx.selected
    assert selected is not None
    out = c(b"b FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)")
    assert out.count(b" FETCH (") == 1000 and selected.cache.reads == 0
    out = c(b"c FETCH 1:* (ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")
    assert out.count(b"Subject: message") == 1000 and selected.cache.reads == 1000
    c(b"d FETCH 1:* BODY.PEEK[HEADER]")
    assert selected.cache.reads == 1000


def test_a_message_bigger_than_the_cache_is_read_once_per_fetch(client: Client) -> None:
    selected = client.ctx.selected
    assert selected is not None
    selected.cache.max_bytes = 10
    client(b"a FETCH 3 (BODYSTRUCTURE BODY.PEEK[1] BODY.PEEK[2] RFC822.SIZE)")
    assert selected.cache.reads == 1


def test_star_in_an_empty_mailbox_means_no_messages(store: MailStore) -> None:
    c = Client(store)
    c(b"a SELECT Trash")
    assert c(b"b FETCH 1:* FLAGS") == b"b OK FETCH completed\r\n"
    assert c(b"c UID FETCH 1:* FLAGS") == b"c OK FETCH completed\r\n"
    assert c(b"d FETCH 1 FLAGS") == b"d BAD Invalid message sequence number\r\n"
