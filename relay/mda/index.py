"""MailboxIndex: the UID index beside one account's Maildir (Dovecot's dovecot.index role).

An LMDB environment at <maildir>/relay-index/ holds, per folder, what IMAP needs and a
Maildir cannot say: UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ (RFC 3501 §2.3.1.1, RFC 7162
§3.1.2), and per message uid -> (file name in cur/, flags incl. keywords, size,
INTERNALDATE, MODSEQ). The directory has no leading dot, so Maildir++ readers, which take
every ".name" directory for a folder, ignore it.

The Maildir stays the truth. `scan` reconciles a folder's index with its files: files in
new/ move to cur/ (gaining ":2,") and get the next UIDs in arrival order; files renamed by
any tool update the system flags; files gone are expunged. The index is therefore
rebuildable: when it is missing or unreadable it is created afresh and every folder gets a
new UIDVALIDITY on first use, as RFC 3501 §2.3.1.1 demands when UIDs cannot be kept.
UIDVALIDITY values come from max(now, last issued + 1), the last one also kept in
<maildir>/relay-uidvalidity (Dovecot's dovecot-uidvalidity), so a rebuilt index never
reissues a value, even within the same second.

Theory of operation (concurrency): every change to the index happens inside an LMDB write
transaction, which is also the account's mutex across processes and threads: our own
file renames and unlinks in a folder happen while holding it, so a scan made under it
sees a cur/ that only outside tools can change. Readers never block. A scan is skipped
while new/ and cur/ keep the mtimes recorded at the last scan and those are older than
MTIME_SLACK_NS (a change within the same timestamp tick would not move the mtime: the
rule Dovecot uses). So checking for changes costs three stat()s and one LMDB read, cheap
enough for an IDLE loop polling each second. What would break it: renaming or unlinking
files in cur/ without holding the write transaction (a scan might then miss a file that
readdir skipped mid-rename and expunge it, giving it a new UID later); opening one
environment twice in one process (use MailboxIndex.open, which shares it). An index
deleted under running servers is noticed (data.mdb's inode, checked at each refresh) and
reopened, so processes do not keep numbering in a stale copy.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import lmdb

from relay.mda import maildir

SCHEMA_VERSION = b"1"
INDEX_DIR = "relay-index"
UIDVALIDITY_FILE = "relay-uidvalidity"
REBUILD_LOCK = "relay-index.lock"
MTIME_SLACK_NS = 2_000_000_000
INBOX_KEY = b"INBOX"  # folder keys are Maildir++ directory names (".Work"); INBOX has none

_FOLDER = struct.Struct(">IIQqq")  # uidvalidity, uidnext, highestmodseq, new/ and cur/ mtime
_ENTRY = struct.Struct(">QQdH")  # modseq, size, internaldate, len(file name)
_MSG_KEY = struct.Struct(">II")  # uidvalidity, uid: a folder's messages are one key range
_UV = struct.Struct(">I")
_SYSTEM = frozenset(maildir.LETTER_OF_FLAG)


@dataclass(frozen=True, slots=True)
class FolderState:
    uidvalidity: int
    uidnext: int = 1
    highestmodseq: int = 1
    new_mtime: int = -1  # st_mtime_ns of new/ and cur/ when last scanned (-1: never)
    cur_mtime: int = -1


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


def _encode_entry(e: Entry) -> bytes:
    name = os.fsencode(e.filename)
    return (_ENTRY.pack(e.modseq, e.size, e.internaldate, len(name)) + name
            + "\0".join(sorted(e.flags)).encode())


def _decode_entry(uid: int, raw: bytes) -> Entry:
    modseq, size, date, n = _ENTRY.unpack_from(raw)
    start = _ENTRY.size
    flags = bytes(raw[start + n:]).decode()
    return Entry(uid, os.fsdecode(bytes(raw[start:start + n])),
                 frozenset(flags.split("\0")) if flags else frozenset(), size, date, modseq)


class IndexTxn:
    """One read or write transaction over the index; the only code touching its layout."""

    def __init__(self, index: MailboxIndex, txn: lmdb.Transaction) -> None:
        self._index = index
        self._txn = txn
        self._modseq: dict[bytes, int] = {}  # folder key -> this transaction's MODSEQ

    # ---- folders ------------------------------------------------------------------------

    def folder(self, key: bytes) -> FolderState | None:
        raw = self._txn.get(key, db=self._index.folders_db)
        return None if raw is None else FolderState(*_FOLDER.unpack(raw))

    def _put_folder(self, key: bytes, st: FolderState) -> None:
        self._txn.put(key, _FOLDER.pack(st.uidvalidity, st.uidnext, st.highestmodseq,
                                        st.new_mtime, st.cur_mtime), db=self._index.folders_db)

    def create_folder(self, key: bytes) -> FolderState:
        """A fresh record with a new UIDVALIDITY, replacing (and forgetting) any stale one."""
        self.drop_folder(key)
        st = FolderState(self._index.allocate_uidvalidity(self._txn))
        self._put_folder(key, st)
        return st

    def drop_folder(self, key: bytes) -> None:
        old = self.folder(key)
        if old is None:
            return
        self._txn.delete(key, db=self._index.folders_db)
        cursor = self._txn.cursor(db=self._index.messages_db)
        prefix = _UV.pack(old.uidvalidity)
        if cursor.set_range(prefix):
            while cursor.key()[:4] == prefix and cursor.delete():
                pass

    def move_folder(self, old: bytes, new: bytes) -> None:
        """Rename a folder's record; its UIDVALIDITY and UIDs go with it (RFC 3501 §6.3.5)."""
        st = self.folder(old)
        if st is not None:
            self._txn.delete(old, db=self._index.folders_db)
            self._put_folder(new, replace(st, new_mtime=-1, cur_mtime=-1))

    def record_mtimes(self, key: bytes, new_mtime: int, cur_mtime: int) -> None:
        st = self.folder(key)
        if st is not None:
            self._put_folder(key, replace(st, new_mtime=new_mtime, cur_mtime=cur_mtime))

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

    # ---- messages -----------------------------------------------------------------------

    def entries(self, uidvalidity: int) -> list[Entry]:
        """Every message of the folder, ascending UID."""
        out: list[Entry] = []
        prefix = _UV.pack(uidvalidity)
        cursor = self._txn.cursor(db=self._index.messages_db)
        if not cursor.set_range(prefix):
            return out
        for k, v in cursor:
            if k[:4] != prefix:
                break
            out.append(_decode_entry(_MSG_KEY.unpack(k)[1], v))
        return out

    def entry(self, uidvalidity: int, uid: int) -> Entry | None:
        raw = self._txn.get(_MSG_KEY.pack(uidvalidity, uid), db=self._index.messages_db)
        return None if raw is None else _decode_entry(uid, raw)

    def add(self, key: bytes, filename: str, flags: Iterable[str], size: int,
            internaldate: float) -> Entry:
        """Register a file now in cur/ under the next UID (RFC 3501 §2.3.1.1: strictly
        ascending, never reused within this UIDVALIDITY)."""
        modseq = self._next_modseq(key)
        st = self._require(key)
        e = Entry(st.uidnext, filename, frozenset(flags), size, internaldate, modseq)
        self._txn.put(_MSG_KEY.pack(st.uidvalidity, e.uid), _encode_entry(e),
                      db=self._index.messages_db)
        self._put_folder(key, replace(st, uidnext=st.uidnext + 1))
        return e

    def update(self, key: bytes, e: Entry, filename: str, flags: Iterable[str]) -> Entry:
        """New name and flags for a message; MODSEQ moves only when the flags change."""
        flags = frozenset(flags)
        modseq = self._next_modseq(key) if flags != e.flags else e.modseq
        new = replace(e, filename=filename, flags=flags, modseq=modseq)
        st = self._require(key)
        self._txn.put(_MSG_KEY.pack(st.uidvalidity, e.uid), _encode_entry(new),
                      db=self._index.messages_db)
        return new

    def remove(self, key: bytes, uid: int) -> None:
        """Forget an expunged message (HIGHESTMODSEQ moves, RFC 7162 §3.2.10)."""
        self._next_modseq(key)
        st = self._require(key)
        self._txn.delete(_MSG_KEY.pack(st.uidvalidity, uid), db=self._index.messages_db)

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
        st = self.folder(key) or self.create_folder(key)
        new_dir, cur_dir = path / "new", path / "cur"
        # stat before listing: a change after this point leaves a newer mtime for next time.
        new_mtime, cur_mtime = _mtime_ns(new_dir), _mtime_ns(cur_dir)
        _move_new(new_dir, cur_dir)
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
            fresh.append((maildir.arrival_key(name, s.st_mtime), name, s))
        for _, name, s in sorted(fresh):
            self.add(key, name, maildir.flags_of(name), s.st_size, s.st_mtime)
        self.record_mtimes(key, new_mtime, cur_mtime)
        return self._require(key)


def _identity(index_dir: Path) -> tuple[int, int]:
    st = os.stat(index_dir / "data.mdb")
    return st.st_dev, st.st_ino


def _mtime_ns(path: Path) -> int:
    return os.stat(path).st_mtime_ns


def _move_new(new_dir: Path, cur_dir: Path) -> None:
    """Maildir readers move new/ files to cur/, adding the info part; oldest first."""
    for name in sorted(os.listdir(new_dir)):
        if name.startswith("."):
            continue
        target = name if maildir.INFO in name else name + maildir.INFO
        if os.path.lexists(cur_dir / target):  # never overwrite a message
            target = maildir.unique_name(0) + maildir.INFO
        with contextlib.suppress(FileNotFoundError):
            os.rename(new_dir / name, cur_dir / target)


def _list_cur(cur_dir: Path) -> dict[str, str]:
    """base name -> file name for every message file in cur/ (dot files are not mail)."""
    out: dict[str, str] = {}
    for name in os.listdir(cur_dir):
        if not name.startswith("."):
            out.setdefault(maildir.split_info(name)[0], name)
    return out


def is_current(st: FolderState, new_mtime: int, cur_mtime: int, now_ns: int) -> bool:
    """True when the folder's index already reflects its directories (no scan needed)."""
    return (st.new_mtime == new_mtime and st.cur_mtime == cur_mtime
            and now_ns - max(new_mtime, cur_mtime) > MTIME_SLACK_NS)


# ---- the environment ---------------------------------------------------------------------

_registry_lock = threading.Lock()
_registry: dict[Path, tuple[MailboxIndex, int]] = {}


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
        self._lock = threading.RLock()  # one transaction at a time per process; map resizes
        try:
            self._open()
        except (lmdb.Error, ValueError, struct.error):
            self._rebuild()

    def _open(self) -> None:
        path = self.root / INDEX_DIR
        path.mkdir(exist_ok=True)
        # sync on: a UID handed to a client must survive a crash, or a rolled-back UIDNEXT
        # would give it to another message within the same UIDVALIDITY.
        self.env = lmdb.open(str(path), map_size=self.INITIAL_MAP, max_dbs=4, subdir=True,
                             sync=True, metasync=True, readahead=False, max_readers=256)
        try:
            with self.env.begin(write=True) as txn:
                meta = self.env.open_db(b"meta", txn=txn)
                self.folders_db = self.env.open_db(b"folders", txn=txn)
                self.messages_db = self.env.open_db(b"messages", txn=txn)
                version = txn.get(b"version", db=meta)
                if version is None:
                    txn.put(b"version", SCHEMA_VERSION, db=meta)
                elif version != SCHEMA_VERSION:
                    raise ValueError(f"index schema {version!r} is not {SCHEMA_VERSION!r}")
            self.meta_db = meta
            self._identity = _identity(path)
        except BaseException:
            self.env.close()
            raise

    def _rebuild(self) -> None:
        """Move an unreadable index aside and start a fresh one; folders then get new
        UIDVALIDITYs as they are used (RFC 3501 §2.3.1.1). A lock keeps two processes
        from both doing it."""
        with open(self.root / REBUILD_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._open()  # another process may have rebuilt it meanwhile
                return
            except (lmdb.Error, ValueError, struct.error):
                pass
            broken = self.root / INDEX_DIR
            shutil.rmtree(broken, ignore_errors=True)
            self._open()

    def _reopen_if_replaced(self) -> None:
        """An index deleted or replaced while we run (an operator's rm -rf) is reopened,
        so every process converges on the new one; views of the old one then fail their
        UIDVALIDITY check."""
        with self._lock:
            try:
                current = _identity(self.root / INDEX_DIR)
            except FileNotFoundError:
                current = None
            if current == self._identity:
                return
            self.env.close()
            try:
                self._open()
            except (lmdb.Error, ValueError, struct.error):
                self._rebuild()

    def _close(self) -> None:
        with self._lock:
            self.env.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[IndexTxn]:
        with self._lock:
            txn = self._begin(write=False)
            try:
                yield IndexTxn(self, txn)
            finally:
                txn.abort()

    @contextlib.contextmanager
    def writing(self) -> Iterator[IndexTxn]:
        """A write transaction: the account's lock for index and cur/ changes. Commits
        (durably) when the block ends normally, aborts when it raises."""
        with self._lock:
            self._grow_if_needed()
            txn = self._begin(write=True)
            try:
                yield IndexTxn(self, txn)
            except BaseException as exc:
                txn.abort()
                if isinstance(exc, lmdb.MapFullError):  # one huge transaction (a first
                    self.env.set_mapsize(self.env.info()["map_size"] * 2)  # scan): room
                raise  # for the caller's retry
            txn.commit()

    def _begin(self, write: bool) -> lmdb.Transaction:
        try:
            return self.env.begin(write=write)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)  # another process grew the map: adopt its size
            return self.env.begin(write=write)

    def _grow_if_needed(self) -> None:
        """Double the map before it can fill: a write transaction that hits MapFullError
        halfway through a Maildir change could not simply be retried."""
        info = self.env.info()
        used = (info["last_pgno"] + 1) * self.env.stat()["psize"]
        if used * 2 > info["map_size"]:
            self.env.set_mapsize(info["map_size"] * 2)

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
        with self.reading() as r:
            return r.folder(key)

    def refresh(self, key: bytes, path: Path) -> FolderState:
        """The folder's state after picking up any change on disk: three stat()s and one
        read when nothing changed, a scan under the write lock otherwise. Raises
        FileNotFoundError when the folder's directory is gone."""
        self._reopen_if_replaced()
        new_mtime, cur_mtime = _mtime_ns(path / "new"), _mtime_ns(path / "cur")
        st = self.state(key)
        if st is not None and is_current(st, new_mtime, cur_mtime, time.time_ns()):
            return st
        for _ in range(16):
            try:
                with self.writing() as w:
                    return w.scan(key, path)
            except lmdb.MapFullError:  # the map has doubled; a scan is safe to repeat
                continue
        raise lmdb.MapFullError("index map still full after growing")
