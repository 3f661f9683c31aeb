"""IMAP basic syntax shared by every command (RFC 3501 §9, RFC 9051 §9).

`TokenGrammar` is the base of the command grammar (grammar.CommandGrammar): a cursor over
one complete command, kept as text segments with a literal after each but the last, and the
rules every command shares: atom, number, string / astring / nstring (quoted or literal,
RFC 3501 §4.3), mailbox names (modified UTF-7, RFC 3501 §5.1.3; UTF-8 once UTF8=ACCEPT is
enabled, RFC 6855 §3), flags (§2.3.2), date and date-time, parenthesised lists and header
field names. A rule that fails raises `GrammarError`; the reader turns it into a ParseError
of an `ErrorKind` (parser.py, the single conversion site).

Imports: stdlib only, and relay.mda.imap.utf7. No I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Callable

from relay.mda.imap import utf7

MAX_NUMBER = 4294967295  # RFC 3501 §9 number / nz-number: unsigned 32-bit
MAX_MODSEQ = 9223372036854775807  # RFC 7162 §7 mod-sequence-value: 63 bits


class ErrorKind(enum.Enum):
    """Why a command could not be parsed; the session maps each to its reply."""

    SYNTAX = "syntax"  # BAD
    UNKNOWN_COMMAND = "unknown command"  # BAD
    TOO_BIG = "too big"  # NO [TOOBIG] for APPEND, BAD [TOOBIG] otherwise (RFC 7888 §4)
    LINE_TOO_LONG = "line too long"  # fatal: "* BAD" / "* BYE" and close
    BAD_CHARSET = "bad charset"  # NO [BADCHARSET (...)] (RFC 3501 §6.4.4)
    BAD_MAILBOX_NAME = "bad mailbox name"  # NO: not valid modified UTF-7 (RFC 3501 §5.1.3)


class GrammarError(Exception):
    """Raised inside the grammar; CommandReader turns it into a ParseError (the single
    conversion site)."""

    def __init__(self, text: str, kind: ErrorKind = ErrorKind.SYNTAX, status: str = "BAD",
                 code: str | None = None) -> None:
        super().__init__(text)
        self.text, self.kind, self.status, self.code = text, kind, status, code


# RFC 3501 §2.3.2 system flags, spelled as flag() normalises them.
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")

# ---- character classes (RFC 3501 §9) --------------------------------------------------------

# ATOM-CHAR: CHAR except atom-specials "(" ")" "{" SP CTL list-wildcards quoted-specials "]".
ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f-\xff%*"\\\]]+')
# ASTRING-CHAR adds "]"; 8-bit is tolerated here for UTF-8 names and passwords (RFC 9051).
_ASTRING = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\]+')
# list-char: ATOM-CHAR / list-wildcards / resp-specials.
_LIST_CHARS = re.compile(rb'[^(){ \x00-\x1f\x7f"\\]+')
# quoted: QUOTED-CHAR is TEXT-CHAR minus quoted-specials, or "\" quoted-special; UTF-8 allowed
# (RFC 9051 utf8-quoted).
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_UNESCAPE = re.compile(rb'\\(["\\])')
_DIGITS = re.compile(rb"[0-9]+")
# RFC 5322 §3.6.8 ftext: printable US-ASCII except ":".
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
# RFC 3501 §9 date-time (date-day-fixed tolerated without its leading space).
_DATE_TIME = re.compile(rb" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):"
                        rb"([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})")
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")


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
            raise GrammarError(f"expected {what or token.decode()!r}")
        self.pos += len(token)

    def sp(self) -> None:
        self.expect(b" ", "SP")

    def take(self, regex: re.Pattern[bytes], what: str) -> bytes:
        m = regex.match(self.seg, self.pos)
        if m is None:
            raise GrammarError(f"expected {what}")
        self.pos = m.end()
        return m.group()

    def peek_word(self) -> str:
        m = ATOM.match(self.seg, self.pos)
        return m.group().decode("ascii").upper() if m else ""


class TokenGrammar:
    """The rules every command shares (RFC 3501 §9); grammar.CommandGrammar builds on it."""

    def __init__(self, segs: list[bytes], lits: list[tuple[bytes, bool]],
                 utf8_mailboxes: bool) -> None:
        self.c = _Cursor(segs, lits)
        self.utf8_names = utf8_mailboxes
        self.charset: str | None = None  # SEARCH CHARSET (grammar.py, search_keys.py)

    # -- tokens --

    def word(self, what: str = "atom") -> str:
        return self.c.take(ATOM, what).decode("ascii").upper()

    def number(self, limit: int = MAX_NUMBER, nonzero: bool = False) -> int:
        digits = self.c.take(_DIGITS, "number")
        if len(digits) > len(str(limit)) or int(digits) > limit or (nonzero and
                                                                    not int(digits)):
            raise GrammarError(f"number {digits[:24].decode()} out of range")
        return int(digits)

    def literal_or_quoted(self) -> bytes | None:
        c = self.c
        if c.at_literal():
            data, binary = c.literal()
            if binary:
                raise GrammarError("literal8 is allowed only in APPEND")
            return data
        if c.peek() == 0x22:
            m = _QUOTED.match(c.seg, c.pos)
            if m is None:
                raise GrammarError("bad quoted string")
            c.pos = m.end()
            return _UNESCAPE.sub(rb"\1", m.group(1))
        return None

    def string(self) -> bytes:
        value = self.literal_or_quoted()
        if value is None:
            raise GrammarError("expected string")
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
            raise GrammarError(f"{what} is not valid UTF-8") from None

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
            raise GrammarError("empty list")
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
                raise GrammarError(f"mailbox name is not valid modified UTF-7: {exc}",
                                   ErrorKind.BAD_MAILBOX_NAME, "NO") from None
        return "INBOX" if name.upper() == "INBOX" else name

    def mailbox(self) -> str:
        return self.mailbox_name(self.astring())

    def list_mailbox(self) -> str:
        return self.mailbox_name(self.astring(_LIST_CHARS))

    def flag(self, allow_recent: bool = False) -> str:
        c = self.c
        if c.peek() == 0x5C:  # "\"
            c.pos += 1
            name = "\\" + c.take(ATOM, "flag").decode("ascii")
            for system in SYSTEM_FLAGS:
                if name.lower() == system.lower():
                    name = system
            if name == "\\Recent" and not allow_recent:
                raise GrammarError("\\Recent cannot be set by the client")  # RFC 3501 §2.3.2
            return name
        return c.take(ATOM, "flag").decode("ascii")

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
            raise GrammarError("bad date-time") from None

    def date(self) -> dt.date:
        m = _DATE.fullmatch(self.astring())
        try:
            if m is None:
                raise ValueError
            day, mon, year = m.groups()
            return dt.date(int(year), _MONTHS[mon.decode().upper()], int(day))
        except (ValueError, KeyError):
            raise GrammarError("bad date") from None

    def end(self) -> None:
        if not self.c.at_end():
            raise GrammarError("unexpected text at end of command")

    def field_name(self) -> str:
        name = self.astring().decode("latin-1")
        if not _FIELD_NAME.fullmatch(name):
            raise GrammarError("bad header field name")
        return name
