"""IMAP command reader: bytes in, typed commands out (RFC 3501 §9 formal syntax).

`CommandReader` is fed raw octets and yields one result at a time: a `Command`, a
`NeedLiteral` (a synchronizing literal was announced: the session answers "+" via
accept_literal() or refuses it via reject_literal()), a `ParseError` (answer it and carry on,
unless it is `fatal`), or None (need more octets). It never raises for anything the peer sends.

Theory of operation. A command is a sequence of lines; a line ending in a literal announcement
("{n}", "{n+}" RFC 7888, "~{n}" RFC 3516) is followed by exactly n octets and then more of the
same command. The reader splits the stream into text segments and literal payloads and, when the
last line arrives, hands them to the recursive-descent grammar (grammar.py) over that sequence,
so a literal may stand wherever the grammar allows a string. Memory is bounded: an unterminated
line longer than `max_command` is fatal (the stream cannot be resynchronised without it); a
command's text plus literals over `max_command` (or an APPEND's literals over `max_append`) is
refused. Refusing a synchronizing literal costs nothing (no "+" is sent, the client never sends
the octets); a refused non-synchronizing literal is counted away without being buffered, and the
rest of that command is discarded. What would break it: buffering a literal before deciding its
fate, or parsing before the command's last line.

Imports: stdlib only, and relay.mda.imap.{arguments,grammar,tokens}. No I/O, no clock.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from relay.mda.imap.arguments import Command
from relay.mda.imap.grammar import KNOWN_COMMANDS, CommandGrammar
from relay.mda.imap.tokens import ErrorKind, GrammarError

# ---- limits ---------------------------------------------------------------------------------

MAX_COMMAND = 64 * 1024  # text of one command (+ its literals, except APPEND's)
MAX_APPEND = 64 * 1024 * 1024  # literal octets of one APPEND (MULTIAPPEND: all messages)
LITERAL_MINUS_MAX = 4096  # RFC 7888 §4: LITERAL- allows non-synchronizing literals up to this


# ---- results --------------------------------------------------------------------------------


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


class ReaderStateError(RuntimeError):
    """The glue called the reader out of turn (a bug in the caller, not the peer)."""


# A command's first line starts "tag SP name [SP name]": enough to apply the limits per command.
_HEAD = re.compile(rb'([^(){ \x00-\x1f\x7f%*"\\+]+)(?: ([A-Za-z]+)(?: ([A-Za-z]+))?)?')


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
            return CommandGrammar(segs, lits, self.utf8_mailboxes).command()
        except GrammarError as exc:
            return ParseError(tag, exc.kind, exc.text, exc.status, exc.code, command=name)
