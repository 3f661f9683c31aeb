"""IMAP command reader: bytes in, typed commands out (RFC 3501 §9 formal syntax).

`CommandReader` is fed raw octets and yields one result at a time: a `Command`, a
`NeedLiteral` (a synchronizing literal was announced: the session answers "+" via
accept_literal() or refuses it via reject_literal()), a `ParseError` (answer it and carry on,
unless it is `fatal`), or None (need more octets). It never raises for anything the peer sends.

Theory of operation. A command is a sequence of lines; a line ending in a literal announcement
("{n}", "{n+}" RFC 7888, "~{n}" RFC 3516) is followed by exactly n octets and then more of the
same command. The reader splits the stream into text segments and literal payloads and, when the
last line arrives, hands them to a recursive-descent parser over that sequence, so a literal may
stand wherever the grammar allows a string. Memory is bounded: an unterminated line longer than
`max_command` is fatal (the stream cannot be resynchronised without it); a command's text plus
literals over `max_command` (or an APPEND's literals over `max_append`) is refused. Refusing a
synchronizing literal costs nothing (no "+" is sent, the client never sends the octets); a
refused non-synchronizing literal is counted away without being buffered, and the rest of that
command is discarded. What would break it: buffering a literal before deciding its fate, or
parsing before the command's last line.

Imports: stdlib only, and relay.mda.imap.utf7. No I/O, no clock.
"""

from __future__ import annotations

import codecs
import datetime as dt
import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from relay.mda.imap import utf7

# ---- limits ---------------------------------------------------------------------------------

MAX_COMMAND = 64 * 1024  # text of one command (+ its literals, except APPEND's)
MAX_APPEND = 64 * 1024 * 1024  # literal octets of one APPEND (MULTIAPPEND: all messages)
LITERAL_MINUS_MAX = 4096  # RFC 7888 §4: LITERAL- allows non-synchronizing literals up to this
MAX_NUMBER = 4294967295  # RFC 3501 §9 number / nz-number: unsigned 32-bit
MAX_MODSEQ = 9223372036854775807  # RFC 7162 §7 mod-sequence-value: 63 bits
MAX_SEARCH_DEPTH = 64  # nesting of (), NOT and OR in one SEARCH
MAX_ID_PAIRS = 30  # RFC 2971 §3.3


# ---- results --------------------------------------------------------------------------------


class ErrorKind(enum.Enum):
    """Why a command could not be parsed; the session maps each to its reply."""

    SYNTAX = "syntax"  # BAD
    UNKNOWN_COMMAND = "unknown command"  # BAD
    TOO_BIG = "too big"  # NO [TOOBIG] for APPEND, BAD [TOOBIG] otherwise (RFC 7888 §4)
    LINE_TOO_LONG = "line too long"  # fatal: "* BAD" / "* BYE" and close
    BAD_CHARSET = "bad charset"  # NO [BADCHARSET (...)] (RFC 3501 §6.4.4)
    BAD_MAILBOX_NAME = "bad mailbox name"  # NO: not valid modified UTF-7 (RFC 3501 §5.1.3)


@dataclass(frozen=True, slots=True)
class ParseError:
    """A command the reader could not accept.

    Answer "<tag> <status> [<code>] <text>" (or "* BAD" when `tag` is None). When `fatal`, the
    stream cannot be resynchronised: answer, then close the connection (the reader stays dead).
    """

    tag: str | None
    kind: ErrorKind
    text: str
    status: str = "BAD"  # "BAD" or "NO"
    code: str | None = None  # response code without brackets, e.g. "TOOBIG"
    fatal: bool = False
    command: str | None = None  # the command name when it could be read


@dataclass(frozen=True, slots=True)
class NeedLiteral:
    """A synchronizing literal of `size` octets was announced (RFC 3501 §7.5): the session
    sends "+ Ready" and calls accept_literal(), or answers the tag and calls reject_literal()."""

    tag: str
    size: int
    command: str


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command. `name` is upper case; `uid` marks "UID FETCH" etc.; `args` is the
    typed argument object for `name` (see COMMAND_ARGS), None for commands without arguments.
    The IDLE terminator arrives as Command(tag="", name="DONE")."""

    tag: str
    name: str
    uid: bool = False
    args: object = None


class ReaderStateError(RuntimeError):
    """The glue called the reader out of turn (a bug in the caller, not the peer)."""


# ---- argument values ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """RFC 3501 §9 sequence-set, kept as ranges so "1:4294967295" costs two ints.

    Each range is (first, last) as written, None standing for "*" (the largest number in use).
    `saved` is the RFC 5182 "$" (the saved search result, which the session substitutes).
    """

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False

    def _bounds(self, largest: int) -> Iterator[tuple[int, int]]:
        for a, b in self.ranges:
            lo, hi = largest if a is None else a, largest if b is None else b
            yield (lo, hi) if lo <= hi else (hi, lo)

    def contains(self, n: int, largest: int) -> bool:
        """Whether `n` is in the set when "*" means `largest`."""
        return any(lo <= n <= hi for lo, hi in self._bounds(largest))

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Sorted, merged, inclusive ranges within 1..largest (RFC 3501 §6.4.8: "559:*"
        includes the largest value even when 559 is above it)."""
        out: list[tuple[int, int]] = []
        for lo, hi in sorted(self._bounds(largest)):
            lo, hi = max(lo, 1), min(hi, largest)
            if lo > hi:
                continue
            if out and lo <= out[-1][1] + 1:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        return out

    def values(self, largest: int) -> Iterator[int]:
        """Every member in ascending order (lazily: iterate, do not list, huge sets)."""
        for lo, hi in self.resolve(largest):
            yield from range(lo, hi + 1)

    def max_explicit(self) -> int:
        """The largest number written (not "*"), 0 if none: lets the session reject message
        numbers beyond the mailbox (RFC 3501 §9 seq-number)."""
        return max((x for r in self.ranges for x in r if x is not None), default=0)

    def __str__(self) -> str:
        if self.saved:
            return "$"

        def one(x: int | None) -> str:
            return "*" if x is None else str(x)

        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


@dataclass(frozen=True, slots=True)
class Section:
    """RFC 3501 §6.4.5 section-spec: part numbers, then HEADER, HEADER.FIELDS,
    HEADER.FIELDS.NOT, TEXT or MIME (or nothing), and the field names of the FIELDS forms."""

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        pieces = [str(n) for n in self.part]
        if self.text:
            pieces.append(self.text)
        out = ".".join(pieces)
        if self.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            out += " (" + " ".join(_quote_if_needed(f) for f in self.fields) + ")"
        return out


@dataclass(frozen=True, slots=True)
class FetchItem:
    """One fetch-att (RFC 3501 §6.4.5; BINARY RFC 3516; MODSEQ RFC 7162).

    name: ENVELOPE, FLAGS, INTERNALDATE, RFC822, RFC822.HEADER, RFC822.SIZE, RFC822.TEXT,
    BODY (section None: the non-extensible structure; else BODY[section]), BODYSTRUCTURE, UID,
    MODSEQ, BINARY, BINARY.SIZE. `peek` is BODY.PEEK / BINARY.PEEK (do not set \\Seen).
    `partial` is (origin, length).
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    def response_key(self) -> str:
        """The item's name in the FETCH response: "BODY[1.MIME]<0>" (RFC 3501 §7.4.2)."""
        if self.section is None:
            return self.name
        key = f"{self.name}[{self.section}]"
        return key if self.partial is None else f"{key}<{self.partial[0]}>"


@dataclass(frozen=True, slots=True)
class SearchKey:
    """A node of a SEARCH program (RFC 3501 §6.4.4, RFC 7162 §3.1.5, RFC 5032).

    name / args:
      AND (k1, k2, ...) -- a parenthesised list or the top level; OR (k1, k2); NOT (k,)
      ALL ANSWERED DELETED DRAFT FLAGGED NEW OLD RECENT SEEN UNANSWERED UNDELETED UNDRAFT
      UNFLAGGED UNSEEN -- ()
      BCC BODY CC FROM SUBJECT TEXT TO -- (str,);  HEADER -- (field name, str)
      KEYWORD UNKEYWORD -- (keyword,)
      BEFORE ON SINCE SENTBEFORE SENTON SENTSINCE -- (datetime.date,)
      LARGER SMALLER -- (octets,);  OLDER YOUNGER -- (seconds,)
      SEQ UID -- (SequenceSet,);  MODSEQ -- (value, entry name or None, entry type or None)
    """

    name: str
    args: tuple[object, ...] = ()


# Arguments per command (Command.args):


@dataclass(frozen=True, slots=True)
class Login:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    mechanism: str  # upper case
    initial_response: bytes | None = None  # RFC 4959 SASL-IR, as sent (base64, or b"=")


@dataclass(frozen=True, slots=True)
class Select:  # SELECT, EXAMINE
    mailbox: str
    condstore: bool = False  # RFC 7162 §3.1.8


@dataclass(frozen=True, slots=True)
class MailboxName:  # DELETE, SUBSCRIBE, UNSUBSCRIBE, GETQUOTAROOT
    mailbox: str


@dataclass(frozen=True, slots=True)
class Create:
    mailbox: str
    special_use: tuple[str, ...] = ()  # RFC 6154 §3 CREATE ... (USE (\Drafts))


@dataclass(frozen=True, slots=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Status:
    mailbox: str
    items: tuple[str, ...]  # upper case, each in STATUS_ITEMS


@dataclass(frozen=True, slots=True)
class ListQuery:  # LIST (RFC 3501 §6.3.8, RFC 5258 LIST-EXTENDED), LSUB
    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()  # e.g. ("SUBSCRIBED", "SPECIAL-USE"), upper case
    return_options: tuple[str, ...] = ()  # e.g. ("CHILDREN", "SPECIAL-USE", "STATUS")
    status_items: tuple[str, ...] = ()  # RFC 5819 RETURN (STATUS (...))


@dataclass(frozen=True, slots=True)
class AppendMessage:
    flags: tuple[str, ...]
    internaldate: dt.datetime | None  # timezone-aware
    data: bytes
    binary: bool = False  # sent as literal8 (RFC 3516 §4.4)


@dataclass(frozen=True, slots=True)
class Append:
    mailbox: str
    messages: tuple[AppendMessage, ...]  # more than one: RFC 3502 MULTIAPPEND


@dataclass(frozen=True, slots=True)
class Fetch:
    sequence: SequenceSet
    items: tuple[FetchItem, ...]  # macros ALL / FAST / FULL already expanded
    changedsince: int | None = None  # RFC 7162 §3.1.4 (implies MODSEQ in the response)
    vanished: bool = False  # RFC 7162 §3.2.6 (UID FETCH only)


class StoreMode(enum.Enum):
    REPLACE = "FLAGS"
    ADD = "+FLAGS"
    REMOVE = "-FLAGS"


@dataclass(frozen=True, slots=True)
class Store:
    sequence: SequenceSet
    mode: StoreMode
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None  # RFC 7162 §3.1.3


@dataclass(frozen=True, slots=True)
class Copy:  # COPY, MOVE (RFC 6851)
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Search:
    key: SearchKey
    charset: str | None = None  # as given; strings in `key` are already decoded with it
    return_options: tuple[str, ...] | None = None  # RFC 4731 ESEARCH RETURN (...)


@dataclass(frozen=True, slots=True)
class Expunge:
    sequence: SequenceSet | None = None  # UID EXPUNGE (RFC 4315 §2.1)


@dataclass(frozen=True, slots=True)
class Id:
    params: tuple[tuple[str, str | None], ...] | None  # RFC 2971; None for NIL


@dataclass(frozen=True, slots=True)
class Enable:
    capabilities: tuple[str, ...]  # upper case (RFC 5161)


@dataclass(frozen=True, slots=True)
class QuotaRoot:  # GETQUOTA (RFC 9208)
    root: str


SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
STATUS_ITEMS = frozenset({"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",
                          "HIGHESTMODSEQ", "SIZE", "DELETED", "APPENDLIMIT"})
NO_ARGUMENT_COMMANDS = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK",
                                  "CLOSE", "UNSELECT", "NAMESPACE", "IDLE"})
UID_COMMANDS = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE"})


# ---- character classes (RFC 3501 §9) --------------------------------------------------------

# ATOM-CHAR: CHAR except atom-specials "(" ")" "{" SP CTL list-wildcards quoted-specials "]".
_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f-\xff%*"\\\]]+')
# ASTRING-CHAR adds "]"; 8-bit is tolerated here for UTF-8 names and passwords (RFC 9051).
_ASTRING = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\]+')
# list-char: ATOM-CHAR / list-wildcards / resp-specials.
_LIST_CHARS = re.compile(rb'[^(){ \x00-\x1f\x7f"\\]+')
_TAG = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\+]+')
# quoted: QUOTED-CHAR is TEXT-CHAR minus quoted-specials, or "\" quoted-special; UTF-8 allowed
# (RFC 9051 utf8-quoted).
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_UNESCAPE = re.compile(rb'\\(["\\])')
_DIGITS = re.compile(rb"[0-9]+")
_SEQ_NUMBER = re.compile(rb"[0-9]+|\*")
_FETCH_WORD = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_TEXT = re.compile(rb"[A-Za-z.]+")
_STORE_ITEM = re.compile(rb"[+-]?[A-Za-z.]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}|=")
# RFC 5322 §3.6.8 ftext: printable US-ASCII except ":".
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_HEAD = re.compile(rb'([^(){ \x00-\x1f\x7f%*"\\+]+)(?: ([A-Za-z]+)(?: ([A-Za-z]+))?)?')
_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
# RFC 3501 §9 date-time (date-day-fixed tolerated without its leading space).
_DATE_TIME = re.compile(rb" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):"
                        rb"([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})")
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")


def _quote_if_needed(text: str) -> str:
    if text and _ATOM.fullmatch(text.encode("latin-1", "replace")):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- the grammar ----------------------------------------------------------------------------


class _Fail(Exception):
    """Raised inside the grammar; CommandReader turns it into a ParseError (the single
    conversion site)."""

    def __init__(self, text: str, kind: ErrorKind = ErrorKind.SYNTAX, status: str = "BAD",
                 code: str | None = None) -> None:
        super().__init__(text)
        self.text, self.kind, self.status, self.code = text, kind, status, code


class _Cursor:
    """Position in a command made of text segments with a literal after every segment but
    the last: segs[0] lits[0] segs[1] lits[1] ... segs[-1]."""

    __slots__ = ("segs", "lits", "i", "pos", "seg")

    def __init__(self, segs: list[bytes], lits: list[tuple[bytes, bool]]) -> None:
        self.segs, self.lits = segs, lits
        self.i, self.pos, self.seg = 0, 0, segs[0]

    def peek(self) -> int:
        return self.seg[self.pos] if self.pos < len(self.seg) else -1

    def at_literal(self) -> bool:
        return self.pos == len(self.seg) and self.i < len(self.lits)

    def literal(self) -> tuple[bytes, bool]:
        lit = self.lits[self.i]
        self.i += 1
        self.seg, self.pos = self.segs[self.i], 0
        return lit

    def at_end(self) -> bool:
        return self.pos == len(self.seg) and self.i == len(self.lits)

    def expect(self, token: bytes, what: str | None = None) -> None:
        if not self.seg.startswith(token, self.pos):
            raise _Fail(f"expected {what or token.decode()!r}")
        self.pos += len(token)

    def sp(self) -> None:
        self.expect(b" ", "SP")

    def take(self, regex: re.Pattern[bytes], what: str) -> bytes:
        m = regex.match(self.seg, self.pos)
        if m is None:
            raise _Fail(f"expected {what}")
        self.pos = m.end()
        return m.group()

    def peek_word(self) -> str:
        m = _ATOM.match(self.seg, self.pos)
        return m.group().decode("ascii").upper() if m else ""


class _Grammar:
    """Recursive descent over one complete command (RFC 3501 §9)."""

    def __init__(self, segs: list[bytes], lits: list[tuple[bytes, bool]],
                 utf8_mailboxes: bool) -> None:
        self.c = _Cursor(segs, lits)
        self.utf8_names = utf8_mailboxes
        self.charset: str | None = None

    # -- tokens --

    def word(self, what: str = "atom") -> str:
        return self.c.take(_ATOM, what).decode("ascii").upper()

    def number(self, limit: int = MAX_NUMBER, nonzero: bool = False) -> int:
        digits = self.c.take(_DIGITS, "number")
        if len(digits) > len(str(limit)) or int(digits) > limit or (nonzero and
                                                                    not int(digits)):
            raise _Fail(f"number {digits[:24].decode()} out of range")
        return int(digits)

    def literal_or_quoted(self) -> bytes | None:
        c = self.c
        if c.at_literal():
            data, binary = c.literal()
            if binary:
                raise _Fail("literal8 is allowed only in APPEND")
            return data
        if c.peek() == 0x22:
            m = _QUOTED.match(c.seg, c.pos)
            if m is None:
                raise _Fail("bad quoted string")
            c.pos = m.end()
            return _UNESCAPE.sub(rb"\1", m.group(1))
        return None

    def string(self) -> bytes:
        value = self.literal_or_quoted()
        if value is None:
            raise _Fail("expected string")
        return value

    def astring(self, chars: re.Pattern[bytes] = _ASTRING) -> bytes:
        value = self.literal_or_quoted()
        return self.c.take(chars, "astring") if value is None else value

    def nstring(self) -> bytes | None:
        if self.c.peek_word() == "NIL":
            self.c.pos += 3
            return None
        return self.string()

    def utf8(self, data: bytes, what: str) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Fail(f"{what} is not valid UTF-8") from None

    def paren_list(self, item: Callable[[], object], allow_empty: bool = True) -> list:
        c = self.c
        c.expect(b"(")
        out = []
        if c.peek() != 0x29:
            out.append(item())
            while c.peek() == 0x20:
                c.sp()
                out.append(item())
        c.expect(b")")
        if not out and not allow_empty:
            raise _Fail("empty list")
        return out

    def mailbox_name(self, raw: bytes) -> str:
        """RFC 3501 §5.1.3 modified UTF-7 (UTF-8 once UTF8=ACCEPT is enabled, RFC 6855 §3);
        INBOX is case-insensitive (§5.1)."""
        if self.utf8_names:
            name = self.utf8(raw, "mailbox name")
        else:
            try:
                name = utf7.decode(raw)
            except ValueError as exc:
                raise _Fail(f"mailbox name is not valid modified UTF-7: {exc}",
                            ErrorKind.BAD_MAILBOX_NAME, "NO") from None
        return "INBOX" if name.upper() == "INBOX" else name

    def mailbox(self) -> str:
        return self.mailbox_name(self.astring())

    def list_mailbox(self) -> str:
        return self.mailbox_name(self.astring(_LIST_CHARS))

    def sequence_set(self) -> SequenceSet:
        c = self.c
        if c.peek() == 0x24:  # "$" RFC 5182 §2.1
            c.pos += 1
            return SequenceSet(saved=True)
        ranges: list[tuple[int | None, int | None]] = []
        while True:
            first = self.seq_number()
            last = first
            if c.peek() == 0x3A:
                c.pos += 1
                last = self.seq_number()
            ranges.append((first, last))
            if c.peek() != 0x2C:
                return SequenceSet(tuple(ranges))
            c.pos += 1

    def seq_number(self) -> int | None:
        if self.c.peek() == 0x2A:
            self.c.pos += 1
            return None
        return self.number(nonzero=True)

    def flag(self, allow_recent: bool = False) -> str:
        c = self.c
        if c.peek() == 0x5C:  # "\"
            c.pos += 1
            name = "\\" + c.take(_ATOM, "flag").decode("ascii")
            for system in SYSTEM_FLAGS:
                if name.lower() == system.lower():
                    name = system
            if name == "\\Recent" and not allow_recent:
                raise _Fail("\\Recent cannot be set by the client")  # RFC 3501 §2.3.2
            return name
        return c.take(_ATOM, "flag").decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        return tuple(self.paren_list(self.flag))

    def date_time(self) -> dt.datetime:
        m = _DATE_TIME.fullmatch(self.string())
        try:
            if m is None:
                raise ValueError
            day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
            zone = dt.timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == b"-" else 1)
            return dt.datetime(int(year), _MONTHS[mon.decode().upper()], int(day), int(hh),
                               int(mm), int(ss), tzinfo=dt.timezone(zone))
        except (ValueError, KeyError):
            raise _Fail("bad date-time") from None

    def date(self) -> dt.date:
        m = _DATE.fullmatch(self.astring())
        try:
            if m is None:
                raise ValueError
            day, mon, year = m.groups()
            return dt.date(int(year), _MONTHS[mon.decode().upper()], int(day))
        except (ValueError, KeyError):
            raise _Fail("bad date") from None

    def end(self) -> None:
        if not self.c.at_end():
            raise _Fail("unexpected text at end of command")

    # -- command -----------------------------------------------------------------------

    def command(self) -> Command:
        c = self.c
        tag = c.take(_TAG, "tag").decode("utf-8", "replace")
        c.sp()
        name = self.word("command")
        uid = False
        if name == "UID":
            c.sp()
            name, uid = self.word("command"), True
            if name not in UID_COMMANDS:
                raise _Fail(f"UID {name} is not a command", ErrorKind.UNKNOWN_COMMAND)
        if name in NO_ARGUMENT_COMMANDS or (name == "EXPUNGE" and not uid):
            args: object = None
        elif name in _COMMANDS:
            args = _COMMANDS[name](self, name, uid)
        else:
            raise _Fail("unknown command", ErrorKind.UNKNOWN_COMMAND)
        self.end()
        return Command(tag, name, uid, args)

    def login(self, name: str, uid: bool) -> Login:
        self.c.sp()
        user = self.utf8(self.astring(), "user name")
        self.c.sp()
        return Login(user, self.utf8(self.astring(), "password"))

    def authenticate(self, name: str, uid: bool) -> Authenticate:
        self.c.sp()
        mechanism = self.word("SASL mechanism")
        initial = None
        if self.c.peek() == 0x20:  # RFC 4959 §3
            self.c.sp()
            initial = self.c.take(_BASE64, "base64 initial response")
        return Authenticate(mechanism, initial)

    def select(self, name: str, uid: bool) -> Select:
        self.c.sp()
        mailbox = self.mailbox()
        condstore = False
        if self.c.peek() == 0x20:
            self.c.sp()
            for param in self.paren_list(self.word, allow_empty=False):
                if param != "CONDSTORE":
                    raise _Fail(f"unknown SELECT parameter {param}")
                condstore = True
        return Select(mailbox, condstore)

    def mailbox_only(self, name: str, uid: bool) -> MailboxName:
        self.c.sp()
        return MailboxName(self.mailbox())

    def create(self, name: str, uid: bool) -> Create:
        self.c.sp()
        mailbox = self.mailbox()
        use: tuple[str, ...] = ()
        if self.c.peek() == 0x20:
            self.c.sp()
            self.c.expect(b"(")
            if self.word("CREATE parameter") != "USE":
                raise _Fail("unknown CREATE parameter")
            self.c.sp()
            use = self.flag_list()
            self.c.expect(b")")
        return Create(mailbox, use)

    def rename(self, name: str, uid: bool) -> Rename:
        self.c.sp()
        old = self.mailbox()
        self.c.sp()
        return Rename(old, self.mailbox())

    def status_items(self) -> tuple[str, ...]:
        items = tuple(self.paren_list(self.word, allow_empty=False))
        for item in items:
            if item not in STATUS_ITEMS:
                raise _Fail(f"unknown STATUS item {item}")
        return items

    def status(self, name: str, uid: bool) -> Status:
        self.c.sp()
        mailbox = self.mailbox()
        self.c.sp()
        return Status(mailbox, self.status_items())

    def list_command(self, name: str, uid: bool) -> ListQuery:
        c = self.c
        c.sp()
        selection: tuple[str, ...] = ()
        if name == "LIST" and c.peek() == 0x28:  # RFC 5258 §6 list-select-opts
            selection = tuple(self.paren_list(self.word))
            c.sp()
        reference = self.mailbox()
        c.sp()
        if name == "LIST" and c.peek() == 0x28:
            patterns = tuple(self.paren_list(self.list_mailbox, allow_empty=False))
        else:
            patterns = (self.list_mailbox(),)
        options: list[str] = []
        status: tuple[str, ...] = ()
        if name == "LIST" and c.peek() == 0x20:
            c.sp()
            if self.word("RETURN") != "RETURN":
                raise _Fail("expected RETURN")
            c.sp()

            def option() -> str:
                nonlocal status
                word = self.word("return option")
                if word == "STATUS":  # RFC 5819 §2
                    c.sp()
                    status = self.status_items()
                return word

            options = self.paren_list(option)
        return ListQuery(reference, patterns, selection, tuple(options), status)

    def append(self, name: str, uid: bool) -> Append:
        c = self.c
        c.sp()
        mailbox = self.mailbox()
        messages = []
        while True:
            c.sp()
            flags: tuple[str, ...] = ()
            when = None
            if c.peek() == 0x28:
                flags = self.flag_list()
                c.sp()
            if c.peek() == 0x22:
                when = self.date_time()
                c.sp()
            if not c.at_literal():
                raise _Fail("expected message literal")
            data, binary = c.literal()
            messages.append(AppendMessage(flags, when, data, binary))
            if c.at_end():
                return Append(mailbox, tuple(messages))

    def section(self, binary: bool) -> Section:
        c = self.c
        c.expect(b"[")
        parts: list[int] = []
        text = None
        fields: tuple[str, ...] = ()
        while c.peek() != 0x5D:
            if 0x30 <= c.peek() <= 0x39:
                parts.append(self.number(nonzero=True))
                if c.peek() == 0x2E and not binary:
                    c.pos += 1
                    if c.peek() == 0x5D:
                        raise _Fail("section ends in '.'")
                    continue
                break
            text = c.take(_SECTION_TEXT, "section text").decode("ascii").upper()
            if binary or text not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT",
                                      "TEXT", "MIME") or (text == "MIME" and not parts):
                raise _Fail(f"bad section {text}")
            if text.startswith("HEADER.FIELDS"):
                c.sp()
                fields = tuple(self.paren_list(self.field_name, allow_empty=False))
            break
        c.expect(b"]")
        return Section(tuple(parts), text, fields)

    def field_name(self) -> str:
        name = self.astring().decode("latin-1")
        if not _FIELD_NAME.fullmatch(name):
            raise _Fail("bad header field name")
        return name

    def partial(self) -> tuple[int, int] | None:
        c = self.c
        if c.peek() != 0x3C:
            return None
        c.pos += 1
        origin = self.number()
        c.expect(b".")
        length = self.number(nonzero=True)
        c.expect(b">")
        return origin, length

    def fetch_att(self, macros: bool) -> list[FetchItem]:
        c = self.c
        word = c.take(_FETCH_WORD, "fetch attribute").decode("ascii").upper()
        if macros and word in _FETCH_MACROS:
            return [FetchItem(n) for n in _FETCH_MACROS[word]]
        if word in _FETCH_SIMPLE:
            return [FetchItem(word)]
        if word == "BODY" and c.peek() != 0x5B:
            return [FetchItem("BODY")]
        if word in ("BODY", "BODY.PEEK"):
            section = self.section(binary=False)
            return [FetchItem("BODY", section, self.partial(), word == "BODY.PEEK")]
        if word in ("BINARY", "BINARY.PEEK"):  # RFC 3516 §4.1
            section = self.section(binary=True)
            return [FetchItem("BINARY", section, self.partial(), word == "BINARY.PEEK")]
        if word == "BINARY.SIZE":
            return [FetchItem("BINARY.SIZE", self.section(binary=True))]
        raise _Fail(f"unknown fetch attribute {word}")

    def fetch(self, name: str, uid: bool) -> Fetch:
        c = self.c
        c.sp()
        sequence = self.sequence_set()
        c.sp()
        if c.peek() == 0x28:
            items = [i for group in self.paren_list(lambda: self.fetch_att(False),
                                                    allow_empty=False) for i in group]
        else:
            items = self.fetch_att(True)
        changedsince = None
        vanished = False

        def modifier() -> None:
            nonlocal changedsince, vanished
            word = self.word("FETCH modifier")
            if word == "CHANGEDSINCE":
                c.sp()
                changedsince = self.number(MAX_MODSEQ)
            elif word == "VANISHED" and uid:
                vanished = True
            else:
                raise _Fail(f"unknown FETCH modifier {word}")

        if c.peek() == 0x20:  # RFC 7162 §3.1.4.1 / RFC 4466 fetch-modifiers
            c.sp()
            self.paren_list(modifier, allow_empty=False)
        return Fetch(sequence, tuple(items), changedsince, vanished)

    def store(self, name: str, uid: bool) -> Store:
        c = self.c
        c.sp()
        sequence = self.sequence_set()
        c.sp()
        unchangedsince = None
        if c.peek() == 0x28:  # RFC 7162 §3.1.3
            c.expect(b"(")
            if self.word("STORE modifier") != "UNCHANGEDSINCE":
                raise _Fail("unknown STORE modifier")
            c.sp()
            unchangedsince = self.number(MAX_MODSEQ)
            c.expect(b")")
            c.sp()
        item = c.take(_STORE_ITEM, "store item").decode("ascii").upper()
        base, silent = (item[:-7], True) if item.endswith(".SILENT") else (item, False)
        try:
            mode = StoreMode(base)
        except ValueError:
            raise _Fail(f"bad store item {item}") from None
        c.sp()
        if c.peek() == 0x28:
            flags = self.flag_list()
        else:
            flags_list = [self.flag()]
            while c.peek() == 0x20:
                c.sp()
                flags_list.append(self.flag())
            flags = tuple(flags_list)
        return Store(sequence, mode, silent, flags, unchangedsince)

    def copy(self, name: str, uid: bool) -> Copy:
        self.c.sp()
        sequence = self.sequence_set()
        self.c.sp()
        return Copy(sequence, self.mailbox())

    def expunge(self, name: str, uid: bool) -> Expunge:
        self.c.sp()
        return Expunge(self.sequence_set())

    def id(self, name: str, uid: bool) -> Id:
        c = self.c
        c.sp()
        if c.peek_word() == "NIL":
            c.pos += 3
            return Id(None)

        def pair() -> tuple[str, str | None]:
            field = self.string()
            c.sp()
            value = self.nstring()
            if len(field) > 30 or (value is not None and len(value) > 1024):  # RFC 2971 §3.3
                raise _Fail("ID field or value too long")
            return (field.decode("utf-8", "replace"),
                    None if value is None else value.decode("utf-8", "replace"))

        params = self.paren_list(pair)
        if len(params) > MAX_ID_PAIRS:
            raise _Fail("too many ID parameters")
        return Id(tuple(params))

    def enable(self, name: str, uid: bool) -> Enable:
        caps: list[str] = []
        while self.c.peek() == 0x20 or not caps:
            self.c.sp()
            caps.append(self.word("capability"))
        return Enable(tuple(caps))

    def getquota(self, name: str, uid: bool) -> QuotaRoot:
        self.c.sp()
        return QuotaRoot(self.utf8(self.astring(), "quota root"))

    # -- SEARCH (RFC 3501 §6.4.4) --------------------------------------------------------

    def search(self, name: str, uid: bool) -> Search:
        c = self.c
        c.sp()
        return_options = None
        if c.peek_word() == "RETURN":  # RFC 4731 §3.1
            c.pos += 6
            c.sp()
            return_options = tuple(self.paren_list(self.word))
            c.sp()
        if c.peek_word() == "CHARSET":
            c.pos += 7
            c.sp()
            self.charset = self.astring().decode("latin-1")
            try:
                known = codecs.lookup(self.charset)._is_text_encoding
            except (LookupError, ValueError):
                known = False
            if not known:
                raise _Fail(f"unsupported charset {self.charset}", ErrorKind.BAD_CHARSET, "NO",
                            "BADCHARSET (US-ASCII UTF-8)")
            c.sp()
        keys = [self.search_key(0)]
        while c.peek() == 0x20:
            c.sp()
            keys.append(self.search_key(0))
        key = keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
        return Search(key, self.charset, return_options)

    def search_string(self) -> str:
        data = self.astring()
        if self.charset is None:  # RFC 3501 says US-ASCII; clients send UTF-8 regardless
            return data.decode("utf-8", "replace")
        try:
            return data.decode(self.charset)
        except (UnicodeError, LookupError, ValueError):
            raise _Fail(f"search string is not valid {self.charset}") from None

    def search_key(self, depth: int) -> SearchKey:
        c = self.c
        if depth > MAX_SEARCH_DEPTH:
            raise _Fail("search program nested too deeply")
        p = c.peek()
        if p == 0x28:
            keys = self.paren_list(lambda: self.search_key(depth + 1), allow_empty=False)
            return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
        if 0x30 <= p <= 0x39 or p in (0x2A, 0x24):
            return SearchKey("SEQ", (self.sequence_set(),))
        key = self.word("search key")
        if key in _SEARCH_FLAG_KEYS:
            return SearchKey(key)
        c.sp()
        if key in _SEARCH_TEXT_KEYS:
            return SearchKey(key, (self.search_string(),))
        if key in _SEARCH_DATE_KEYS:
            return SearchKey(key, (self.date(),))
        if key in ("KEYWORD", "UNKEYWORD"):
            return SearchKey(key, (c.take(_ATOM, "keyword").decode("ascii"),))
        if key in ("LARGER", "SMALLER"):
            return SearchKey(key, (self.number(),))
        if key in ("OLDER", "YOUNGER"):  # RFC 5032 §3
            return SearchKey(key, (self.number(nonzero=True),))
        if key == "HEADER":
            field = self.field_name()
            c.sp()
            return SearchKey(key, (field, self.search_string()))
        if key == "NOT":
            return SearchKey(key, (self.search_key(depth + 1),))
        if key == "OR":
            first = self.search_key(depth + 1)
            c.sp()
            return SearchKey(key, (first, self.search_key(depth + 1)))
        if key == "UID":
            return SearchKey(key, (self.sequence_set(),))
        if key == "MODSEQ":  # RFC 7162 §3.1.5
            entry = kind = None
            if c.peek() == 0x22:
                entry = self.string().decode("latin-1")
                c.sp()
                kind = self.word("entry type")
                if kind not in ("PRIV", "SHARED", "ALL"):
                    raise _Fail("bad MODSEQ entry type")
                c.sp()
            return SearchKey(key, (self.number(MAX_MODSEQ), entry, kind))
        raise _Fail(f"unknown search key {key}")


_FETCH_MACROS = {  # RFC 3501 §6.4.5
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_SIMPLE = frozenset({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER",
                           "RFC822.SIZE", "RFC822.TEXT", "BODYSTRUCTURE", "UID", "MODSEQ"})
_SEARCH_FLAG_KEYS = frozenset({"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD",
                               "RECENT", "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT",
                               "UNFLAGGED", "UNSEEN"})
_SEARCH_TEXT_KEYS = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_SEARCH_DATE_KEYS = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})

_COMMANDS: dict[str, Callable[[_Grammar, str, bool], object]] = {
    "LOGIN": _Grammar.login,
    "AUTHENTICATE": _Grammar.authenticate,
    "SELECT": _Grammar.select,
    "EXAMINE": _Grammar.select,
    "CREATE": _Grammar.create,
    "DELETE": _Grammar.mailbox_only,
    "SUBSCRIBE": _Grammar.mailbox_only,
    "UNSUBSCRIBE": _Grammar.mailbox_only,
    "GETQUOTAROOT": _Grammar.mailbox_only,
    "GETQUOTA": _Grammar.getquota,
    "RENAME": _Grammar.rename,
    "STATUS": _Grammar.status,
    "LIST": _Grammar.list_command,
    "LSUB": _Grammar.list_command,
    "APPEND": _Grammar.append,
    "FETCH": _Grammar.fetch,
    "STORE": _Grammar.store,
    "COPY": _Grammar.copy,
    "MOVE": _Grammar.copy,
    "SEARCH": _Grammar.search,
    "EXPUNGE": _Grammar.expunge,  # UID EXPUNGE; plain EXPUNGE takes no arguments
    "ID": _Grammar.id,
    "ENABLE": _Grammar.enable,
}
KNOWN_COMMANDS = frozenset(_COMMANDS) | NO_ARGUMENT_COMMANDS | {"UID"}

# The Command.args type of each command (for the session's dispatch table and its tests).
COMMAND_ARGS: dict[str, type | None] = {
    **{name: None for name in NO_ARGUMENT_COMMANDS},
    "LOGIN": Login, "AUTHENTICATE": Authenticate, "SELECT": Select, "EXAMINE": Select,
    "CREATE": Create, "DELETE": MailboxName, "SUBSCRIBE": MailboxName,
    "UNSUBSCRIBE": MailboxName, "GETQUOTAROOT": MailboxName, "GETQUOTA": QuotaRoot,
    "RENAME": Rename, "STATUS": Status, "LIST": ListQuery, "LSUB": ListQuery,
    "APPEND": Append, "FETCH": Fetch, "STORE": Store, "COPY": Copy, "MOVE": Copy,
    "SEARCH": Search, "EXPUNGE": Expunge, "ID": Id, "ENABLE": Enable, "DONE": None,
}


def parse_section(text: str) -> Section:
    """Parse a section-spec such as "1.2.HEADER.FIELDS (DATE FROM)" (without brackets).

    Raises:
        ValueError: not section-spec syntax.
    """
    g = _Grammar([b"[" + text.encode("latin-1") + b"]"], [], False)
    try:
        spec = g.section(binary=False)
        g.end()
    except _Fail as exc:
        raise ValueError(exc.text) from None
    return spec


def parse_sequence_set(text: str) -> SequenceSet:
    """Parse a sequence-set such as "1:5,7,*".

    Raises:
        ValueError: not sequence-set syntax.
    """
    g = _Grammar([text.encode("latin-1")], [], False)
    try:
        seq = g.sequence_set()
        g.end()
    except _Fail as exc:
        raise ValueError(exc.text) from None
    return seq


# ---- the reader -----------------------------------------------------------------------------


class _State(enum.Enum):
    LINE = "line"  # reading a line of command text
    AWAIT = "await"  # a synchronizing literal awaits accept_literal() / reject_literal()
    LITERAL = "literal"  # reading literal octets into the command
    SWALLOW = "swallow"  # counting away the octets of a refused non-synchronizing literal
    DEAD = "dead"  # a fatal error was reported; everything is ignored


class _Announcement:
    __slots__ = ("start", "size", "nonsync", "binary")

    def __init__(self, start: int, size: int, nonsync: bool, binary: bool) -> None:
        self.start, self.size, self.nonsync, self.binary = start, size, nonsync, binary


def _announcement(line: bytes) -> _Announcement | None:
    """The literal announcement ending `line`: "{n}", "{n+}" or "~{n}" (RFC 3501 §4.3,
    RFC 7888 §3, RFC 3516 §4.4)."""
    if not line.endswith(b"}"):
        return None
    brace = line.rfind(b"{")
    if brace < 0:
        return None
    inner = line[brace + 1 : -1]
    nonsync = inner.endswith(b"+")
    digits = inner[:-1] if nonsync else inner
    if not digits.isdigit() or not digits.isascii():
        return None
    # Absurd sizes saturate rather than overflow int(); they are refused by the limits.
    size = int(digits) if len(digits) <= 19 else 1 << 64
    binary = brace > 0 and line[brace - 1] == 0x7E
    return _Announcement(brace - 1 if binary else brace, size, nonsync, binary)


class CommandReader:
    """Incremental, bounded IMAP command reader (see the module docstring).

    Args:
        max_command: octets of command text (plus literal octets, for commands other than
            APPEND); an unterminated line longer than this is fatal.
        max_append: literal octets of one APPEND command.
        max_nonsync: largest non-synchronizing literal accepted: None with LITERAL+ (the other
            limits still apply), LITERAL_MINUS_MAX with LITERAL- (RFC 7888 §4).

    `utf8_mailboxes` is set by the session once UTF8=ACCEPT is enabled (RFC 6855 §3): mailbox
    names are then UTF-8 rather than modified UTF-7.
    """

    def __init__(self, *, max_command: int = MAX_COMMAND, max_append: int = MAX_APPEND,
                 max_nonsync: int | None = None) -> None:
        self.max_command = max_command
        self.max_append = max_append
        self.max_nonsync = max_nonsync
        self.utf8_mailboxes = False
        self._buf = bytearray()
        self._pos = 0  # octets of _buf already consumed
        self._scan = 0  # where to resume looking for LF
        self._state = _State.LINE
        self._pending: NeedLiteral | None = None
        self._remaining = 0  # literal octets still to read or swallow
        self._literal_binary = False
        self._discard = False  # the rest of the current command is dropped (error reported)
        self._reset_command()

    def _reset_command(self) -> None:
        self._segs: list[bytes] = []
        self._lits: list[tuple[bytes, bool]] = []
        self._chunks: list[bytes] = []
        self._text = 0
        self._literal_total = 0
        self._tag: str | None = None
        self._name: str | None = None
        self._discard = False

    @property
    def buffered(self) -> int:
        """Octets received but not yet consumed (the session refuses STARTTLS when this is
        not zero: no plaintext may be carried over into TLS, RFC 3501 §6.2.1)."""
        return len(self._buf) - self._pos

    @property
    def discarding(self) -> int:
        """Octets of a refused non-synchronizing literal still to be read and dropped (the
        session may rather close the connection than read a huge one, RFC 7888 §4)."""
        return self._remaining if self._state is _State.SWALLOW else 0

    def feed(self, data: bytes) -> None:
        """Append octets received from the client."""
        if self._state is not _State.DEAD:
            self._buf += data

    def next(self) -> Command | NeedLiteral | ParseError | None:
        """The next result, or None when more octets are needed."""
        while True:
            state = self._state
            if state is _State.DEAD:
                return None
            if state is _State.AWAIT:
                return self._pending
            if state is _State.LITERAL or state is _State.SWALLOW:
                take = min(len(self._buf) - self._pos, self._remaining)
                if take and state is _State.LITERAL:
                    with memoryview(self._buf) as view:
                        self._chunks.append(bytes(view[self._pos : self._pos + take]))
                self._pos += take
                self._remaining -= take
                if self._remaining:
                    self._compact()
                    return None
                if state is _State.LITERAL:
                    self._lits.append((b"".join(self._chunks), self._literal_binary))
                    self._chunks = []
                self._state = _State.LINE
                continue
            line = self._take_line()
            if line is None or isinstance(line, ParseError):
                return line
            result = self._line(line)
            if result is not None:
                return result

    def next_line(self) -> bytes | ParseError | None:
        """The next raw line without its CRLF (AUTHENTICATE responses, RFC 3501 §6.2.2), or
        None when more octets are needed.

        Raises:
            ReaderStateError: called in the middle of a command.
        """
        if self._state is _State.DEAD:
            return None
        if self._state is not _State.LINE or self._segs or self._discard:
            raise ReaderStateError("next_line() in the middle of a command")
        return self._take_line()

    def accept_literal(self) -> None:
        """The session sent "+": read the announced octets into the command."""
        if self._state is not _State.AWAIT:
            raise ReaderStateError("no literal awaits a decision")
        self._state, self._pending = _State.LITERAL, None

    def reject_literal(self) -> None:
        """The session answered the tag instead of "+": the client abandons the command."""
        if self._state is not _State.AWAIT:
            raise ReaderStateError("no literal awaits a decision")
        self._state, self._pending = _State.LINE, None
        self._reset_command()

    # -- internals --

    def _compact(self) -> None:
        if self._pos >= len(self._buf):
            self._buf.clear()
            self._scan -= self._pos
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0

    def _die(self, text: str) -> ParseError:
        self._state = _State.DEAD
        self._buf.clear()
        self._pos = self._scan = 0
        return ParseError(None, ErrorKind.LINE_TOO_LONG, text, fatal=True)

    def _take_line(self) -> bytes | ParseError | None:
        nl = self._buf.find(b"\n", max(self._pos, self._scan))
        if nl < 0:
            if len(self._buf) - self._pos > self.max_command:
                return self._die("line too long")
            self._scan = len(self._buf)
            self._compact()
            return None
        if nl - self._pos > self.max_command:
            return self._die("line too long")
        line = bytes(self._buf[self._pos : nl])
        self._pos = self._scan = nl + 1
        self._compact()
        # RFC 3501 §2.2 lines end in CRLF; a bare LF is tolerated, as most servers do.
        return line[:-1] if line.endswith(b"\r") else line

    def _error(self, text: str, kind: ErrorKind = ErrorKind.SYNTAX, status: str = "BAD",
               code: str | None = None) -> ParseError:
        return ParseError(self._tag, kind, text, status, code, command=self._name)

    def _refuse(self, error: ParseError, announced: _Announcement | None) -> ParseError:
        """Drop the current command; a refused non-synchronizing literal is counted away and
        the rest of its command discarded. (A refused synchronizing literal is never sent.)"""
        self._reset_command()
        if announced is not None and announced.nonsync:
            self._discard = True
            self._state, self._remaining = _State.SWALLOW, announced.size
        return error

    def _line(self, line: bytes) -> Command | NeedLiteral | ParseError | None:
        announced = _announcement(line)
        if self._discard:
            if announced is not None and announced.nonsync:
                self._state, self._remaining = _State.SWALLOW, announced.size
            else:
                self._reset_command()  # last line, or a sync literal that will never come
            return None
        if not self._segs:
            if not line:
                return None  # stray empty line (some clients send one after a literal)
            if line.upper() == b"DONE":
                return Command("", "DONE")  # RFC 2177 §3: ends IDLE
            head = _HEAD.match(line)
            if head is None:
                return self._refuse(self._error("missing tag"), announced)
            self._tag = head.group(1).decode("utf-8", "replace")
            name = (head.group(2) or b"").upper().decode("ascii")
            if name == "UID" and head.group(3):
                name = head.group(3).upper().decode("ascii")
            if name not in KNOWN_COMMANDS:
                return self._refuse(self._error("unknown command", ErrorKind.UNKNOWN_COMMAND),
                                    announced)
            self._name = name
        text = line if announced is None else line[: announced.start]
        self._segs.append(text)
        self._text += len(text)
        if self._text + (0 if self._name == "APPEND" else self._literal_total) > \
                self.max_command:
            return self._refuse(self._error("command too long", ErrorKind.TOO_BIG,
                                            code="TOOBIG"), announced)
        if announced is None:
            return self._complete()
        size = announced.size
        if self._name == "APPEND":
            over = self._literal_total + size > self.max_append
        else:
            over = self._text + self._literal_total + size > self.max_command
        if over:
            status = "NO" if self._name == "APPEND" else "BAD"  # RFC 7889 §4 / RFC 7888 §4
            return self._refuse(self._error("literal too big", ErrorKind.TOO_BIG, status,
                                            "TOOBIG"), announced)
        if announced.nonsync and self.max_nonsync is not None and size > self.max_nonsync:
            # RFC 7888 §4: LITERAL- refuses a larger non-synchronizing literal with BAD.
            return self._refuse(self._error("non-synchronizing literal too big",
                                            ErrorKind.TOO_BIG, "BAD", "TOOBIG"), announced)
        self._literal_total += size
        self._literal_binary = announced.binary
        self._remaining = size
        if announced.nonsync:
            self._state = _State.LITERAL
            return None
        assert self._tag is not None and self._name is not None
        self._state = _State.AWAIT
        self._pending = NeedLiteral(self._tag, size, self._name)
        return self._pending

    def _complete(self) -> Command | ParseError:
        segs, lits, tag, name = self._segs, self._lits, self._tag, self._name
        self._reset_command()
        try:
            return _Grammar(segs, lits, self.utf8_mailboxes).command()
        except _Fail as exc:
            return ParseError(tag, exc.kind, exc.text, exc.status, exc.code, command=name)
