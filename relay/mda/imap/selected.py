"""SelectedMailbox: one session's selected state (RFC 3501 §3.3) over a store Folder.

It keeps what the client has been told: the message sequence numbers (RFC 3501 §2.3.1.2:
position in `uids`, ascending UID), each message's flags and MODSEQ, and the keywords
announced in FLAGS. `updates()` syncs the Folder and reports what changed since, as RFC
3501 §7 untagged responses: EXPUNGE (only where §7.4.1 allows it: never while answering
FETCH, STORE or SEARCH, whose sequence numbers must stay put; such expunges wait in
`pending_expunges`), FLAGS for new keywords, FETCH (FLAGS) for changes made by others,
EXISTS for new mail, then RECENT when the number of \\Recent messages changed (RFC 3501
§7.3.2). What the client knows is the Folder's view itself (shared by every session of the
process synced to the same state: no per-session copy), except while expunges wait to be
reported: then the session keeps its own numbering.

\\Recent is the Folder's (views.RecentUids: the UIDs this session claimed at SELECT and
at each sync since, or only looked at after EXAMINE); it is added to a message's flags
only where they are written (`flags`), never stored.

`MessageCache` gives a session the octets and parses (message.Message) of messages from
the process's shared caches (caches.Caches: the files never change), so FETCH of many
headers, a SEARCH of headers or text, or the next session asking the same, reads and
parses each file once; header-only uses (ENVELOPE, BODY[HEADER...], SEARCH on header
fields) read just the header, from the index's header cache when it has it. SEARCH on
header fields reads decoded, case-folded field values kept per folder (`columns`).

Blocking (the Folder reads files and the index): runs in the session's worker thread.
Imports: stdlib, relay.mda.{folder,model}, relay.mda.imap.{message,responses,sequence_set}.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Protocol

from relay.mda.folder import Folder
from relay.mda.imap.message import Message
from relay.mda.imap.responses import SYSTEM_FLAGS, flag_list
from relay.mda.imap.sequence_set import SequenceSet
from relay.mda.model import StoreError, StoreErrorKind
from relay.mda.model import Message as Stored

CACHE_BYTES = 16 * 1024 * 1024  # a message above this is kept only while a session uses it
PREFETCH = 256  # header sections read per batch
# Header fields whose decoded values SEARCH keeps per folder, computed together.
COLUMNS = ("from", "to", "cc", "bcc", "subject")


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
        self.pending_expunges: set[int] = set()  # gone, EXPUNGE not yet sent
        self.keywords: set[str] = set()
        self.cache = MessageCache(folder)
        # While expunges are pending, the numbering and messages the client knows (the
        # Folder's view plus the pending ones); None: the Folder's view is the client's.
        self._uids: list[int] | None = None
        self._msgs: dict[int, Stored] | None = None
        self.recent_told = 0  # the number of \Recent messages the client was last told

    @property
    def uids(self) -> list[int]:
        """UIDs in sequence-number order (index + 1 = number). Do not mutate."""
        return self._uids if self._uids is not None else self.folder.view_uids

    @property
    def messages(self) -> dict[int, Stored]:
        """The client's view of each message by UID. Do not mutate."""
        return self._msgs if self._msgs is not None else self.folder.view_messages

    def open(self) -> None:
        """The first sync (SELECT): every message is new to the client; a read-write
        session claims the \\Recent ones (RFC 3501 §6.3.1), EXAMINE only looks (§6.3.2)."""
        self.folder.track_recent(claim=not self.readonly)
        self._sync()
        self.recent_told = self.recent_count()
        view = self.folder.shared_view
        if view is not None:
            self.keywords = set(view.keywords)
        else:
            self.keywords = _keywords(f for m in self.messages.values() for f in m.flags)

    @property
    def exists(self) -> int:
        return len(self.uids)

    def recent_count(self) -> int:
        """RFC 3501 §7.3.2 RECENT: the messages the client knows that are \\Recent here."""
        recent = self.folder.recent
        return recent.count(self.uids) if recent else 0

    def flags(self, uid: int) -> frozenset[str]:
        """A message's flags as the client sees them: \\Recent added when it is recent in
        this session (RFC 3501 §2.3.2)."""
        flags = self.messages[uid].flags
        return with_recent(flags) if uid in self.folder.recent else flags

    def seq(self, uid: int) -> int:
        return bisect.bisect_left(self.uids, uid) + 1

    def first_unseen(self) -> int | None:
        view = self.folder.shared_view
        if self._uids is None and view is not None:
            uid = view.first_unseen()
            return None if uid is None else self.seq(uid)
        msgs = self.messages
        for i, uid in enumerate(self.uids):
            if "\\Seen" not in msgs[uid].flags:
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
        old_uids, old_msgs = self.uids, self.messages  # the sync replaces, never mutates
        changes = self._sync()
        if not (changes.added or changes.expunged or changes.flags):
            if allow_expunge and self.pending_expunges:
                self.expunged(self.pending_expunges, out)
            return
        gone = [u for u in changes.expunged if u in old_msgs]
        if gone or self._uids is not None:
            if self._uids is None:  # keep the numbering the client knows
                self._uids, self._msgs = list(old_uids), dict(old_msgs)
            msgs = self._msgs
            assert msgs is not None
            self.pending_expunges.update(gone)
            for m in changes.flags:
                if m.uid in msgs:
                    msgs[m.uid] = m
            for m in changes.added:
                self._uids.append(m.uid)
                msgs[m.uid] = m
        if allow_expunge and self.pending_expunges:
            self.expunged(self.pending_expunges, out)
        msgs = self.messages
        changed = [m for m in changes.flags if m.uid in msgs]
        fresh = _keywords(f for m in (*changed, *changes.added) for f in m.flags)
        if fresh - self.keywords:
            self.keywords |= fresh
            self.write_flags(out)
        for m in changed:
            self.write_flags_fetch(m.uid, out, with_uid=True, modseq=condstore)
        if changes.added:
            out.write(b"* %d EXISTS\r\n" % len(self.uids))  # RFC 3501 §7.3.1
            recent = self.recent_count()
            if recent != self.recent_told:  # RFC 3501 §7.3.2, with EXISTS
                out.write(b"* %d RECENT\r\n" % recent)
                self.recent_told = recent

    def expunged(self, uids: Iterable[int], out: Output,
                 before: list[int] | None = None) -> None:
        """Tell the client that `uids` are gone and forget them (RFC 3501 §7.4.1: each
        EXPUNGE renumbers the messages after it, so they go out in ascending order of the
        numbers then valid). `before`: the numbering the client had, when the Folder has
        already dropped them (our own EXPUNGE or MOVE)."""
        numbering = self.uids if before is None else before
        done = 0
        gone = []
        for uid in sorted(uids):
            i = bisect.bisect_left(numbering, uid)
            if i == len(numbering) or numbering[i] != uid:
                continue
            gone.append(uid)
            self.cache.drop(uid)
            out.write(b"* %d EXPUNGE\r\n" % (i + 1 - done))
            done += 1
        self.pending_expunges.difference_update(gone)
        self.pending_expunges.difference_update(uids)
        if self._uids is not None:
            drop = set(gone)
            self._uids = [u for u in self._uids if u not in drop]
            assert self._msgs is not None
            for uid in gone:
                self._msgs.pop(uid, None)
            if not self.pending_expunges:  # the client's view is the Folder's again
                self._uids = self._msgs = None

    def store(self, uids: list[int], flags: Iterable[str], mode: str) -> list[Stored]:
        """Change flags in the store (Folder.store) and in what the client is told next;
        returns the messages that changed, with their new MODSEQ."""
        live = [u for u in uids if u not in self.pending_expunges]
        changed = self.folder.store(live, flags, mode)
        if self._msgs is not None:
            for m in changed:
                self._msgs[m.uid] = m
        return changed

    def note_keywords(self, out: Output, changed: Iterable[Stored] = ()) -> None:
        """After our own STORE: announce keywords the client has not seen in FLAGS."""
        fresh = _keywords(f for m in changed for f in m.flags)
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
        parts.append(b"FLAGS " + flag_list(self.flags(uid)))
        if modseq:
            parts.append(b"MODSEQ (%d)" % m.modseq)
        out.write(b"* %d FETCH (%s)\r\n" % (self.seq(uid), b" ".join(parts)))


def _keywords(flags: Iterable[str]) -> set[str]:
    return {f for f in flags if not f.startswith("\\")}


_with_recent: dict[frozenset[str], frozenset[str]] = {}


def with_recent(flags: frozenset[str]) -> frozenset[str]:
    """`flags` and \\Recent, one shared frozenset per distinct set (flag_list caches by
    it)."""
    hit = _with_recent.get(flags)
    if hit is None:
        hit = flags | {"\\Recent"}
        if len(_with_recent) < 4096:
            _with_recent[flags] = hit
    return hit


class MessageCache:
    """A session's access to message octets and parses, through the process's shared
    caches (caches.Caches). A message larger than `max_bytes` is not shared: the last one
    used is kept here, so the several items of one FETCH do not read it again."""

    def __init__(self, folder: Folder, max_bytes: int = CACHE_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.shared = folder.account.caches
        self._prefix = (*folder.cache_id, folder.uidvalidity)
        self._big: tuple[int, bytes, Message | None] | None = None
        self.full_reads = 0  # whole files read (for tests of what is read)

    @property
    def reads(self) -> int:
        """Message files opened by this session (for tests of what is read)."""
        return self.folder.files_opened

    def _key(self, uid: int) -> tuple:  # type: ignore[type-arg]
        return (*self._prefix, uid)

    def _get(self, uid: int) -> tuple[bytes, Message | None] | None:
        big = self._big
        if big is not None and big[0] == uid:
            return big[1], big[2]
        return self.shared.messages.get(self._key(uid))

    def raw(self, uid: int) -> bytes:
        """The whole message. Raises KeyError when it is gone."""
        hit = self._get(uid)
        if hit is not None:
            return hit[0]
        data = self.folder.read(uid)
        self.full_reads += 1
        self._put(uid, data, None)
        return data

    def message(self, uid: int) -> Message:
        """The whole message, parsed (BODYSTRUCTURE, sections, SEARCH text)."""
        hit = self._get(uid)
        if hit is not None and hit[1] is not None:
            return hit[1]
        raw = hit[0] if hit is not None else self.raw(uid)
        msg = Message(raw)
        self._put(uid, raw, msg)
        return msg

    def _put(self, uid: int, raw: bytes, msg: Message | None) -> None:
        if len(raw) > self.max_bytes:
            self._big = (uid, raw, msg)
            return
        # A parse holds about twice the octets again in offsets and fields.
        self.shared.messages.put(self._key(uid), (raw, msg), len(raw) * (3 if msg else 1))

    def header(self, uid: int) -> Message:
        """A parse of the header alone (ENVELOPE, BODY[HEADER...]): the file is read only
        up to its blank line (or not at all: the index caches header sections) unless the
        whole message is already here. Raises KeyError when it is gone."""
        msg = self.shared.headers.get(self._key(uid))
        if msg is not None:
            return msg
        hit = self._get(uid)
        if hit is not None:
            return hit[1] if hit[1] is not None else self.message(uid)
        parsed = self.headers_for([uid])
        if uid not in parsed:
            raise KeyError(uid)
        return parsed[uid]

    def headers_for(self, uids: Iterable[int]) -> dict[int, Message]:
        """Header parses of the readable messages among `uids`: from the shared cache,
        else read in batches (index header cache, else the files) and cached."""
        get, key = self.shared.headers.get, self._key
        out: dict[int, Message] = {}
        missing = []
        for uid in uids:
            msg = get(key(uid))
            if msg is None:
                missing.append(uid)
            else:
                out[uid] = msg
        for i in range(0, len(missing), PREFETCH):
            chunk = missing[i:i + PREFETCH]
            full = {}
            for uid in chunk:
                hit = self._get(uid)
                if hit is not None:
                    full[uid] = hit
            found = self.folder.headers([u for u in chunk if u not in full])
            for uid in chunk:
                if uid in full:
                    raw, msg = full[uid]
                    out[uid] = msg if msg is not None else self.message(uid)
                    continue
                data = found.get(uid)
                if data is None:
                    continue
                msg = Message.of_header(data)
                out[uid] = msg
                # A header parse is the octets and ~80 bytes of offsets per field line.
                self.shared.headers.put(key(uid), msg, len(data) * 4 + 512)
        return out

    def columns(self, uids: list[int], fields: Iterable[str]) -> dict[int, dict[str, tuple[str, ...]]]:
        """uid -> header field (lower case) -> its values, unfolded, RFC 2047-decoded and
        case-folded (SEARCH FROM/TO/CC/BCC/SUBJECT/HEADER), for the messages of `uids`
        that can be read. Kept per folder in the shared cache."""
        fields = tuple(fields)
        store = self.shared.columns
        table = store.get(self._prefix)
        if table is None:
            table = {}
        need = [u for u in uids if (c := table.get(u)) is None or any(f not in c for f in fields)]
        if need:
            wanted = tuple(dict.fromkeys((*COLUMNS, *fields)))
            for i in range(0, len(need), PREFETCH):
                chunk = need[i:i + PREFETCH]
                parsed = self.headers_for(chunk)
                for uid in chunk:
                    msg = parsed.get(uid)
                    if msg is None:
                        continue  # no longer readable
                    entry = table.get(uid) or {}
                    entry = {**entry, **{f: tuple(v.casefold() for v in msg.header_values(f))
                                         for f in wanted if f not in entry}}
                    table[uid] = entry
            store.put(self._prefix, table, 64 + len(table) * 700)  # measured ~680/message
        return table

    def has_headers(self, uids: Iterable[int]) -> bool:
        """Whether header parses of all `uids` are in memory (no reading needed)."""
        headers, messages, key = self.shared.headers, self.shared.messages, self._key
        return all(headers.has(key(u)) or messages.has(key(u)) for u in uids)

    def has_messages(self, uids: Iterable[int]) -> bool:
        """Whether all of `uids` are in memory whole (no reading needed)."""
        messages, key, big = self.shared.messages, self._key, self._big
        return all(messages.has(key(u)) or (big is not None and big[0] == u) for u in uids)

    def has_columns(self, uids: list[int], fields: Iterable[str]) -> bool:
        """Whether columns() of `uids` and `fields` needs no reading or parsing."""
        table = self.shared.columns.get(self._prefix)
        if table is None:
            return not uids
        if not table.keys() >= set(uids):
            return False
        extra = [f for f in fields if f not in COLUMNS]
        return not extra or all(all(f in table[u] for f in extra) for u in uids)

    def drop(self, uid: int) -> None:
        if self._big is not None and self._big[0] == uid:
            self._big = None

    def release(self) -> None:
        """End of a command: let go of a message too big to share."""
        self._big = None
