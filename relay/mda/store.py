"""MailStore: the mailbox API the IMAP and POP3 servers use (Dovecot's mail storage role).

Accounts are Maildirs (mda/maildir.py: layout, names, flags in file names) with a UID
index beside each (mda/index.py). A `Folder` is one session's view of a mailbox: it
changes only when its owner calls sync(), so message sequence numbers stay stable between
the points where RFC 3501 §7.4.1 / RFC 9051 §7.5.1 allow the server to report expunges.
Writes (store, append, copy, move, expunge) go to disk and index at once; other sessions,
in this process or another, see them at their next sync().

Views are cheap: each process keeps, per folder, one immutable `View` of the index (the
messages at one UIDNEXT/HIGHESTMODSEQ), brought up to date incrementally from the index's
changes-since-MODSEQ and shared by every session that has synced to it; a session copies
it only while it holds changes of its own not yet synced. So a SELECT, a sync with nothing
new, or a thousand IDLE sessions on one mailbox cost no per-message work or memory each.
`Caches` (one per MailStore, so per process) holds what the IMAP server parses from the
immutable message files, shared by all sessions and bounded in bytes.

\\Recent (RFC 3501 §2.3.2) is session state, never a stored flag: a Folder asked to
track it (IMAP SELECT claims, EXAMINE only looks) takes, at each sync that brings new
messages, the UIDs from the index's recent watermark up to its view's UIDNEXT
(IndexTxn.claim_recent, one write transaction, so exactly one session claims each message)
and keeps them as a few UID ranges (`RecentUids`).

Everything here blocks (files, fsync, LMDB); the IMAP and POP3 sessions call it from a
thread, never from the event loop. Several processes may use one account at once: index
changes are LMDB write transactions, which also serialise our renames in cur/; Maildir
renames are atomic; a file that vanished between listing and reading counts as expunged.

Imports: stdlib, relay.mda.{maildir,index}. Trust: names and flags come from IMAP clients
(validated here: StoreError); message bodies are opaque octets.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import errno
import fcntl
import os
import re
import shutil
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from relay.mda import maildir
from relay.mda.index import INBOX_KEY, Entry, FolderState, IndexTxn, MailboxIndex

# RFC 6154 special-use attributes of the folders ensure_defaults() creates.
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"}
SUBSCRIPTIONS_FILE = "relay-subscriptions"
DEFAULTS_MARKER = "relay-defaults"
POP3_LOCK_FILE = "relay-pop3.lock"

_SYSTEM_FLAGS = {f.lower(): f for f in ("\\Answered", "\\Deleted", "\\Draft", "\\Flagged",
                                        "\\Seen")}
_ATOM_SPECIALS = frozenset('(){ %*"\\]')  # RFC 3501 §9 atom-specials (and resp-specials)
HEADER_CHUNK = 16 * 1024  # reads of a header section
HEADER_BATCH = 256  # header cache fills per transaction
_BLANK_LINE = re.compile(rb"\n\r?\n")


class StoreErrorKind(str, enum.Enum):
    """Why a mailbox operation was refused; the IMAP server maps each to a response code
    (RFC 5530)."""

    EXISTS = "exists"  # CREATE/RENAME target exists: [ALREADYEXISTS]
    NONEXISTENT = "nonexistent"  # no such mailbox, or the selected one was deleted,
    #                              renamed or got a new UIDVALIDITY: [NONEXISTENT] / BYE
    INVALID = "invalid"  # a name or flag that cannot be: [CANNOT]
    INBOX = "inbox"  # DELETE INBOX (RFC 3501 §6.3.4): [CANNOT]
    HAS_CHILDREN = "has_children"  # DELETE of a folder with inferiors: [INUSE]


class StoreError(Exception):
    def __init__(self, kind: StoreErrorKind | str, detail: str = "") -> None:
        self.kind = StoreErrorKind(kind)
        self.detail = detail
        super().__init__(f"{self.kind.value}: {detail}" if detail else self.kind.value)


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """One LIST line: name ("/"-delimited), RFC 6154 attribute, \\Subscribed,
    \\HasChildren/\\HasNoChildren (RFC 3348)."""

    name: str
    special_use: str | None
    subscribed: bool
    has_children: bool


@dataclass(frozen=True, slots=True)
class Message:
    """A message as a session sees it. `flags` are IMAP forms ("\\Seen", keywords);
    `internaldate` is a POSIX time; `modseq` is its RFC 7162 mod-sequence; `filename` its
    name in cur/ when the view was made (a hint: it changes with the flags)."""

    uid: int
    flags: frozenset[str]
    size: int
    internaldate: float
    modseq: int
    filename: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Changes:
    """What sync() found: new messages, expunged UIDs, flag changes by others (all
    ascending by UID), and the mailbox's UIDNEXT and HIGHESTMODSEQ now."""

    added: list[Message]
    expunged: list[int]
    flags: list[Message]
    uidnext: int
    highestmodseq: int


class RecentUids:
    """The UIDs one session holds as \\Recent: ascending, disjoint [lo, hi) ranges, one
    per claim (merged when they touch), so a session costs a tuple, never a set of UIDs."""

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: tuple[tuple[int, int], ...] = ()

    def add(self, lo: int, hi: int) -> None:
        if lo >= hi:
            return
        ranges = self.ranges
        if ranges and ranges[-1][1] >= lo:  # claims only move up: touch the last one
            self.ranges = (*ranges[:-1], (min(ranges[-1][0], lo), max(ranges[-1][1], hi)))
        else:
            self.ranges = (*ranges, (lo, hi))

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __contains__(self, uid: int) -> bool:
        for lo, hi in self.ranges:
            if uid < lo:
                return False
            if uid < hi:
                return True
        return False

    def count(self, uids: list[int]) -> int:
        """How many of `uids` (ascending) are held."""
        return sum(bisect.bisect_left(uids, hi) - bisect.bisect_left(uids, lo)
                   for lo, hi in self.ranges)


_NO_RECENT = RecentUids()  # shared by Folders that do not track \Recent: never add to it


def _message(e: Entry) -> Message:
    return Message(e.uid, e.flags, e.size, e.internaldate, e.modseq, e.filename)


_UNKNOWN: Any = object()


class View:
    """One folder's messages at one (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ): immutable,
    shared by the sessions of a process. `uids` ascending; `msgs` uid -> Message;
    `mod_seqs`/`mod_uids` every message ordered by MODSEQ (what changed since a MODSEQ is
    a bisect away); `keywords` every keyword seen in the folder (a superset: keywords of
    expunged messages stay, as in Dovecot). Never mutate what it holds."""

    __slots__ = ("uidvalidity", "uidnext", "highestmodseq", "uids", "msgs", "mod_seqs",
                 "mod_uids", "keywords", "_first_unseen", "_unseen", "_size")

    def __init__(self, st: FolderState, uids: list[int], msgs: dict[int, Message],
                 mod_seqs: array, mod_uids: array, keywords: frozenset[str],
                 first_unseen: Any = _UNKNOWN) -> None:
        self.uidvalidity = st.uidvalidity
        self.uidnext = st.uidnext
        self.highestmodseq = st.highestmodseq
        self.uids = uids
        self.msgs = msgs
        self.mod_seqs = mod_seqs
        self.mod_uids = mod_uids
        self.keywords = keywords
        self._first_unseen = first_unseen  # uid, None (all seen) or _UNKNOWN
        self._unseen: int | None = None
        self._size: int | None = None

    @classmethod
    def build(cls, st: FolderState, entries: list[Entry]) -> View:
        msgs = {e.uid: _message(e) for e in entries}
        order = sorted((m.modseq, m.uid) for m in msgs.values())
        return cls(st, list(msgs), msgs, array("Q", [o[0] for o in order]),
                   array("Q", [o[1] for o in order]), _keywords({m.flags for m in msgs.values()}))

    def advance(self, st: FolderState, changed: list[Entry], gone: list[int]) -> View:
        """The view after `changed` (ascending MODSEQ, all above ours) and `gone`."""
        msgs = self.msgs.copy()
        mod_seqs, mod_uids = array("Q", self.mod_seqs), array("Q", self.mod_uids)
        for uid in (*gone, *(e.uid for e in changed)):
            old = msgs.get(uid)
            if old is None:
                continue
            lo = bisect.bisect_left(mod_seqs, old.modseq)
            hi = bisect.bisect_right(mod_seqs, old.modseq, lo)
            i = mod_uids.index(uid, lo, hi)
            del mod_seqs[i], mod_uids[i]
            if uid in gone:
                del msgs[uid]
        added = []
        first = self._first_unseen
        for e in changed:
            m = _message(e)
            if e.uid not in msgs:
                added.append(e.uid)
            msgs[e.uid] = m
            mod_seqs.append(m.modseq)
            mod_uids.append(m.uid)
            if first is not _UNKNOWN and "\\Seen" not in m.flags and (first is None
                                                                      or m.uid < first):
                first = m.uid
        uids = self.uids
        if gone:
            uids = [u for u in uids if u in msgs]
        if added:
            added.sort()
            uids = uids + added if not uids or added[0] > uids[-1] else sorted({*uids, *added})
        if first is not _UNKNOWN and first is not None and (
                first not in msgs or "\\Seen" in msgs[first].flags):
            first = _UNKNOWN  # the first unseen one was read or expunged: look again
        keywords = self.keywords
        fresh = _keywords({e.flags for e in changed})
        if not fresh <= keywords:
            keywords = keywords | fresh
        return View(st, uids, msgs, mod_seqs, mod_uids, keywords, first)

    def first_unseen(self) -> int | None:
        """The UID of the first message without \\Seen, or None."""
        if self._first_unseen is _UNKNOWN:
            msgs = self.msgs
            self._first_unseen = next((u for u in self.uids if "\\Seen" not in msgs[u].flags),
                                      None)
        return self._first_unseen

    def unseen(self) -> int:
        if self._unseen is None:
            self._unseen = sum("\\Seen" not in m.flags for m in self.msgs.values())
        return self._unseen

    def size(self) -> int:
        if self._size is None:
            self._size = sum(m.size for m in self.msgs.values())
        return self._size

    def changed_since(self, modseq: int) -> Iterable[int]:
        """UIDs of the messages added or changed with a MODSEQ above `modseq`."""
        return self.mod_uids[bisect.bisect_right(self.mod_seqs, modseq):]


def _keywords(flag_sets: Iterable[frozenset[str]]) -> frozenset[str]:
    return frozenset(f for fs in flag_sets for f in fs if not f.startswith("\\"))


def latest_view(index: MailboxIndex, key: bytes, path: Path) -> View:
    """The process's newest view of a folder, after picking up changes on disk.
    Raises FileNotFoundError (folder directory gone) or KeyError (no index record)."""
    st = index.refresh(key, path)
    view = index.views.get(key)
    if view is not None and (view.uidvalidity, view.uidnext, view.highestmodseq) == (
            st.uidvalidity, st.uidnext, st.highestmodseq):
        return view
    with index.views_lock:  # one builder per folder; the others take its result
        view = index.views.get(key)
        with index.reading() as r:
            st = r.folder(key)
            if st is None:
                raise KeyError(key)
            if view is not None and (view.uidvalidity, view.uidnext, view.highestmodseq) == (
                    st.uidvalidity, st.uidnext, st.highestmodseq):
                return view
            if (view is not None and view.uidvalidity == st.uidvalidity
                    and st.expunge_floor <= view.highestmodseq <= st.highestmodseq):
                changed, gone = r.changes_since(st.uidvalidity, view.highestmodseq)
                view = view.advance(st, changed, gone)
            else:
                view = View.build(st, r.entries(st.uidvalidity))
        index.views[key] = view
        return view


def read_header(f: BinaryIO) -> bytes:
    """The octets of a message up to and including the blank line ending its header (the
    whole file when there is none), read in chunks."""
    data = b""
    while True:
        chunk = f.read(HEADER_CHUNK)
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


class LruCache:
    """Values by key, least recently used dropped first beyond `max_bytes` (sizes as the
    caller counts them); thread-safe. A value bigger than the bound is not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        # No lock: each OrderedDict call is atomic (under the GIL), and a key evicted
        # between the two calls was simply a hit just before.
        items = self._items
        hit = items.get(key)
        if hit is None:
            return None
        try:
            items.move_to_end(key)
        except KeyError:
            pass
        return hit[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, n) = self._items.popitem(last=False)
                self._bytes -= n

    def has(self, key: Any) -> bool:
        return key in self._items

    def pop(self, key: Any) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]

    def __len__(self) -> int:
        return len(self._items)


class Caches:
    """What the servers of one process derive from message files (immutable, so never
    stale), shared by all sessions: parsed headers, whole messages, SEARCH columns."""

    def __init__(self, header_bytes: int = 16 << 20, message_bytes: int = 32 << 20,
                 column_bytes: int = 32 << 20) -> None:
        self.headers = LruCache(header_bytes)
        self.messages = LruCache(message_bytes)
        self.columns = LruCache(column_bytes)


def normalise_flags(flags: Iterable[str]) -> frozenset[str]:
    """IMAP flags as stored: system flags in their canonical case (RFC 3501 §2.3.2 says
    they are case-insensitive), \\Recent dropped (the server sets it, never a client).
    Raises StoreError(INVALID) for another "\\" flag or a keyword that is not an atom."""
    out = set()
    for flag in flags:
        low = flag.lower()
        if low in _SYSTEM_FLAGS:
            out.add(_SYSTEM_FLAGS[low])
        elif low == "\\recent":
            continue
        elif low == "$forwarded":
            out.add("$Forwarded")  # one spelling, so it maps to the Maildir "P" letter
        elif flag and flag.isascii() and flag.isprintable() and not _ATOM_SPECIALS & set(flag):
            out.add(flag)
        else:
            raise StoreError(StoreErrorKind.INVALID, f"flag {flag!r}")
    return frozenset(out)


def _canonical(name: str) -> str:
    """"INBOX" is case-insensitive (RFC 3501 §5.1), also as the first level of a name."""
    head, sep, rest = name.partition("/")
    return "INBOX" + sep + rest if head.upper() == "INBOX" else name


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir()


def _quick_write(index: MailboxIndex) -> bool:
    """Whether a write transaction that need not be flushed would now neither wait for
    another thread of this process nor flush anything (MailboxIndex.commits_unflushed)."""
    return not index.writer_busy() and index.commits_unflushed()


class MailStore:
    """All accounts' Maildirs under `root` (data_dir/mail); one per server process,
    created after the worker forked (an LMDB environment must not cross a fork)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._layout = maildir.MaildirStore(root)
        self._indexes: dict[Path, MailboxIndex] = {}
        self._lock = threading.Lock()
        self.caches = Caches()

    def account(self, address: str) -> Account:
        """The account "local@domain" (already normalised); creates its Maildir if missing."""
        try:
            path = self._layout.path_for(address)
        except ValueError as exc:
            raise StoreError(StoreErrorKind.INVALID, str(exc)) from None
        maildir.make_maildir(path, folder=False)
        with self._lock:
            index = self._indexes.get(path)
            if index is None:
                index = self._indexes[path] = MailboxIndex.open(path)
        return Account(address, path, index, self.caches)

    def close(self) -> None:
        with self._lock:
            for index in self._indexes.values():
                index.release()
            self._indexes.clear()


class Account:
    """One user's mailboxes: folder management (RFC 3501 §6.3), subscriptions, POP3 lock."""

    def __init__(self, address: str, path: Path, index: MailboxIndex,
                 caches: Caches | None = None) -> None:
        self.address = address
        self.path = path
        self.index = index
        self.caches = caches if caches is not None else Caches()

    # ---- names -------------------------------------------------------------------------------

    def _resolve(self, name: str) -> tuple[str, bytes, Path]:
        """(canonical name, index key, directory) of a mailbox name; StoreError(INVALID)."""
        canon = _canonical(name)
        if canon == "INBOX":
            return canon, INBOX_KEY, self.path
        try:
            dirname = maildir.folder_dirname(canon)
        except ValueError as exc:
            raise StoreError(StoreErrorKind.INVALID, str(exc)) from None
        return canon, dirname.encode(), self.path / dirname

    def _folder_dirs(self) -> dict[str, str]:
        """Maildir++ directory name -> mailbox name, for every folder but INBOX."""
        out = {}
        for entry in os.scandir(self.path):
            name = maildir.folder_name(entry.name)
            # ".INBOX" or ".inbox.x" would shadow INBOX names: not reachable, not listed.
            if name is None or _canonical(name) != name or name == "INBOX":
                continue
            if _is_maildir(Path(entry.path)):
                out[entry.name] = name
        return out

    def folders(self) -> list[FolderInfo]:
        """Every mailbox (RFC 3501 §6.3.8 LIST "" "*"): INBOX first, then sorted by name."""
        names = ["INBOX", *sorted(self._folder_dirs().values())]
        parents = {n.rsplit("/", i)[0] for n in names for i in range(1, n.count("/") + 1)}
        subscribed = set(self.subscriptions())
        return [FolderInfo(n, SPECIAL_USE.get(n), n in subscribed, n in parents) for n in names]

    def fresh(self, name: str, claim_recent: bool = False) -> bool:
        """Whether mailbox `name` exists and opening it (folder(), sync()) would cost no
        scan: the index reflects its directories now; with `claim_recent`, also that
        claiming its \\Recent messages would not wait (Folder.fresh)."""
        try:
            _, key, path = self._resolve(name)
            st = self.index.fresh(key, path)
        except (StoreError, FileNotFoundError):
            return False
        return st is not None and not (claim_recent and st.first_recent < st.uidnext
                                       and not _quick_write(self.index))

    def folder(self, name: str) -> Folder:
        """A new view of mailbox `name` (SELECT, EXAMINE, STATUS, APPEND, COPY target).
        Raises StoreError(NONEXISTENT)."""
        try:
            canon, key, path = self._resolve(name)
        except StoreError:
            raise StoreError(StoreErrorKind.NONEXISTENT, name) from None
        if not _is_maildir(path):
            raise StoreError(StoreErrorKind.NONEXISTENT, name)
        return Folder(self, canon, key, path)

    # ---- folder management -------------------------------------------------------------------

    def ensure_defaults(self) -> None:
        """First login: create Sent, Drafts, Trash and Junk (RFC 6154 special uses) and
        subscribe them and INBOX. Runs once per account (a marker file), so folders the
        user deletes later stay deleted."""
        marker = self.path / DEFAULTS_MARKER
        if marker.exists():
            return
        for name in SPECIAL_USE:
            with contextlib.suppress(StoreError):
                self.create(name)
        self._update_subscriptions(lambda subs: subs | {"INBOX", *SPECIAL_USE})
        marker.touch()

    def create(self, name: str) -> None:
        """CREATE (RFC 3501 §6.3.3), superiors included. Raises StoreError(EXISTS, INVALID).
        A trailing "/" is refused here: the IMAP layer strips it first (§6.3.3)."""
        canon, key, path = self._resolve(name)
        if canon == "INBOX" or _is_maildir(path):
            raise StoreError(StoreErrorKind.EXISTS, canon)
        self._create_superiors(canon)
        self._make(key, path, exist_ok=False)

    def _create_superiors(self, canon: str) -> None:
        levels = canon.split("/")
        for i in range(1, len(levels)):
            parent = "/".join(levels[:i])
            if parent != "INBOX":
                _, key, path = self._resolve(parent)
                if not _is_maildir(path):
                    self._make(key, path, exist_ok=True)

    def _make(self, key: bytes, path: Path, exist_ok: bool) -> None:
        """Build the folder's Maildir in tmp/, then rename it into place (atomic: a racing
        CREATE finds it complete or absent) and give it a fresh UIDVALIDITY."""
        staging = self.path / "tmp" / f"relay-folder-{maildir.unique_name(0)}"
        maildir.make_maildir(staging, folder=True)
        try:
            with self.index.writing() as w:
                try:
                    os.rename(staging, path)
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    if exist_ok:
                        return
                    raise StoreError(StoreErrorKind.EXISTS, path.name) from None
                w.create_folder(key)
            maildir.fsync_dir(self.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def delete(self, name: str) -> None:
        """DELETE (RFC 3501 §6.3.4). Subscriptions stay (§6.3.6). Raises StoreError(INBOX,
        NONEXISTENT, HAS_CHILDREN: Maildir++ cannot keep a \\Noselect parent, so, like
        Dovecot, we ask for the children to go first)."""
        canon, key, path = self._resolve(name)
        if canon == "INBOX":
            raise StoreError(StoreErrorKind.INBOX, "INBOX cannot be deleted")
        if not _is_maildir(path):
            raise StoreError(StoreErrorKind.NONEXISTENT, canon)
        if any(d.startswith(path.name + ".") for d in os.listdir(self.path)):
            raise StoreError(StoreErrorKind.HAS_CHILDREN, canon)
        trash = self.path / "tmp" / f"relay-deleted-{maildir.unique_name(0)}"
        with self.index.writing() as w:
            try:
                os.rename(path, trash)  # gone at once for every reader; removed below
            except FileNotFoundError:
                raise StoreError(StoreErrorKind.NONEXISTENT, canon) from None
            w.drop_folder(key)
        maildir.fsync_dir(self.path)
        shutil.rmtree(trash, ignore_errors=True)

    def rename(self, old: str, new: str) -> None:
        """RENAME (RFC 3501 §6.3.5): inferiors move too and keep their UIDVALIDITY and
        UIDs; superiors of `new` are created. Renaming INBOX moves its messages into a new
        folder and leaves INBOX (and its inferiors) in place. Subscriptions follow.
        Raises StoreError(NONEXISTENT, EXISTS, INVALID)."""
        ocanon, okey, opath = self._resolve(old)
        ncanon, nkey, npath = self._resolve(new)
        if not _is_maildir(opath):
            raise StoreError(StoreErrorKind.NONEXISTENT, ocanon)
        if ncanon == "INBOX" or _is_maildir(npath):
            raise StoreError(StoreErrorKind.EXISTS, ncanon)
        if ocanon == "INBOX":
            self.create(ncanon)
            inbox = self.folder("INBOX")
            inbox.sync()
            inbox.move([m.uid for m in inbox.messages()], ncanon)
            return
        if ncanon.startswith(ocanon + "/"):
            raise StoreError(StoreErrorKind.INVALID, "a mailbox cannot move under itself")
        self._create_superiors(ncanon)
        odir, ndir = opath.name, npath.name
        with self.index.writing() as w:
            moves = [(d, ndir + d[len(odir):]) for d in os.listdir(self.path)
                     if d == odir or d.startswith(odir + ".")]
            for _, target in moves:
                if len(target.encode()) > maildir.NAME_MAX:
                    raise StoreError(StoreErrorKind.INVALID, "name too long for an inferior")
                if os.path.lexists(self.path / target):
                    raise StoreError(StoreErrorKind.EXISTS, target)
            done: list[tuple[str, str]] = []
            try:
                for src, dst in moves:
                    os.rename(self.path / src, self.path / dst)
                    done.append((src, dst))
            except BaseException:
                for src, dst in reversed(done):
                    os.rename(self.path / dst, self.path / src)
                raise
            for src, dst in moves:
                w.move_folder(src.encode(), dst.encode())
        maildir.fsync_dir(self.path)

        def renamed(subs: set[str]) -> set[str]:
            return {ncanon + s[len(ocanon):] if s == ocanon or s.startswith(ocanon + "/")
                    else s for s in subs}

        self._update_subscriptions(renamed)

    # ---- subscriptions (RFC 3501 §6.3.6-7, a file beside the Maildir, not the index) ---------

    def subscribe(self, name: str, on: bool) -> None:
        """SUBSCRIBE / UNSUBSCRIBE. The mailbox need not exist (§6.3.6 lets a server keep
        names that are gone). Raises StoreError(INVALID) for an impossible name."""
        canon = self._resolve(name)[0]
        self._update_subscriptions(lambda subs: subs | {canon} if on else subs - {canon})

    def subscriptions(self) -> list[str]:
        """Every subscribed name, existing or not (LSUB, LIST (SUBSCRIBED)), sorted."""
        try:
            text = (self.path / SUBSCRIPTIONS_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return sorted({line for line in text.split("\n") if line})

    def _update_subscriptions(self, change) -> None:  # type: ignore[no-untyped-def]
        with self.index.writing():  # the account's lock for the read-modify-write
            before = set(self.subscriptions())
            after = change(before)
            if after == before:
                return
            path = self.path / SUBSCRIPTIONS_FILE
            tmp = path.with_name(f"{SUBSCRIPTIONS_FILE}.{os.getpid()}.tmp")
            maildir.write_file(tmp, "".join(f"{n}\n" for n in sorted(after)).encode())
            try:
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    # ---- POP3 ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock_pop3(self) -> Iterator[bool]:
        """The RFC 1939 §8 maildrop lock: yields True when this session holds it, False
        when another POP3 session (any process) does. flock belongs to the open file, so
        two sessions of one process exclude each other too."""
        fd = os.open(self.path / POP3_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
            else:
                yield True
        finally:
            os.close(fd)  # releases the lock


class Folder:
    """One session's view of a mailbox (SELECT / EXAMINE state, RFC 3501 §6.3.1).

    The view (messages(), uidnext, highestmodseq) moves only at sync(), and by this
    object's own store() and expunge()/move(); store, expunge and copy act on the
    messages in the view that still exist. The view is the process's shared `View` of
    the folder as of the last sync, or a private copy of it holding this object's own
    changes since (dropped again at the next sync)."""

    def __init__(self, account: Account, name: str, key: bytes, path: Path) -> None:
        self.account = account
        self.name = name
        self._key = key
        self._path = path
        self._cur = path / "cur"
        self._index = account.index
        self.uidvalidity = 0
        st = self._refresh()
        self.uidvalidity = st.uidvalidity
        self._uidnext = st.uidnext
        self._highestmodseq = st.highestmodseq
        self._base: View | None = None  # the shared view of the last sync
        self._msgs: dict[int, Message] = {}  # the view: _base's, or a private copy
        self._uids: list[int] = []
        self._private = False
        self.files_opened = 0  # message files opened (for tests of what is read)
        self.cache_id = (str(account.path), key)  # with uidvalidity and uid: cache keys
        # \Recent (module docstring): None (not tracked), True (claims), False (looks)
        self._claims: bool | None = None
        self.recent = _NO_RECENT  # the UIDs this session holds as \Recent
        self._recent_upto = 0  # UIDs below this have been claimed or looked at

    def track_recent(self, claim: bool) -> None:
        """Hold \\Recent messages from the next sync on (RFC 3501 §2.3.2): claim them
        (SELECT: no later session sees them recent, §6.3.1) or only look at them, leaving
        them to the next claimer (EXAMINE, §6.3.2). Call before the first sync."""
        self._claims = claim
        self.recent = RecentUids()

    def _take_recent(self, upto: int) -> None:
        """At a sync: hold as recent the UIDs below `upto` not claimed yet (claiming them
        in a write transaction of their own, made only when there are some)."""
        if self._claims is None or upto <= self._recent_upto:
            return
        st = self._index.state(self._key)
        if st is None or st.uidvalidity != self.uidvalidity:
            return  # gone: the sync says so
        lo, hi = max(st.first_recent, self._recent_upto), upto
        if self._claims and lo < hi:
            with self._index.writing() as w:
                self._check(w)
                lo, hi = w.claim_recent(self._key, upto)
        self._hold((lo, hi), upto)

    def _claim_in(self, txn: IndexTxn, upto: int) -> tuple[int, int] | None:
        """In the transaction that adds messages (APPEND, COPY/MOVE into this mailbox):
        claim them, and the unclaimed ones below, when this Folder claims; to be held
        (_hold) once the transaction has committed."""
        if not self._claims or upto <= self._recent_upto:
            return None
        return txn.claim_recent(self._key, upto)

    def _hold(self, claimed: tuple[int, int] | None, upto: int) -> None:
        """Keep a claim (or what a look found) once it is certain; UIDs below `upto` are
        then settled for this Folder."""
        if claimed is not None:
            self.recent.add(*claimed)
            self._recent_upto = max(self._recent_upto, upto)

    def __repr__(self) -> str:
        return f"<Folder {self.account.address} {self.name!r} uidvalidity={self.uidvalidity}>"

    @property
    def uidnext(self) -> int:
        return self._uidnext

    @property
    def highestmodseq(self) -> int:
        return self._highestmodseq

    def _gone(self) -> StoreError:
        return StoreError(StoreErrorKind.NONEXISTENT,
                          f"{self.name} was deleted, renamed or given a new UIDVALIDITY")

    def _refresh(self) -> FolderState:
        try:
            st = self._index.refresh(self._key, self._path)
        except FileNotFoundError:
            raise self._gone() from None
        if self.uidvalidity and st.uidvalidity != self.uidvalidity:
            raise self._gone()
        return st

    def _check(self, txn: IndexTxn) -> FolderState:
        st = txn.folder(self._key)
        if st is None or st.uidvalidity != self.uidvalidity:
            raise self._gone()
        return st

    def _latest(self) -> View:
        try:
            view = latest_view(self._index, self._key, self._path)
        except (FileNotFoundError, KeyError):
            raise self._gone() from None
        if view.uidvalidity != self.uidvalidity:
            raise self._gone()
        return view

    @property
    def watch_key(self) -> tuple[int, bytes]:
        """Equal for the Folders of one mailbox in this process (IDLE polls once each)."""
        return id(self._index), self._key

    def latest(self) -> View:
        """The process's newest view of this mailbox, leaving this one alone.
        Raises StoreError(NONEXISTENT)."""
        return self._latest()

    def fresh(self) -> bool:
        """Whether a sync now would cost no scan (only work in memory), nor wait to claim
        \\Recent messages (a write transaction, only when there are some to claim)."""
        try:
            st = self._index.fresh(self._key, self._path)
        except FileNotFoundError:
            return False
        if st is None:
            return False
        if self._claims and st.first_recent < st.uidnext:
            return _quick_write(self._index)
        return True

    def quick_flag_change(self) -> bool:
        """Whether a store() of system flags would now neither wait for another thread of
        this process nor flush anything (MailboxIndex.commits_unflushed)."""
        return _quick_write(self._index)

    def behind(self, view: View) -> bool:
        """Whether a sync would move this view to `view` (or drop changes of its own)."""
        return view is not self._base or self._private

    # ---- the view ------------------------------------------------------------------------------

    def sync(self) -> Changes:
        """Pick up what changed since this view's last sync: deliveries (moved new/ ->
        cur/ and numbered in arrival order), expunges and flag changes by other sessions,
        processes or Maildir tools. The first call returns every message as added. When
        nothing changed it costs three stat()s and one index read (fit for IDLE polling).
        Raises StoreError(NONEXISTENT) when the mailbox went away or was replaced."""
        latest = self._latest()
        if self._claims is not None and latest.uidnext > self._recent_upto:
            self._take_recent(latest.uidnext)
        base = self._base
        old_msgs, old_uids = self._msgs, self._uids
        self._base, self._msgs, self._uids, self._private = (latest, latest.msgs, latest.uids,
                                                             False)
        self._uidnext, self._highestmodseq = latest.uidnext, latest.highestmodseq
        if base is None:
            return Changes([latest.msgs[u] for u in latest.uids], [], [], latest.uidnext,
                           latest.highestmodseq)
        if latest is base and old_msgs is latest.msgs:
            return Changes([], [], [], latest.uidnext, latest.highestmodseq)
        msgs = latest.msgs
        added: list[Message] = []
        flags: list[Message] = []
        for uid in sorted(latest.changed_since(base.highestmodseq)):
            m = msgs[uid]
            old = old_msgs.get(uid)
            if old is None:
                added.append(m)
            elif old != m:
                flags.append(m)
        if len(old_msgs) + len(added) == len(msgs):
            expunged: list[int] = []  # every message we had is still there
        else:
            expunged = [u for u in old_uids if u not in msgs]
        return Changes(added, expunged, flags, latest.uidnext, latest.highestmodseq)

    def messages(self) -> list[Message]:
        """The view as of the last sync, ascending UID (sequence number = position + 1)."""
        msgs = self._msgs
        return [msgs[u] for u in self._uids]

    @property
    def view_uids(self) -> list[int]:
        """The view's UIDs, ascending (shared: never mutate it)."""
        return self._uids

    @property
    def view_messages(self) -> dict[int, Message]:
        """The view's messages by UID (shared: never mutate it)."""
        return self._msgs

    @property
    def shared_view(self) -> View | None:
        """The shared view this one equals, or None while it holds changes of its own."""
        return None if self._private else self._base

    def _own(self) -> None:
        """Copy the shared view before changing it."""
        if not self._private:
            self._msgs, self._uids, self._private = dict(self._msgs), list(self._uids), True

    def status(self) -> dict[str, int]:
        """STATUS items (RFC 3501 §6.3.10, RFC 7162 HIGHESTMODSEQ, RFC 8438 SIZE) of the
        mailbox now, leaving this view alone. RECENT counts the messages no session has
        claimed yet, claiming none."""
        view = self._latest()
        st = self._index.state(self._key)
        first = (st.first_recent if st is not None and st.uidvalidity == view.uidvalidity
                 else view.uidnext)
        recent = len(view.uids) - bisect.bisect_left(view.uids, first)
        return {"MESSAGES": len(view.msgs), "RECENT": recent, "UIDNEXT": view.uidnext,
                "UIDVALIDITY": view.uidvalidity, "UNSEEN": view.unseen(),
                "HIGHESTMODSEQ": view.highestmodseq, "SIZE": view.size()}

    # ---- reading -------------------------------------------------------------------------------

    def _current(self, uid: int) -> tuple[Entry, Path] | None:
        """The message's index entry and file now, following renames by other tools."""
        for attempt in range(2):
            with self._index.reading() as r:
                e = r.entry(self.uidvalidity, uid)
            if e is None:
                return None
            path = self._cur / e.filename
            if os.path.lexists(path):
                return e, path
            if attempt == 0:
                self._refresh()
        return None

    def path(self, uid: int) -> Path:
        """The message file, for streaming reads. Raises KeyError when `uid` is not in the
        view or was expunged. A concurrent flag change renames the file: on
        FileNotFoundError ask again (or use open())."""
        if uid not in self._msgs:
            raise KeyError(uid)
        found = self._current(uid)
        if found is None:
            raise KeyError(uid)
        return found[1]

    def open(self, uid: int) -> BinaryIO:
        """The message file opened for reading, retrying across concurrent renames."""
        m = self._msgs.get(uid)
        if m is None:
            raise KeyError(uid)
        if m.filename:
            try:  # the name the view knows is right unless the flags changed since
                f = open(self._cur / m.filename, "rb")  # noqa: SIM115
                self.files_opened += 1
                return f
            except FileNotFoundError:
                pass
        for _ in range(3):
            try:
                f = self.path(uid).open("rb")
                self.files_opened += 1
                return f
            except FileNotFoundError:
                continue
        raise KeyError(uid)

    def read(self, uid: int) -> bytes:
        """The whole message. Raises KeyError when it is gone."""
        with self.open(uid) as f:
            return f.read()

    def headers(self, uids: Iterable[int]) -> dict[int, bytes]:
        """The header sections of the messages `uids` of the view that can still be read:
        from the index's header cache, else from their files (then cached there)."""
        uids = [u for u in uids if u in self._msgs]
        out: dict[int, bytes] = {}
        if not uids:
            return out
        uv = self.uidvalidity
        with self._index.reading() as r:
            for uid in uids:
                data = r.header(uv, uid)
                if data is not None:
                    out[uid] = data
        fill: list[tuple[int, bytes]] = []
        for uid in uids:
            if uid in out:
                continue
            try:
                with self.open(uid) as f:
                    out[uid] = data = read_header(f)
            except KeyError:
                continue
            fill.append((uid, data))
        for i in range(0, len(fill), HEADER_BATCH):
            self._cache_headers(fill[i:i + HEADER_BATCH])
        return out

    def _cache_headers(self, items: list[tuple[int, bytes]]) -> None:
        with contextlib.suppress(StoreError), self._index.writing() as w:
            self._check(w)
            for uid, data in items:
                if w.entry(self.uidvalidity, uid) is not None:  # not expunged meanwhile
                    w.put_header(self.uidvalidity, uid, data)

    # ---- changes -------------------------------------------------------------------------------

    def store(self, uids: list[int], flags: Iterable[str], mode: str) -> list[Message]:
        """STORE (RFC 3501 §6.4.6): mode "+" adds, "-" removes, "=" replaces `flags`.
        System flags are renamed into the file name; keywords live in the index. Returns
        the messages whose flags changed (each with a new MODSEQ, RFC 7162 §3.1.3);
        unchanged ones keep their modseq. Raises StoreError(INVALID) for a bad flag."""
        if mode not in ("+", "-", "="):
            raise ValueError(f"store mode {mode!r}")
        wanted = normalise_flags(flags)
        cur = self._cur
        changed: list[Message] = []
        targets = sorted({u for u in uids if u in self._msgs})
        if not targets:
            return changed
        with self._index.writing() as w:
            self._check(w)
            w.refresh(self._key, self._path)  # act on the flags in the file names now
            renamed = False
            for uid in targets:
                for attempt in range(2):
                    e = w.entry(self.uidvalidity, uid)
                    if e is None:
                        break
                    new = (e.flags | wanted if mode == "+" else
                           e.flags - wanted if mode == "-" else wanted)
                    if new == e.flags:
                        break
                    name = maildir.with_flags(e.filename, new)
                    try:
                        if name != e.filename:
                            os.rename(cur / e.filename, cur / name)
                            renamed = True
                    except FileNotFoundError:
                        if attempt == 0:  # renamed or removed by another Maildir tool
                            w.scan(self._key, self._path)
                        continue
                    changed.append(_message(w.update(self._key, e, name, new)))
                    break
            if renamed:
                w.adopt_cur_mtime(self._key, self._path)
        if changed:
            self._own()
            for m in changed:
                self._msgs[m.uid] = m
        return changed

    def append(self, data: bytes, flags: Iterable[str] = (),
               internaldate: float | None = None) -> int:
        """APPEND (RFC 3501 §6.3.11): written to tmp/, fsynced, renamed into cur/ with its
        flags; returns the UID (RFC 4315 APPENDUID). The view sees it at the next sync.
        \\Recent: a Folder that claims (the selected one) claims it now; else the next
        session to select the mailbox does."""
        wanted = normalise_flags(flags)
        base = maildir.unique_name(len(data))
        tmp = self._path / "tmp" / base
        try:
            st = maildir.write_file(tmp, data, internaldate)
        except FileNotFoundError:
            raise self._gone() from None
        final = self._cur / maildir.with_flags(base, wanted)
        try:
            with self._index.writing() as w:
                self._check(w)
                w.refresh(self._key, self._path)
                os.rename(tmp, final)
                maildir.fsync_dir(final.parent)
                uid = w.add(self._key, final.name, wanted, st.st_size, st.st_mtime).uid
                w.adopt_cur_mtime(self._key, self._path)
                claimed = self._claim_in(w, uid + 1)
        except BaseException:
            tmp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)  # the index refused it: the client hears NO
            raise
        self._hold(claimed, uid + 1)
        return uid

    def copy(self, uids: list[int], dest: Folder | str) -> list[tuple[int, int]]:
        """COPY (RFC 3501 §6.4.7) with flags and INTERNALDATE kept: hard links (copies
        across file systems) staged in the target's tmp/, then all registered in one
        transaction, so the target gets every message or none. Returns (source uid, new
        uid) pairs (RFC 4315 COPYUID); messages expunged meanwhile are skipped."""
        target = dest if isinstance(dest, Folder) else self.account.folder(dest)
        self._refresh()  # copy the flags as they are now
        staged: list[tuple[Entry, str, Path]] = []
        try:
            for uid in sorted(set(uids) & self._msgs.keys()):
                for _ in range(3):
                    found = self._current(uid)
                    if found is None:
                        break
                    entry, src = found
                    base = maildir.unique_name(entry.size)
                    tmp = target._path / "tmp" / base
                    try:
                        maildir.link_or_copy(src, tmp)
                    except FileNotFoundError:
                        if not (target._path / "tmp").is_dir():
                            raise target._gone() from None
                        continue  # renamed under us (a flag change): look again
                    staged.append((entry, base, tmp))
                    break
            return target._register(staged)
        finally:
            for _, _, tmp in staged:
                tmp.unlink(missing_ok=True)

    def _register(self, staged: list[tuple[Entry, str, Path]]) -> list[tuple[int, int]]:
        """Move staged files into cur/ and number them, in one transaction."""
        cur = self._cur
        pairs: list[tuple[int, int]] = []
        placed: list[Path] = []
        claimed = None
        try:
            with self._index.writing() as w:
                self._check(w)
                w.refresh(self._key, self._path)
                for e, base, tmp in staged:
                    final = cur / maildir.with_flags(base, e.flags)
                    os.rename(tmp, final)
                    placed.append(final)
                    new = w.add(self._key, final.name, e.flags, e.size, e.internaldate)
                    pairs.append((e.uid, new.uid))
                if placed:
                    maildir.fsync_dir(cur)
                    w.adopt_cur_mtime(self._key, self._path)
                    claimed = self._claim_in(w, pairs[-1][1] + 1)  # as append()
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            raise
        if pairs:
            self._hold(claimed, pairs[-1][1] + 1)
        return pairs

    def move(self, uids: list[int], dest: Folder | str) -> list[tuple[int, int]]:
        """MOVE (RFC 6851 §3.3): copy, then expunge the sources whatever their flags.
        Returns the COPYUID pairs; the moved UIDs leave this view (send their EXPUNGEs)."""
        pairs = self.copy(uids, dest)
        self._remove([src for src, _ in pairs], only_deleted=False)
        return pairs

    def expunge(self, uids: list[int] | None = None) -> list[int]:
        """EXPUNGE (RFC 3501 §6.4.3), or UID EXPUNGE (RFC 4315 §2.1) when `uids` is given:
        removes the view's messages flagged \\Deleted. Returns their UIDs ascending, now
        out of the view."""
        return self._remove(list(self._uids) if uids is None else uids, only_deleted=True)

    def _remove(self, uids: list[int], only_deleted: bool) -> list[int]:
        cur = self._cur
        gone: list[int] = []
        targets = sorted({u for u in uids if u in self._msgs})
        if not targets:
            return gone
        with self._index.writing() as w:
            self._check(w)
            w.refresh(self._key, self._path)  # \Deleted as the file names say now
            for uid in targets:
                for attempt in range(2):
                    e = w.entry(self.uidvalidity, uid)
                    if e is None or (only_deleted and "\\Deleted" not in e.flags):
                        break
                    try:
                        os.unlink(cur / e.filename)
                    except FileNotFoundError:
                        if attempt == 0:  # renamed or removed by another Maildir tool
                            w.scan(self._key, self._path)
                        continue
                    w.remove(self._key, uid)
                    gone.append(uid)
                    break
            if gone:
                maildir.fsync_dir(cur)
                w.adopt_cur_mtime(self._key, self._path)
        if gone:
            self._own()
            drop = set(gone)
            for uid in gone:
                del self._msgs[uid]
            self._uids = [u for u in self._uids if u not in drop]
        return gone
