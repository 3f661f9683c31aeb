"""SEARCH evaluation (RFC 3501 §6.4.4; MODSEQ RFC 7162 §3.1.5; OLDER/YOUNGER RFC 5032).

The parser has already turned the program into a `SearchKey` tree; `matches` decides one
message. Keys on flags, size, dates, numbers and mod-sequences read only the `MessageInfo`; the
message octets are loaded (once) only when a key looks at headers or text, and cheap keys are
tried first so an AND or OR can often finish without them.

String matching is a case-insensitive substring test (RFC 3501 §6.4.4), done with
str.casefold() on header text with RFC 2047 words decoded, and on body text with transfer
encodings and charsets undone (message.Message.body_text).

Imports: stdlib only, relay.mda.imap.parser and .message. No clock: `now` is a parameter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass

from relay.mda.imap.message import Message
from relay.mda.imap.parser import SearchKey, SequenceSet


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
