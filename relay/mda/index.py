"""MailboxIndex: the UID index beside one account's Maildir (Dovecot's dovecot.index role).

An LMDB environment at <maildir>/relay-index/ holds, per folder, what IMAP needs and a
Maildir cannot say: UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ (RFC 3501 §2.3.1.1, RFC 7162
§3.1.2), and per message uid -> (file name in cur/, flags incl. keywords, size,
INTERNALDATE, MODSEQ). Beside them: every live message under (uidvalidity, modseq, uid)
and a tombstone per expunge, so "what changed since MODSEQ m" is one key range (views
are brought up to date incrementally, Dovecot's transaction log role); and a header cache
(uid -> the message's header section, Dovecot's dovecot.index.cache role), filled on first
read and never invalidated: Maildir files do not change. And the \\Recent watermark
(RFC 3501 §2.3.2, Dovecot's first_recent_uid): the UIDs from it on are recent for the next
session to claim them (see IndexTxn.claim_recent). The directory has no leading
dot, so Maildir++ readers, which take every ".name" directory for a folder, ignore it.

The Maildir stays the truth. `scan` reconciles a folder's index with its files: files in
new/ move to cur/ (gaining ":2,") and get the next UIDs in arrival order; files renamed by
any tool update the system flags; files gone are expunged. A folder's first scan (a new or
rebuilt index) numbers the files already in cur/ before those it moves from new/, and puts
the recent watermark between them: as in Dovecot, what was still in new/ is recent. The
index is therefore rebuildable: when it is missing or unreadable it is created afresh and
every folder gets a new UIDVALIDITY on first use, as RFC 3501 §2.3.1.1 demands when UIDs
cannot be kept.
UIDVALIDITY values come from max(now, last issued + 1), the last one also kept in
<maildir>/relay-uidvalidity (Dovecot's dovecot-uidvalidity), so a rebuilt index never
reissues a value, even within the same second.

Theory of operation (concurrency): every change to the index happens inside an LMDB write
transaction, which is also the account's mutex across processes and threads: our own
file renames and unlinks in a folder happen while holding it, so a scan made under it
sees a cur/ that only outside tools can change. Readers never block (nor wait for each
other: only a map resize or a reopen excludes them). A scan is skipped while new/ and cur/
keep the mtimes recorded for them. Our own renames in cur/ record cur/'s new mtime (so a
flag change costs one rename and one small transaction, not a rescan). A change by an
outside tool within the same timestamp tick as a recorded mtime would not move it: so a
directory whose last scan was not at least MTIME_SLACK_NS after its mtime is rescanned
again, at most once per RESCAN_NS, until a scan has settled it (Dovecot's rule,
MAILDIR_SYNC_SECS). Checking for changes therefore costs three stat()s and one LMDB read,
cheap enough for an IDLE loop polling each second. What would break it: renaming or
unlinking files in cur/ without holding the write transaction (a scan might then miss a
file that readdir skipped mid-rename and expunge it, giving it a new UID later); opening
one environment twice in one process (use MailboxIndex.open, which shares it). An index
deleted under running servers is noticed (data.mdb's inode, checked at each refresh) and
reopened, so processes do not keep numbering in a stale copy.

Durability: transactions that number messages, change keywords, expunge or touch folders
are flushed (fdatasync) before they return, so a UID handed to a client survives a crash.
Flag changes that only rename a file (system flags: the file name is their durable truth,
and Dovecot does not fsync them either), recorded mtimes and header-cache fills are not.
LMDB without a sync per commit may be left inconsistent by a *system* crash (a process
crash loses nothing), so while unflushed commits may exist a marker file holding the boot
id sits in relay-index/ (written and fsynced before the first such commit); a background
thread flushes and removes it once the index has been quiet for QUIET_SECONDS. An index
found with a marker from another boot is rebuilt (new UIDVALIDITYs) rather than trusted.
Without a boot id (not Linux) every commit is synced.

Imports: lmdb, stdlib, relay.mda.maildir.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lmdb

from relay.mda import maildir

SCHEMA_VERSION = b"3"
INDEX_DIR = "relay-index"
UIDVALIDITY_FILE = "relay-uidvalidity"
REBUILD_LOCK = "relay-index.lock"
UNSYNCED_MARKER = "unsynced"  # in INDEX_DIR: the boot id while unflushed commits may exist
MTIME_SLACK_NS = 2_000_000_000
RESCAN_NS = 1_000_000_000  # an unsettled directory is rescanned at most this often
QUIET_SECONDS = 1.0  # flush and drop the marker after this long without a commit
TOMBSTONES_KEPT = 50_000  # expunges remembered, in MODSEQs (older views are rebuilt whole)
MAX_CACHED_HEADER = 256 * 1024  # larger header sections are read from the file each time
INBOX_KEY = b"INBOX"  # folder keys are Maildir++ directory names (".Work"); INBOX has none

# uidvalidity, uidnext, highestmodseq, new/ and cur/ mtime, last scan, tombstone floor,
# first recent UID
_FOLDER = struct.Struct(">IIQqqqQI")
_FOLDER_V2 = struct.Struct(">IIQqqqQ")
_FOLDER_V1 = struct.Struct(">IIQqq")
_ENTRY = struct.Struct(">QQdH")  # modseq, size, internaldate, len(file name)
_MSG_KEY = struct.Struct(">II")  # uidvalidity, uid: a folder's messages are one key range
_MOD_KEY = struct.Struct(">IQI")  # uidvalidity, modseq, uid: changes since a MODSEQ
_UV = struct.Struct(">I")
_SYSTEM = frozenset(maildir.LETTER_OF_FLAG)
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True, slots=True)
class FolderState:
    uidvalidity: int
    uidnext: int = 1
    highestmodseq: int = 1
    new_mtime: int = -1  # st_mtime_ns of new/ and cur/ as the index reflects them (-1: never)
    cur_mtime: int = -1
    scan_ns: int = 0  # wall clock (ns) of the stat()s of the last full scan
    expunge_floor: int = 0  # tombstones at or below this MODSEQ may have been pruned
    first_recent: int = 1  # UIDs from here on are \Recent for the next session to claim


@dataclass(frozen=True, slots=True)
class Entry:
    """One message as the index knows it; `filename` is its current name in cur/."""

    uid: int
    filename: str
    flags: frozenset[str]
    size: int
    internaldate: float
    modseq: int

    @property
    def base(self) -> str:
        return maildir.split_info(self.filename)[0]


_flag_sets: dict[bytes, frozenset[str]] = {}  # interned: a mailbox has few distinct sets


def flag_set(flags: Iterable[str]) -> frozenset[str]:
    """One shared frozenset per distinct set of flags (memory: views hold thousands)."""
    fs = frozenset(flags)
    raw = "\0".join(sorted(fs)).encode()
    return _intern_flags(raw, fs)


def _intern_flags(raw: bytes, fs: frozenset[str] | None = None) -> frozenset[str]:
    hit = _flag_sets.get(raw)
    if hit is None:
        if fs is None:
            text = raw.decode()
            fs = frozenset(text.split("\0")) if text else frozenset()
        if len(_flag_sets) < 65536:
            _flag_sets[raw] = fs
        hit = fs
    return hit


def _encode_entry(e: Entry) -> bytes:
    name = os.fsencode(e.filename)
    return (_ENTRY.pack(e.modseq, e.size, e.internaldate, len(name)) + name
            + "\0".join(sorted(e.flags)).encode())


def _decode_entry(uid: int, raw: bytes) -> Entry:
    modseq, size, date, n = _ENTRY.unpack_from(raw)
    start = _ENTRY.size
    return Entry(uid, os.fsdecode(bytes(raw[start:start + n])),
                 _intern_flags(bytes(raw[start + n:])), size, date, modseq)


def _decode_folder(raw: bytes) -> FolderState:
    # Older records lack fields: every message they number is taken as no longer recent
    # (their scans had already moved it out of new/).
    if len(raw) == _FOLDER_V1.size:  # schema 1: no scan time, no tombstones before now
        uv, uidnext, hms, new_m, cur_m = _FOLDER_V1.unpack(raw)
        return FolderState(uv, uidnext, hms, new_m, cur_m, 0, hms, uidnext)
    if len(raw) == _FOLDER_V2.size:  # schema 2: no recent watermark
        fields = _FOLDER_V2.unpack(raw)
        return FolderState(*fields, fields[1])
    return FolderState(*_FOLDER.unpack(raw))


class IndexTxn:
    """One read or write transaction over the index; the only code touching its layout."""

    def __init__(self, index: MailboxIndex, txn: lmdb.Transaction) -> None:
        self._index = index
        self._txn = txn
        self._modseq: dict[bytes, int] = {}  # folder key -> this transaction's MODSEQ
        self.durable = False  # flush at commit (set by changes a crash must not undo)
        self.changed = False

    def _must_sync(self) -> None:
        self.durable = self.changed = True

    # ---- folders ------------------------------------------------------------------------

    def folder(self, key: bytes) -> FolderState | None:
        raw = self._txn.get(key, db=self._index.folders_db)
        return None if raw is None else _decode_folder(raw)

    def _put_folder(self, key: bytes, st: FolderState) -> None:
        self.changed = True
        self._txn.put(key, _FOLDER.pack(st.uidvalidity, st.uidnext, st.highestmodseq,
                                        st.new_mtime, st.cur_mtime, st.scan_ns,
                                        st.expunge_floor, st.first_recent),
                       db=self._index.folders_db)

    def create_folder(self, key: bytes) -> FolderState:
        """A fresh record with a new UIDVALIDITY, replacing (and forgetting) any stale one."""
        self.drop_folder(key)
        self._must_sync()
        st = FolderState(self._index.allocate_uidvalidity(self._txn))
        self._put_folder(key, st)
        return st

    def drop_folder(self, key: bytes) -> None:
        old = self.folder(key)
        if old is None:
            return
        self._must_sync()
        self._txn.delete(key, db=self._index.folders_db)
        prefix = _UV.pack(old.uidvalidity)
        idx = self._index
        for db in (idx.messages_db, idx.modseq_db, idx.expunged_db, idx.headers_db):
            cursor = self._txn.cursor(db=db)
            if cursor.set_range(prefix):
                while cursor.key()[:4] == prefix and cursor.delete():
                    pass

    def move_folder(self, old: bytes, new: bytes) -> None:
        """Rename a folder's record; its UIDVALIDITY and UIDs go with it (RFC 3501 §6.3.5)."""
        st = self.folder(old)
        if st is not None:
            self._must_sync()
            self._txn.delete(old, db=self._index.folders_db)
            self._put_folder(new, replace(st, new_mtime=-1, cur_mtime=-1))

    def record_mtimes(self, key: bytes, new_mtime: int, cur_mtime: int,
                      scan_ns: int | None = None) -> None:
        st = self.folder(key)
        if st is not None:
            self._put_folder(key, replace(st, new_mtime=new_mtime, cur_mtime=cur_mtime,
                                          scan_ns=st.scan_ns if scan_ns is None else scan_ns))

    def adopt_cur_mtime(self, key: bytes, path: Path) -> None:
        """After our own renames or unlinks in cur/ (made under this transaction): record
        cur/'s new mtime, so they do not cost a rescan. The last scan stays as it was, so
        the directory counts as unsettled and is rescanned within RESCAN_NS: a change by
        another tool in the same timestamp tick is still found."""
        st = self.folder(key)
        if st is not None:
            self._put_folder(key, replace(st, cur_mtime=_mtime_ns(path / "cur")))

    def _next_modseq(self, key: bytes) -> int:
        """One new MODSEQ per folder per transaction (RFC 7162 §3.1.3: every change gets
        a mod-sequence above all before it); bumps HIGHESTMODSEQ."""
        if key not in self._modseq:
            st = self._require(key)
            self._modseq[key] = st.highestmodseq + 1
            self._put_folder(key, replace(st, highestmodseq=st.highestmodseq + 1))
        return self._modseq[key]

    def _require(self, key: bytes) -> FolderState:
        st = self.folder(key)
        if st is None:
            raise KeyError(f"no index record for folder {key!r}")
        return st

    def claim_recent(self, key: bytes, upto: int) -> tuple[int, int]:
        """Claim for one session the UIDs from the folder's recent watermark up to `upto`
        (exclusive, at most UIDNEXT) and move the watermark there: returns the claimed
        [lo, hi), empty when lo >= hi. RFC 3501 §2.3.2: one session is the first to be
        notified of a message and sees it \\Recent; being one write transaction, two
        sessions never claim the same UID. Not flushed: a claim lost in a crash only
        makes its messages recent once more."""
        st = self._require(key)
        hi = min(upto, st.uidnext)
        lo = st.first_recent
        if lo >= hi:
            return hi, hi
        self._put_folder(key, replace(st, first_recent=hi))
        return lo, hi

    # ---- messages -----------------------------------------------------------------------

    def entries(self, uidvalidity: int) -> list[Entry]:
        """Every message of the folder, ascending UID."""
        out: list[Entry] = []
        prefix = _UV.pack(uidvalidity)
        cursor = self._txn.cursor(db=self._index.messages_db)
        if not cursor.set_range(prefix):
            return out
        unpack = _MSG_KEY.unpack
        for k, v in cursor:
            if k[:4] != prefix:
                break
            out.append(_decode_entry(unpack(k)[1], v))
        return out

    def entry(self, uidvalidity: int, uid: int) -> Entry | None:
        raw = self._txn.get(_MSG_KEY.pack(uidvalidity, uid), db=self._index.messages_db)
        return None if raw is None else _decode_entry(uid, raw)

    def changes_since(self, uidvalidity: int, modseq: int) -> tuple[list[Entry], list[int]]:
        """Messages added or changed with a MODSEQ above `modseq` (ascending MODSEQ), and
        the UIDs expunged since. Only valid for `modseq` >= the folder's expunge_floor."""
        prefix = _UV.pack(uidvalidity)
        start = _MOD_KEY.pack(uidvalidity, modseq + 1, 0)
        uids: list[int] = []
        cursor = self._txn.cursor(db=self._index.modseq_db)
        if cursor.set_range(start):
            for k in cursor.iternext(values=False):
                if k[:4] != prefix:
                    break
                uids.append(_MOD_KEY.unpack(k)[2])
        changed = [e for e in (self.entry(uidvalidity, u) for u in uids) if e is not None]
        gone: list[int] = []
        cursor = self._txn.cursor(db=self._index.expunged_db)
        if cursor.set_range(start):
            for k in cursor.iternext(values=False):
                if k[:4] != prefix:
                    break
                gone.append(_MOD_KEY.unpack(k)[2])
        return changed, gone

    def add(self, key: bytes, filename: str, flags: Iterable[str], size: int,
            internaldate: float) -> Entry:
        """Register a file now in cur/ under the next UID (RFC 3501 §2.3.1.1: strictly
        ascending, never reused within this UIDVALIDITY)."""
        self._must_sync()
        modseq = self._next_modseq(key)
        st = self._require(key)
        e = Entry(st.uidnext, filename, flag_set(flags), size, internaldate, modseq)
        self._txn.put(_MSG_KEY.pack(st.uidvalidity, e.uid), _encode_entry(e),
                      db=self._index.messages_db)
        self._txn.put(_MOD_KEY.pack(st.uidvalidity, modseq, e.uid), b"",
                      db=self._index.modseq_db)
        self._put_folder(key, replace(st, uidnext=st.uidnext + 1))
        return e

    def update(self, key: bytes, e: Entry, filename: str, flags: Iterable[str]) -> Entry:
        """New name and flags for a message; MODSEQ moves only when the flags change.
        Durable only when keywords (which live nowhere else) change."""
        flags = flag_set(flags)
        if (flags - _SYSTEM) != (e.flags - _SYSTEM):
            self._must_sync()
        self.changed = True
        modseq = self._next_modseq(key) if flags != e.flags else e.modseq
        new = replace(e, filename=filename, flags=flags, modseq=modseq)
        st = self._require(key)
        self._txn.put(_MSG_KEY.pack(st.uidvalidity, e.uid), _encode_entry(new),
                      db=self._index.messages_db)
        if modseq != e.modseq:
            self._txn.delete(_MOD_KEY.pack(st.uidvalidity, e.modseq, e.uid),
                             db=self._index.modseq_db)
            self._txn.put(_MOD_KEY.pack(st.uidvalidity, modseq, e.uid), b"",
                          db=self._index.modseq_db)
        return new

    def remove(self, key: bytes, uid: int) -> None:
        """Forget an expunged message (HIGHESTMODSEQ moves, RFC 7162 §3.2.10), leaving a
        tombstone so views learn of it; tombstones older than TOMBSTONES_KEPT MODSEQs go."""
        self._must_sync()
        modseq = self._next_modseq(key)
        st = self._require(key)
        uv = st.uidvalidity
        old = self.entry(uv, uid)
        self._txn.delete(_MSG_KEY.pack(uv, uid), db=self._index.messages_db)
        self._txn.delete(_MSG_KEY.pack(uv, uid), db=self._index.headers_db)
        if old is not None:
            self._txn.delete(_MOD_KEY.pack(uv, old.modseq, uid), db=self._index.modseq_db)
        self._txn.put(_MOD_KEY.pack(uv, modseq, uid), b"", db=self._index.expunged_db)
        if modseq - st.expunge_floor > 2 * TOMBSTONES_KEPT:
            floor = modseq - TOMBSTONES_KEPT
            cursor = self._txn.cursor(db=self._index.expunged_db)
            prefix = _UV.pack(uv)
            if cursor.set_range(prefix):
                while (cursor.key()[:4] == prefix
                       and _MOD_KEY.unpack(cursor.key())[1] <= floor and cursor.delete()):
                    pass
            self._put_folder(key, replace(st, expunge_floor=floor))

    # ---- header cache ---------------------------------------------------------------------

    def header(self, uidvalidity: int, uid: int) -> bytes | None:
        """The cached header section of a message, or None."""
        raw = self._txn.get(_MSG_KEY.pack(uidvalidity, uid), db=self._index.headers_db)
        return None if raw is None else bytes(raw)

    def put_header(self, uidvalidity: int, uid: int, data: bytes) -> None:
        """Cache a header section (not flushed: a lost one is read from the file again)."""
        if len(data) <= MAX_CACHED_HEADER:
            self.changed = True
            self._txn.put(_MSG_KEY.pack(uidvalidity, uid), data, db=self._index.headers_db)

    # ---- reconciliation with the Maildir --------------------------------------------------

    def refresh(self, key: bytes, path: Path) -> FolderState:
        """scan() unless the folder's directories are unchanged since the last one (write
        transaction only: run before acting on flags another tool may have changed)."""
        st = self.folder(key)
        if st is not None and is_current(st, _mtime_ns(path / "new"), _mtime_ns(path / "cur"),
                                         time.time_ns()):
            return st
        return self.scan(key, path)

    def scan(self, key: bytes, path: Path) -> FolderState:
        """Make the folder's index match the Maildir at `path` (write transaction only).
        Raises FileNotFoundError when the folder's directory is gone."""
        st = self.folder(key)
        first = st is None  # a new or rebuilt index: what is in new/ will be recent
        if st is None:
            st = self.create_folder(key)
        new_dir, cur_dir = path / "new", path / "cur"
        # stat before listing: a change after this point leaves a newer mtime for next time.
        now = time.time_ns()
        new_mtime, cur_mtime = _mtime_ns(new_dir), _mtime_ns(cur_dir)
        from_new = _move_new(new_dir, cur_dir)
        listing = _list_cur(cur_dir)
        known = {e.base: e for e in self.entries(st.uidvalidity)}
        if any(base not in listing for base in known):
            # readdir may skip an entry an outside tool renamed while we listed (POSIX
            # leaves it unspecified): look again before calling anything expunged.
            listing = _list_cur(cur_dir)
        for base, e in known.items():
            name = listing.get(base)
            if name is None:
                self.remove(key, e.uid)
            elif name != e.filename:  # flags changed by another Maildir tool
                self.update(key, e, name, (e.flags - _SYSTEM) | maildir.flags_of(name))
        fresh = []
        for base, name in listing.items():
            if base in known:
                continue
            try:
                s = os.stat(cur_dir / name)
            except FileNotFoundError:
                continue
            recent = first and base in from_new  # numbered after cur/'s on a first scan
            fresh.append((recent, maildir.arrival_key(name, s.st_mtime), name, s))
        fresh.sort()
        watermark = None
        for recent, _, name, s in fresh:
            e = self.add(key, name, maildir.flags_of(name), s.st_size, s.st_mtime)
            if recent and watermark is None:
                watermark = e.uid
        if first:  # Dovecot's rule for a new index: what was in new/ is \Recent
            st = self._require(key)
            self._put_folder(key, replace(st, first_recent=watermark or st.uidnext))
        self.record_mtimes(key, new_mtime, cur_mtime, now)
        return self._require(key)


def _identity(index_dir: Path) -> tuple[int, int]:
    st = os.stat(index_dir / "data.mdb")
    return st.st_dev, st.st_ino


def _mtime_ns(path: Path) -> int:
    return os.stat(path).st_mtime_ns


def _move_new(new_dir: Path, cur_dir: Path) -> set[str]:
    """Maildir readers move new/ files to cur/, adding the info part; oldest first.
    Returns the base names (in cur/) of the files moved."""
    moved: set[str] = set()
    for name in sorted(os.listdir(new_dir)):
        if name.startswith("."):
            continue
        target = name if maildir.INFO in name else name + maildir.INFO
        if os.path.lexists(cur_dir / target):  # never overwrite a message
            target = maildir.unique_name(0) + maildir.INFO
        with contextlib.suppress(FileNotFoundError):
            os.rename(new_dir / name, cur_dir / target)
            moved.add(maildir.split_info(target)[0])
    return moved


def _list_cur(cur_dir: Path) -> dict[str, str]:
    """base name -> file name for every message file in cur/ (dot files are not mail)."""
    out: dict[str, str] = {}
    for name in os.listdir(cur_dir):
        if not name.startswith("."):
            out.setdefault(maildir.split_info(name)[0], name)
    return out


def is_current(st: FolderState, new_mtime: int, cur_mtime: int, now_ns: int) -> bool:
    """True when the folder's index may be taken to reflect its directories (no scan):
    their mtimes are those recorded, and either a scan has settled them (it ran
    MTIME_SLACK_NS after the newest mtime, so nothing in that tick escaped it) or the last
    scan is less than RESCAN_NS old."""
    if st.new_mtime != new_mtime or st.cur_mtime != cur_mtime:
        return False
    newest = max(new_mtime, cur_mtime)
    return st.scan_ns - newest > MTIME_SLACK_NS or now_ns - st.scan_ns < RESCAN_NS


def boot_id() -> str | None:
    """This boot's identity (Linux), or None."""
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


# ---- the environment ---------------------------------------------------------------------

_registry_lock = threading.Lock()
_registry: dict[Path, tuple[MailboxIndex, int]] = {}


class _Gate:
    """Transactions of one process share the gate; a map resize or a reopen of the
    environment takes it alone (LMDB requires no live transaction in the process then)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._exclusive = False

    def enter(self) -> None:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            if not self._active:
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _UnsyncedIndex(Exception):
    """The index holds a marker from another boot: commits may have been lost half-way."""


class MailboxIndex:
    """The index environment of one account's Maildir; one per process (see `open`)."""

    INITIAL_MAP = 1 << 30  # address space only: the file grows with the data

    @classmethod
    def open(cls, root: Path) -> MailboxIndex:
        """The process's shared index for the Maildir at `root` (LMDB must not be opened
        twice in one process); pair every open with release()."""
        key = root.resolve()
        with _registry_lock:
            index, refs = _registry.get(key, (None, 0))
            if index is None:
                index = cls(key)
            _registry[key] = (index, refs + 1)
            return index

    def release(self) -> None:
        with _registry_lock:
            index, refs = _registry[self.root]
            if refs > 1:
                _registry[self.root] = (index, refs - 1)
            else:
                del _registry[self.root]
                self._close()

    def __init__(self, root: Path) -> None:
        self.root = root
        self._wlock = threading.Lock()  # one write transaction at a time per process
        self._gate = _Gate()
        self._boot = boot_id()
        self._closed = False
        # Per-process state the store layer keeps beside the index (folder views).
        self.views: dict[bytes, Any] = {}
        self.views_lock = threading.Lock()
        self._dirs: dict[Path, tuple[str, str]] = {}  # folder path -> new/, cur/ (as str)
        # folder key -> (LMDB's last transaction id, its state then): see state()
        self._states: dict[bytes, tuple[int, FolderState | None]] = {}
        self._data_file = str(root / INDEX_DIR / "data.mdb")
        self._marker_path = str(root / INDEX_DIR / UNSYNCED_MARKER)
        try:
            self._open()
        except (lmdb.Error, ValueError, struct.error, _UnsyncedIndex):
            self._rebuild()

    @property
    def _marker(self) -> Path:
        return self.root / INDEX_DIR / UNSYNCED_MARKER

    def _open(self) -> None:
        path = self.root / INDEX_DIR
        path.mkdir(exist_ok=True)
        try:
            stale = (path / UNSYNCED_MARKER).read_text().strip() != self._boot
        except FileNotFoundError:
            stale = False
        if stale and (path / "data.mdb").exists():
            raise _UnsyncedIndex(str(path))
        # Without a boot id to tell a crash by, every commit is synced (see the module
        # docstring); with one, commits are flushed when they must be (IndexTxn.durable).
        sync = self._boot is None
        self.env = lmdb.open(str(path), map_size=self.INITIAL_MAP, max_dbs=8, subdir=True,
                             sync=sync, metasync=sync, readahead=False, max_readers=256)
        try:
            txn = self.env.begin(write=True)
            try:
                meta = self.env.open_db(b"meta", txn=txn)
                self.folders_db = self.env.open_db(b"folders", txn=txn)
                self.messages_db = self.env.open_db(b"messages", txn=txn)
                self.modseq_db = self.env.open_db(b"modseq", txn=txn)
                self.expunged_db = self.env.open_db(b"expunged", txn=txn)
                self.headers_db = self.env.open_db(b"headers", txn=txn)
                version = txn.get(b"version", db=meta)
                if version is None:
                    txn.put(b"version", SCHEMA_VERSION, db=meta)
                elif version == b"1":
                    self._upgrade_v1(txn)
                    txn.put(b"version", SCHEMA_VERSION, db=meta)
                elif version == b"2":  # schema 3 added the recent watermark (_decode_folder)
                    txn.put(b"version", SCHEMA_VERSION, db=meta)
                elif version != SCHEMA_VERSION:
                    raise ValueError(f"index schema {version!r} is not {SCHEMA_VERSION!r}")
                if not sync:
                    self._mark_unsynced()
            except BaseException:
                txn.abort()
                raise
            txn.commit()
            if not sync:
                self.env.sync(True)
                _flusher.watch(self)
            self.meta_db = meta
            self._identity = _identity(path)
        except BaseException:
            self.env.close()
            raise

    def _upgrade_v1(self, txn: lmdb.Transaction) -> None:
        """Schema 1 -> 2: index the live messages by MODSEQ; UIDs stay."""
        for key, raw in list(txn.cursor(db=self.folders_db)):
            st = _decode_folder(raw)
            itxn = IndexTxn(self, txn)
            itxn._put_folder(bytes(key), st)
            for e in itxn.entries(st.uidvalidity):
                txn.put(_MOD_KEY.pack(st.uidvalidity, e.modseq, e.uid), b"",
                        db=self.modseq_db)

    def _rebuild(self) -> None:
        """Move an unreadable index aside and start a fresh one; folders then get new
        UIDVALIDITYs as they are used (RFC 3501 §2.3.1.1). A lock keeps two processes
        from both doing it."""
        with open(self.root / REBUILD_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._open()  # another process may have rebuilt it meanwhile
                return
            except (lmdb.Error, ValueError, struct.error, _UnsyncedIndex):
                pass
            broken = self.root / INDEX_DIR
            shutil.rmtree(broken, ignore_errors=True)
            self._open()

    def _reopen_if_replaced(self) -> None:
        """An index deleted or replaced while we run (an operator's rm -rf) is reopened,
        so every process converges on the new one; views of the old one then fail their
        UIDVALIDITY check."""
        try:
            st = os.stat(self._data_file)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if current == self._identity:
            return
        with self._wlock, self._gate.alone():
            try:
                current = _identity(self.root / INDEX_DIR)
            except FileNotFoundError:
                current = None
            if current == self._identity:
                return
            self.env.close()
            try:
                self._open()
            except (lmdb.Error, ValueError, struct.error, _UnsyncedIndex):
                self._rebuild()
            self.views.clear()
            self._states.clear()

    def _close(self) -> None:
        _flusher.forget(self)
        with self._wlock, self._gate.alone():
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(lmdb.Error, OSError):
                self._clear_marker()
            self.env.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[IndexTxn]:
        gate = self._gate
        gate.enter()
        try:
            txn = self._begin(write=False)
            try:
                yield IndexTxn(self, txn)
            finally:
                txn.abort()
        finally:
            gate.leave()

    @contextlib.contextmanager
    def writing(self) -> Iterator[IndexTxn]:
        """A write transaction: the account's lock for index and cur/ changes. Commits
        when the block ends normally (flushed when the changes need it), aborts when it
        raises."""
        with self._wlock:
            self._grow_if_needed()
            gate = self._gate
            gate.enter()
            try:
                txn = self._begin(write=True)
                itxn = IndexTxn(self, txn)
                try:
                    yield itxn
                except BaseException as exc:
                    txn.abort()
                    if isinstance(exc, lmdb.MapFullError):  # one huge transaction (a first
                        self._grow_later = True  # scan): room for the caller's retry
                    raise
                if not itxn.changed:
                    txn.abort()
                    return
                if self._boot is not None:
                    self._mark_unsynced()
                txn.commit()
            finally:
                gate.leave()
            if self._boot is not None:
                if itxn.durable:
                    self.env.sync(True)
                _flusher.watch(self)  # drops the marker once the index is quiet

    _grow_later = False

    def _mark_unsynced(self) -> None:
        """Before a commit that will not be flushed at once (we hold the write lock): the
        marker must be on disk first, so a system crash cannot leave a half-written index
        that we would trust."""
        marker = self._marker
        try:
            os.stat(marker)
            return
        except FileNotFoundError:
            pass
        tmp = marker.with_name(f"{UNSYNCED_MARKER}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        maildir.write_file(tmp, f"{self._boot}\n".encode())
        os.replace(tmp, marker)
        maildir.fsync_dir(marker.parent)

    def _clear_marker(self) -> None:
        """Flush everything committed (by any process: we hold LMDB's write lock) and drop
        the marker."""
        txn = self.env.begin(write=True)
        try:
            self.env.sync(True)
            try:
                os.unlink(self._marker)
            except FileNotFoundError:
                return
            maildir.fsync_dir(self._marker.parent)
        finally:
            txn.abort()

    def flush_if_quiet(self, last_txnid: int | None) -> tuple[bool, int | None]:
        """For the flusher thread: when no transaction was committed (by any process)
        since `last_txnid`, flush and drop the marker. Returns (done, txnid now)."""
        with self._wlock:
            if self._closed:
                return True, None
            self._gate.enter()
            try:
                txnid = self.env.info()["last_txnid"]
                if txnid != last_txnid:
                    return False, txnid
                self._clear_marker()
                return True, txnid
            finally:
                self._gate.leave()

    def _begin(self, write: bool) -> lmdb.Transaction:
        try:
            return self.env.begin(write=write)
        except lmdb.MapResizedError:
            pass
        # Another process grew the map: adopt its size (no transaction may be live here).
        self._gate.leave()
        try:
            with self._gate.alone():
                with contextlib.suppress(lmdb.MapResizedError):
                    self.env.set_mapsize(0)
        finally:
            self._gate.enter()
        return self.env.begin(write=write)

    def _grow_if_needed(self) -> None:
        """Double the map before it can fill: a write transaction that hits MapFullError
        halfway through a Maildir change could not simply be retried."""
        info = self.env.info()
        used = (info["last_pgno"] + 1) * self.env.stat()["psize"]
        if used * 2 > info["map_size"] or self._grow_later:
            with self._gate.alone():
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            self._grow_later = False

    def allocate_uidvalidity(self, txn: lmdb.Transaction) -> int:
        """A UIDVALIDITY never issued before in this Maildir (time-based, like Dovecot)."""
        last = int(txn.get(b"uidvalidity", b"0", db=self.meta_db))
        file = self.root / UIDVALIDITY_FILE
        with contextlib.suppress(FileNotFoundError, ValueError):
            last = max(last, int(file.read_text().strip() or 0))
        value = max(int(time.time()), last + 1)
        if value > 0xFFFFFFFF:  # RFC 3501 nz-number is 32 bits; wrap (2106) rather than fail
            value = 1
        txn.put(b"uidvalidity", str(value).encode(), db=self.meta_db)
        tmp = file.with_name(f"{UIDVALIDITY_FILE}.{os.getpid()}.tmp")
        tmp.write_text(f"{value}\n")
        os.replace(tmp, file)
        return value

    # ---- conveniences over one transaction -------------------------------------------------

    def state(self, key: bytes) -> FolderState | None:
        """A folder's record now. Kept with LMDB's last transaction id (a commit by any
        process moves it), so asking again while nothing was committed reads no record."""
        gate = self._gate
        gate.enter()
        try:
            txnid = self.env.info()["last_txnid"]
            hit = self._states.get(key)
            if hit is not None and hit[0] == txnid:
                return hit[1]
            txn = self._begin(write=False)
            try:
                raw = txn.get(key, db=self.folders_db)
            finally:
                txn.abort()
        finally:
            gate.leave()
        # (A commit between reading the id and the record only makes the next ask read.)
        st = None if raw is None else _decode_folder(raw)
        self._states[key] = (txnid, st)
        return st

    def writer_busy(self) -> bool:
        """Whether a thread of this process holds (or waits for) the write lock now."""
        return self._wlock.locked()

    def commits_unflushed(self) -> bool:
        """Whether a commit that need not be flushed would now cost no fsync at all (the
        marker of unflushed commits is already in place)."""
        return self._boot is not None and os.path.exists(self._marker_path)

    def fresh(self, key: bytes, path: Path) -> FolderState | None:
        """The folder's state when the index reflects its directories now (what refresh()
        would return without scanning), else None. Three stat()s and one read."""
        self._reopen_if_replaced()
        dirs = self._dirs.get(path)
        if dirs is None:
            dirs = self._dirs[path] = (str(path / "new"), str(path / "cur"))
        new_mtime, cur_mtime = os.stat(dirs[0]).st_mtime_ns, os.stat(dirs[1]).st_mtime_ns
        st = self.state(key)
        if st is not None and is_current(st, new_mtime, cur_mtime, time.time_ns()):
            return st
        return None

    def refresh(self, key: bytes, path: Path) -> FolderState:
        """The folder's state after picking up any change on disk: three stat()s and one
        read when nothing changed, a scan under the write lock otherwise. Raises
        FileNotFoundError when the folder's directory is gone."""
        st = self.fresh(key, path)
        if st is not None:
            return st
        for _ in range(16):
            try:
                with self.writing() as w:
                    return w.refresh(key, path)  # another thread may have just scanned
            except lmdb.MapFullError:  # the map has doubled; a scan is safe to repeat
                continue
        raise lmdb.MapFullError("index map still full after growing")


class _Flusher:
    """One daemon thread per process: flushes indexes with unflushed commits and drops
    their markers once they have been quiet for QUIET_SECONDS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: weakref.WeakKeyDictionary[MailboxIndex, int | None] = \
            weakref.WeakKeyDictionary()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def watch(self, index: MailboxIndex) -> None:
        with self._lock:
            if index in self._watched:
                return
            self._watched[index] = None
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="relay-index-flush",
                                                daemon=True)
                self._thread.start()

    def forget(self, index: MailboxIndex) -> None:
        with self._lock:
            self._watched.pop(index, None)

    def _run(self) -> None:
        while True:
            time.sleep(QUIET_SECONDS)
            with self._lock:
                items = list(self._watched.items())
            if not items:
                with self._lock:
                    if not self._watched:
                        self._thread = None
                        return
                continue
            for index, last in items:
                try:
                    done, txnid = index.flush_if_quiet(last)
                except (lmdb.Error, OSError):
                    done, txnid = False, None
                with self._lock:
                    if index in self._watched:
                        if done:
                            del self._watched[index]
                        else:
                            self._watched[index] = txnid


_flusher = _Flusher()
