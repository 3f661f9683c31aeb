"""SelectedMailbox: one session's selected state (RFC 3501 §3.3) over a store Folder.

It keeps what the client has been told: the message sequence numbers (RFC 3501 §2.3.1.2:
position in `uids`, ascending UID), each message's flags and MODSEQ, and the keywords
announced in FLAGS. `updates()` syncs the Folder and reports what changed since, as RFC
3501 §7 untagged responses: EXPUNGE (only where §7.4.1 allows it: never while answering
FETCH, STORE or SEARCH, whose sequence numbers must stay put; such expunges wait in
`pending_expunges`), FLAGS for new keywords, FETCH (FLAGS) for changes made by others,
EXISTS for new mail.

`MessageCache` keeps the octets and parse (message.Message) of recently used messages,
bounded in bytes, so FETCH of many headers or a SEARCH of text reads and parses each
file once; header-only uses (ENVELOPE, BODY[HEADER...]) read just the header.

Blocking (the Folder reads files and the index): runs in the session's worker thread.
Imports: stdlib, relay.mda.store, relay.mda.imap.{message,parser,responses}.
"""

from __future__ import annotations

import bisect
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from relay.mda.imap.message import Message
from relay.mda.imap.parser import SequenceSet
from relay.mda.imap.responses import SYSTEM_FLAGS, flag_list
from relay.mda.store import Folder, StoreError, StoreErrorKind
from relay.mda.store import Message as Stored

CACHE_BYTES = 16 * 1024 * 1024  # whole messages kept parsed
HEADER_CACHE_BYTES = 4 * 1024 * 1024  # header-only parses
_READ_CHUNK = 16 * 1024
_BLANK_LINE = re.compile(rb"\n\r?\n")


class Output(Protocol):
    """Where untagged responses go (the session's writer; a list in tests)."""

    def write(self, data: bytes) -> None: ...


class BadSequence(Exception):
    """A message sequence number beyond the mailbox (RFC 3501 §9 seq-number): BAD."""


class MailboxGone(Exception):
    """The selected mailbox was deleted, renamed or got a new UIDVALIDITY elsewhere."""


class SelectedMailbox:
    """The selected mailbox as this session's client knows it."""

    def __init__(self, folder: Folder, readonly: bool) -> None:
        self.folder = folder
        self.readonly = readonly
        self.uids: list[int] = []  # index + 1 = message sequence number
        self.messages: dict[int, Stored] = {}
        self.pending_expunges: set[int] = set()  # gone, EXPUNGE not yet sent
        self.keywords: set[str] = set()
        self.cache = MessageCache(folder)

    def open(self) -> None:
        """The first sync (SELECT): every message is new to the client."""
        for m in self._sync().added:
            self.uids.append(m.uid)
            self.messages[m.uid] = m
            self.keywords |= _keywords(m.flags)

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq(self, uid: int) -> int:
        return bisect.bisect_left(self.uids, uid) + 1

    def first_unseen(self) -> int | None:
        for i, uid in enumerate(self.uids):
            if "\\Seen" not in self.messages[uid].flags:
                return i + 1
        return None

    def resolve(self, seqset: SequenceSet, uid: bool) -> list[tuple[int, int]]:
        """(sequence number, UID) of every message in `seqset`, ascending.

        UID sets (RFC 3501 §6.4.8) silently skip UIDs not in the mailbox; "*" is the
        largest UID. Message numbers (§9 seq-number) must exist: BadSequence otherwise.
        """
        if seqset.saved:
            raise BadSequence("$ needs SEARCHRES, which is not supported")  # RFC 5182
        uids = self.uids
        if uid:
            out: list[tuple[int, int]] = []
            for lo, hi in seqset.resolve(uids[-1] if uids else 0):
                i, j = bisect.bisect_left(uids, lo), bisect.bisect_right(uids, hi)
                out.extend((k + 1, uids[k]) for k in range(i, j))
            return out
        # A number past the end is an error, unless it is paired with "*" ("7:*" means
        # 7 through the last, which may be below 7; in an empty mailbox it means none).
        for lo, hi in seqset.ranges:
            if lo is not None and hi is not None and max(lo, hi) > len(uids):
                raise BadSequence
        return [(n, uids[n - 1]) for lo, hi in seqset.resolve(len(uids))
                for n in range(lo, hi + 1)]

    # ---- changes ---------------------------------------------------------------------------

    def _sync(self):  # type: ignore[no-untyped-def]
        try:
            return self.folder.sync()
        except StoreError as exc:
            if exc.kind is StoreErrorKind.NONEXISTENT:
                raise MailboxGone(str(exc)) from None
            raise

    def updates(self, out: Output, allow_expunge: bool, condstore: bool) -> None:
        """Sync with the store and write what changed as untagged responses."""
        changes = self._sync()
        self.pending_expunges.update(u for u in changes.expunged if u in self.messages)
        if allow_expunge and self.pending_expunges:
            self.expunged(self.pending_expunges, out)
        changed = [m for m in changes.flags if m.uid in self.messages]
        fresh = _keywords(f for m in (*changed, *changes.added) for f in m.flags)
        if fresh - self.keywords:
            self.keywords |= fresh
            self.write_flags(out)
        for m in changed:
            self.messages[m.uid] = m
            self.write_flags_fetch(m.uid, out, with_uid=True, modseq=condstore)
        for m in changes.added:
            self.uids.append(m.uid)
            self.messages[m.uid] = m
        if changes.added:
            out.write(b"* %d EXISTS\r\n" % len(self.uids))  # RFC 3501 §7.3.1

    def expunged(self, uids: Iterable[int], out: Output) -> None:
        """Forget `uids` and tell the client (RFC 3501 §7.4.1: each EXPUNGE renumbers the
        messages after it, so they go out in ascending order of the numbers then valid)."""
        for uid in sorted(uids):
            if uid not in self.messages:
                continue
            seq = self.seq(uid)
            del self.uids[seq - 1]
            del self.messages[uid]
            self.cache.drop(uid)
            out.write(b"* %d EXPUNGE\r\n" % seq)
        self.pending_expunges.difference_update(uids)

    def store(self, uids: list[int], flags: Iterable[str], mode: str) -> list[Stored]:
        """Change flags in the store (Folder.store) and in what the client is told next;
        returns the messages that changed, with their new MODSEQ."""
        live = [u for u in uids if u not in self.pending_expunges]
        changed = self.folder.store(live, flags, mode)
        for m in changed:
            self.messages[m.uid] = m
        return changed

    def note_keywords(self, out: Output) -> None:
        """After our own STORE: announce keywords the client has not seen in FLAGS."""
        fresh = _keywords(f for m in self.messages.values() for f in m.flags)
        if fresh - self.keywords:
            self.keywords |= fresh
            self.write_flags(out)

    # ---- response pieces -------------------------------------------------------------------

    def write_flags(self, out: Output) -> None:
        """RFC 3501 §7.2.6 FLAGS and, when writable, §7.1 PERMANENTFLAGS (keywords may be
        created: "\\*")."""
        flags = [*SYSTEM_FLAGS, *sorted(self.keywords)]
        out.write(b"* FLAGS " + flag_list(flags) + b"\r\n")
        if self.readonly:
            out.write(b"* OK [PERMANENTFLAGS ()] No permanent flags permitted\r\n")
        else:
            out.write(b"* OK [PERMANENTFLAGS " + flag_list([*flags, "\\*"])
                      + b"] Flags permitted\r\n")

    def write_flags_fetch(self, uid: int, out: Output, *, with_uid: bool = False,
                          modseq: bool = False) -> None:
        """"* n FETCH (UID u FLAGS (...) MODSEQ (m))" for one message (RFC 3501 §7.4.2;
        MODSEQ once CONDSTORE is enabled, RFC 7162 §3.2)."""
        m = self.messages[uid]
        parts = [b"UID %d" % uid] if with_uid else []
        parts.append(b"FLAGS " + flag_list(m.flags))
        if modseq:
            parts.append(b"MODSEQ (%d)" % m.modseq)
        out.write(b"* %d FETCH (%s)\r\n" % (self.seq(uid), b" ".join(parts)))


def _keywords(flags: Iterable[str]) -> set[str]:
    return {f for f in flags if not f.startswith("\\")}


class MessageCache:
    """Octets and parses of the selected mailbox's messages, least recently used dropped
    first, at most `max_bytes` of whole messages and `max_header_bytes` of headers. One
    message larger than `max_bytes` is kept too (the last one used), so the several items
    of one FETCH do not read it again."""

    def __init__(self, folder: Folder, max_bytes: int = CACHE_BYTES,
                 max_header_bytes: int = HEADER_CACHE_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes
        self._full: OrderedDict[int, tuple[bytes, Message | None]] = OrderedDict()
        self._headers: OrderedDict[int, Message] = OrderedDict()
        self._full_bytes = 0
        self._header_bytes = 0
        self._big: tuple[int, bytes, Message | None] | None = None
        self.reads = 0  # files opened (for tests of what is read)

    def _get(self, uid: int) -> tuple[bytes, Message | None] | None:
        hit = self._full.get(uid)
        if hit is not None:
            self._full.move_to_end(uid)
            return hit
        if self._big is not None and self._big[0] == uid:
            return self._big[1], self._big[2]
        return None

    def raw(self, uid: int) -> bytes:
        """The whole message. Raises KeyError when it is gone."""
        hit = self._get(uid)
        if hit is not None:
            return hit[0]
        self.reads += 1
        data = self.folder.read(uid)
        self._put(uid, data, None)
        return data

    def message(self, uid: int) -> Message:
        """The whole message, parsed (BODYSTRUCTURE, sections, SEARCH text)."""
        raw = self.raw(uid)
        hit = self._get(uid)
        if hit is not None and hit[1] is not None:
            return hit[1]
        msg = Message(raw)
        self._put(uid, raw, msg)
        return msg

    def header(self, uid: int) -> Message:
        """A parse of the header alone (ENVELOPE, BODY[HEADER...]): the file is read only
        up to its blank line unless the whole message is already here."""
        hit = self._get(uid)
        if hit is not None:
            return hit[1] if hit[1] is not None else self.message(uid)
        msg = self._headers.get(uid)
        if msg is not None:
            self._headers.move_to_end(uid)
            return msg
        self.reads += 1
        with self.folder.open(uid) as f:
            head = _read_header(f)
        msg = Message(head)
        if len(head) <= self.max_header_bytes:
            self._headers[uid] = msg
            self._header_bytes += len(head)
            while self._header_bytes > self.max_header_bytes:
                _, old = self._headers.popitem(last=False)
                self._header_bytes -= len(old.raw)
        return msg

    def drop(self, uid: int) -> None:
        if self._big is not None and self._big[0] == uid:
            self._big = None
        hit = self._full.pop(uid, None)
        if hit is not None:
            self._full_bytes -= len(hit[0])
        head = self._headers.pop(uid, None)
        if head is not None:
            self._header_bytes -= len(head.raw)

    def _put(self, uid: int, raw: bytes, msg: Message | None) -> None:
        if len(raw) > self.max_bytes:
            self._big = (uid, raw, msg)
            return
        old = self._full.pop(uid, None)
        if old is not None:
            self._full_bytes -= len(old[0])
        self._full[uid] = (raw, msg)
        self._full_bytes += len(raw)
        while self._full_bytes > self.max_bytes:
            _, (data, _) = self._full.popitem(last=False)
            self._full_bytes -= len(data)


def _read_header(f) -> bytes:  # type: ignore[no-untyped-def]
    """The octets of a message up to and including the blank line ending its header (the
    whole file when there is none), read in chunks."""
    data = b""
    while True:
        chunk = f.read(_READ_CHUNK)
        if not chunk:
            return data
        start = max(0, len(data) - 2)
        data += chunk
        if data.startswith(b"\r\n"):
            return data[:2]
        if data.startswith(b"\n"):
            return data[:1]
        m = _BLANK_LINE.search(data, start)
        if m is not None:
            return data[: m.end()]
