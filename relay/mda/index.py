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
The record layouts are in mda/index_schema.py; every read and write of them is an
IndexTxn (mda/index_txn.py); this module owns the environment and its life cycle.

The Maildir stays the truth. `IndexTxn.scan` reconciles a folder's index with its files
(new/ moves to cur/ and is numbered, renamed files update system flags, files gone are
expunged). The index is therefore rebuildable: when it is missing or unreadable it is
created afresh and every folder gets a new UIDVALIDITY on first use, as RFC 3501
§2.3.1.1 demands when UIDs cannot be kept.
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

Imports: lmdb, stdlib, relay.mda.{maildir,index_schema,index_txn}.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb

from relay.mda import maildir
from relay.mda.index_schema import SCHEMA_VERSION, FolderState, decode_folder
from relay.mda.index_txn import IndexTxn, is_current

INDEX_DIR = "relay-index"
UIDVALIDITY_FILE = "relay-uidvalidity"
REBUILD_LOCK = "relay-index.lock"
UNSYNCED_MARKER = "unsynced"  # in INDEX_DIR: the boot id while unflushed commits may exist
QUIET_SECONDS = 1.0  # flush and drop the marker after this long without a commit
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _identity(index_dir: Path) -> tuple[int, int]:
    st = os.stat(index_dir / "data.mdb")
    return st.st_dev, st.st_ino


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
                    IndexTxn(self, txn).upgrade_from_v1()
                    txn.put(b"version", SCHEMA_VERSION, db=meta)
                elif version == b"2":  # schema 3 added the recent watermark (decode_folder)
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
        st = None if raw is None else decode_folder(raw)
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
