"""SEARCH evaluation (RFC 3501 §6.4.4; MODSEQ RFC 7162 §3.1.5; OLDER/YOUNGER RFC 5032).

The parser has already turned the program into a `SearchKey` tree; `matches` decides one
message. Keys on flags, size, dates, numbers and mod-sequences read only the `MessageInfo`; the
message octets are loaded (once) only when a key looks at headers or text, and cheap keys are
tried first so an AND or OR can often finish without them.

String matching is a case-insensitive substring test (RFC 3501 §6.4.4), done with
str.casefold() on header text with RFC 2047 words decoded, and on body text with transfer
encodings and charsets undone (message.Message.body_text).

`compile_program` is the same semantics turned into one closure per key, for running a
program over a whole mailbox: constants (dates, needles, case-folded flags) are worked
out once, header fields are read from a `Source` that keeps them decoded per folder, and
the per-message work is a few comparisons. INTERNALDATE is a POSIX time there and its
date is taken in UTC, as the server's MessageInfo always gives it. \\Recent is not among
stored flags there: RECENT, OLD and NEW ask the session's `recent` (uid -> bool).

Imports: stdlib only, relay.mda.imap.{message,search_keys,sequence_set}. No clock: `now` is a
parameter.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from relay.mda.imap.message import Message
from relay.mda.imap.search_keys import SearchKey
from relay.mda.imap.sequence_set import SequenceSet


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """What the mailbox index knows about a message without reading it."""

    seq: int
    uid: int
    flags: frozenset[str]  # "\\Seen", "\\Recent", keywords ... (compared case-insensitively)
    size: int  # RFC822.SIZE
    internaldate: dt.datetime  # timezone-aware
    modseq: int = 0


# Flag keys: (flag, wanted) -- RFC 3501 §6.4.4.
_FLAG_KEYS = {
    "ANSWERED": ("\\answered", True), "UNANSWERED": ("\\answered", False),
    "DELETED": ("\\deleted", True), "UNDELETED": ("\\deleted", False),
    "DRAFT": ("\\draft", True), "UNDRAFT": ("\\draft", False),
    "FLAGGED": ("\\flagged", True), "UNFLAGGED": ("\\flagged", False),
    "SEEN": ("\\seen", True), "UNSEEN": ("\\seen", False),
    "RECENT": ("\\recent", True), "OLD": ("\\recent", False),
}
_ADDRESS_HEADERS = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}
_MESSAGE_KEYS = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO", "HEADER",
                           "SENTBEFORE", "SENTON", "SENTSINCE"})


def needs_message(key: SearchKey) -> bool:
    """Whether evaluating `key` may need the message octets (headers or text)."""
    if key.name in _MESSAGE_KEYS:
        return True
    if key.name in ("AND", "OR", "NOT"):
        return any(needs_message(k) for k in key.args if isinstance(k, SearchKey))
    return False


def matches(key: SearchKey, msg: MessageInfo, raw_loader: Callable[[], bytes | Message],
            now: dt.datetime, *, last_seq: int, last_uid: int,
            saved_uids: Collection[int] = frozenset()) -> bool:
    """Whether the message `msg` satisfies the search program `key`.

    Args:
        raw_loader: returns the message octets (or an already parsed Message); called at
            most once, and only when a key needs headers or text.
        now: the current time (for OLDER / YOUNGER).
        last_seq, last_uid: what "*" stands for in sequence sets (RFC 3501 §9 seq-number).
        saved_uids: the RFC 5182 saved result that "$" refers to.
    """
    return _Evaluation(msg, raw_loader, now, last_seq, last_uid, saved_uids).test(key)


class _Evaluation:
    """One message against one program, loading and decoding what is needed at most once."""

    def __init__(self, msg: MessageInfo, raw_loader: Callable[[], bytes | Message],
                 now: dt.datetime, last_seq: int, last_uid: int,
                 saved: Collection[int]) -> None:
        self.msg = msg
        self.raw_loader = raw_loader
        self.now = now
        self.last_seq = last_seq
        self.last_uid = last_uid
        self.saved = saved
        self._flags: frozenset[str] | None = None
        self._message: Message | None = None
        self._body: str | None = None
        self._header: str | None = None

    # -- lazily computed views --

    def flags(self) -> frozenset[str]:
        if self._flags is None:
            self._flags = frozenset(f.lower() for f in self.msg.flags)
        return self._flags

    def message(self) -> Message:
        if self._message is None:
            loaded = self.raw_loader()
            # A caller with a cache of parsed messages may hand one over instead of octets.
            self._message = loaded if isinstance(loaded, Message) else Message(loaded)
        return self._message

    def body(self) -> str:
        if self._body is None:
            self._body = self.message().body_text().casefold()
        return self._body

    def header(self) -> str:
        if self._header is None:
            self._header = self.message().header_text().casefold()
        return self._header

    def header_contains(self, field: str, needle: str) -> bool:
        return any(needle in value.casefold() for value in self.message().header_values(field))

    # -- the keys --

    def test(self, key: SearchKey) -> bool:
        name, args = key.name, key.args
        if name == "AND":
            # Cheap keys first: an AND often fails without loading the message.
            return all(self.test(k) for k in sorted(args, key=needs_message))  # type: ignore
        if name == "OR":
            return any(self.test(k) for k in sorted(args, key=needs_message))  # type: ignore
        if name == "NOT":
            return not self.test(args[0])  # type: ignore[arg-type]
        if name == "ALL":
            return True
        if name in _FLAG_KEYS:
            flag, wanted = _FLAG_KEYS[name]
            return (flag in self.flags()) == wanted
        if name == "NEW":  # RFC 3501 §6.4.4: RECENT UNSEEN
            return "\\recent" in self.flags() and "\\seen" not in self.flags()
        if name == "KEYWORD":
            return str(args[0]).lower() in self.flags()
        if name == "UNKEYWORD":
            return str(args[0]).lower() not in self.flags()
        if name == "LARGER":
            return self.msg.size > args[0]  # type: ignore[operator]
        if name == "SMALLER":
            return self.msg.size < args[0]  # type: ignore[operator]
        if name in ("SEQ", "UID"):
            seq: SequenceSet = args[0]  # type: ignore[assignment]
            if seq.saved:
                return self.msg.uid in self.saved
            if name == "SEQ":
                return seq.contains(self.msg.seq, self.last_seq)
            return seq.contains(self.msg.uid, self.last_uid)
        if name == "MODSEQ":  # RFC 7162 §3.1.5: equal to or greater than
            return self.msg.modseq >= args[0]  # type: ignore[operator]
        if name in ("BEFORE", "ON", "SINCE"):
            # The internal date, disregarding time and timezone.
            return _compare(name, self.msg.internaldate.date(), args[0])  # type: ignore
        if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            # The Date: header, disregarding time and timezone; without a usable Date header
            # the internal date stands in (Dovecot does the same).
            sent = self.message().sent_date() or self.msg.internaldate.date()
            return _compare(name[4:], sent, args[0])  # type: ignore[arg-type]
        if name in ("OLDER", "YOUNGER"):  # RFC 5032 §3
            age = (self.now - self.msg.internaldate).total_seconds()
            return age > args[0] if name == "OLDER" else age <= args[0]  # type: ignore
        needle = str(args[-1]).casefold() if args else ""
        if name in _ADDRESS_HEADERS:
            return self.header_contains(_ADDRESS_HEADERS[name], needle)
        if name == "HEADER":
            field = str(args[0])
            if not needle:  # RFC 3501 §6.4.4: an empty string matches any such field
                return self.message().has_header(field)
            return self.header_contains(field, needle)
        if name == "BODY":
            return needle in self.body()
        if name == "TEXT":
            return needle in self.header() or needle in self.body()
        return False  # unknown keys never reach here: the parser rejects them


def _compare(op: str, have: dt.date, want: dt.date) -> bool:
    if op == "BEFORE":
        return have < want
    if op == "ON":
        return have == want
    return have >= want  # SINCE: on or after


# ---- compiled programs ----------------------------------------------------------------------


class Source(Protocol):
    """What a compiled program reads beyond the index: per message, on demand."""

    def values(self, uid: int, field: str) -> tuple[str, ...]:
        """Values of header field `field` (lower case), decoded and case-folded."""
        ...

    def header(self, uid: int) -> Message:
        """A parse of the header (more may be parsed)."""
        ...

    def texts(self, uid: int) -> tuple[str, str]:
        """The message's header text and body text, decoded and case-folded (for BODY
        and TEXT; the source keeps the last one, as one message is tested by several
        keys in a row)."""
        ...


class Facts(Protocol):
    """A message as the index knows it (model.Message)."""

    flags: frozenset[str]
    size: int
    internaldate: float
    modseq: int


Test = Callable[[int, int, Any, Source], bool]  # (seq, uid, facts, source)
_lower_flags: dict[frozenset[str], frozenset[str]] = {}


def _lowered(flags: frozenset[str]) -> frozenset[str]:
    hit = _lower_flags.get(flags)
    if hit is None:
        hit = frozenset(f.lower() for f in flags)
        if len(_lower_flags) < 4096:
            _lower_flags[flags] = hit
    return hit


def _day(date: dt.date) -> int:
    return calendar.timegm(date.timetuple())


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled SEARCH program: `test(seq, uid, facts, source)`; `fields` are the header
    fields (lower case) whose values it may ask the source for."""

    test: Test
    fields: frozenset[str]
    needs_text: bool  # BODY / TEXT / SENT* / HEADER "" need parses beyond field values


def compile_program(key: SearchKey, now: dt.datetime, *, last_seq: int, last_uid: int,
                    saved_uids: Collection[int] = frozenset(),
                    recent: Callable[[int], bool] | None = None) -> Program:
    """`key` as a Program; `now`, `last_seq`, `last_uid` and `saved_uids` as for matches().
    `recent`: whether a UID is \\Recent in the session (RFC 3501 §2.3.2); without it the
    facts' flags say."""
    fields: set[str] = set()
    text = [False]
    now_ts = now.timestamp()

    def build(k: SearchKey) -> Test:  # noqa: C901 - one branch per key, like test()
        name, args = k.name, k.args
        if name in ("AND", "OR"):
            parts = [build(a) for a in sorted(args, key=needs_message)]  # type: ignore
            if len(parts) == 1:
                return parts[0]
            if name == "AND":
                return lambda q, u, m, s: all(p(q, u, m, s) for p in parts)
            return lambda q, u, m, s: any(p(q, u, m, s) for p in parts)
        if name == "NOT":
            inner = build(args[0])  # type: ignore[arg-type]
            return lambda q, u, m, s: not inner(q, u, m, s)
        if name == "ALL":
            return lambda q, u, m, s: True
        if recent is not None and name in ("RECENT", "OLD", "NEW"):
            if name == "RECENT":
                return lambda q, u, m, s: recent(u)
            if name == "OLD":  # RFC 3501 §6.4.4: NOT RECENT
                return lambda q, u, m, s: not recent(u)
            return lambda q, u, m, s: recent(u) and "\\seen" not in _lowered(m.flags)
        if name in _FLAG_KEYS:
            flag, wanted = _FLAG_KEYS[name]
            if wanted:
                return lambda q, u, m, s: flag in _lowered(m.flags)
            return lambda q, u, m, s: flag not in _lowered(m.flags)
        if name == "NEW":  # RECENT UNSEEN
            return lambda q, u, m, s: ("\\recent" in _lowered(m.flags)
                                       and "\\seen" not in _lowered(m.flags))
        if name in ("KEYWORD", "UNKEYWORD"):
            word, want = str(args[0]).lower(), name == "KEYWORD"
            return lambda q, u, m, s: (word in _lowered(m.flags)) == want
        if name == "LARGER":
            n = args[0]
            return lambda q, u, m, s: m.size > n
        if name == "SMALLER":
            n = args[0]
            return lambda q, u, m, s: m.size < n
        if name in ("SEQ", "UID"):
            seq: SequenceSet = args[0]  # type: ignore[assignment]
            if seq.saved:
                saved = frozenset(saved_uids)
                return lambda q, u, m, s: u in saved
            largest = last_seq if name == "SEQ" else last_uid
            ranges = [(largest if a is None else a, largest if b is None else b)
                      for a, b in seq.ranges]
            ranges = [(min(a, b), max(a, b)) for a, b in ranges]
            if name == "SEQ":
                return lambda q, u, m, s: any(lo <= q <= hi for lo, hi in ranges)
            return lambda q, u, m, s: any(lo <= u <= hi for lo, hi in ranges)
        if name == "MODSEQ":
            n = args[0]
            return lambda q, u, m, s: m.modseq >= n
        if name in ("BEFORE", "ON", "SINCE"):
            start = _day(args[0])  # type: ignore[arg-type]
            if name == "BEFORE":
                return lambda q, u, m, s: m.internaldate < start
            if name == "SINCE":
                return lambda q, u, m, s: m.internaldate >= start
            end = start + 86400
            return lambda q, u, m, s: start <= m.internaldate < end
        if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            text[0] = True
            op, want = name[4:], args[0]

            def sent(q: int, u: int, m: Any, s: Source) -> bool:
                date = s.header(u).sent_date() or dt.datetime.fromtimestamp(
                    m.internaldate, dt.timezone.utc).date()
                return _compare(op, date, want)  # type: ignore[arg-type]
            return sent
        if name in ("OLDER", "YOUNGER"):
            n = args[0]
            if name == "OLDER":
                return lambda q, u, m, s: now_ts - m.internaldate > n  # type: ignore
            return lambda q, u, m, s: now_ts - m.internaldate <= n  # type: ignore
        needle = str(args[-1]).casefold() if args else ""
        if name in _ADDRESS_HEADERS or (name == "HEADER" and needle):
            field = _ADDRESS_HEADERS.get(name) or str(args[0]).lower()
            fields.add(field)
            return lambda q, u, m, s: any(needle in v for v in s.values(u, field))
        if name == "HEADER":  # an empty string matches any such field
            text[0] = True
            field = str(args[0])
            return lambda q, u, m, s: s.header(u).has_header(field)
        text[0] = True
        if name == "BODY":
            return lambda q, u, m, s: needle in s.texts(u)[1]
        if name == "TEXT":
            return lambda q, u, m, s: needle in s.texts(u)[0] or needle in s.texts(u)[1]
        return lambda q, u, m, s: False  # unknown keys never reach here

    test = build(key)
    return Program(test, frozenset(fields), text[0])
