"""IndexTxn: one read or write transaction over a MailboxIndex (mda/index.py), the only
code that reads or writes its records (mda/index_schema.py).

Folders (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, RFC 3501 §2.3.1.1, RFC 7162 §3.1.2; the
\\Recent watermark, RFC 3501 §2.3.2), messages and their MODSEQs, tombstones of expunges,
the header cache, and the reconciliation with the Maildir: `scan` moves files in new/ to
cur/ (gaining ":2,") and gives them the next UIDs in arrival order, takes system flags
from files any tool renamed, and expunges files gone. A folder's first scan (a new or
rebuilt index) numbers the files already in cur/ before those it moves from new/, and puts
the recent watermark between them: as in Dovecot, what was still in new/ is recent.
`refresh` scans only when the directories' mtimes say so (is_current: Dovecot's
MAILDIR_SYNC_SECS rule, see the theory of operation in mda/index.py).

Imports: lmdb (types only), stdlib, relay.mda.{maildir,index_schema} (relay.mda.index for
types only).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from relay.mda import maildir
from relay.mda.index_schema import (
    FOLDER,
    MOD_KEY,
    MSG_KEY,
    UV,
    Entry,
    FolderState,
    decode_entry,
    decode_folder,
    encode_entry,
    flag_set,
)

if TYPE_CHECKING:
    import lmdb

    from relay.mda.index import MailboxIndex


MTIME_SLACK_NS = 2_000_000_000
RESCAN_NS = 1_000_000_000  # an unsettled directory is rescanned at most this often
TOMBSTONES_KEPT = 50_000  # expunges remembered, in MODSEQs (older views are rebuilt whole)
MAX_CACHED_HEADER = 256 * 1024  # larger header sections are read from the file each time
_SYSTEM = frozenset(maildir.LETTER_OF_FLAG)


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
        return None if raw is None else decode_folder(raw)

    def _put_folder(self, key: bytes, st: FolderState) -> None:
        self.changed = True
        self._txn.put(key, FOLDER.pack(st.uidvalidity, st.uidnext, st.highestmodseq,
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
        prefix = UV.pack(old.uidvalidity)
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
            self._put_folder(key, replace(st, cur_mtime=mtime_ns(path / "cur")))

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

    def upgrade_from_v1(self) -> None:
        """Schema 1 -> 2 (while the environment opens): rewrite every folder record and
        index the live messages by MODSEQ; UIDs stay."""
        idx = self._index
        for key, raw in list(self._txn.cursor(db=idx.folders_db)):
            st = decode_folder(raw)
            self._put_folder(bytes(key), st)
            for e in self.entries(st.uidvalidity):
                self._txn.put(MOD_KEY.pack(st.uidvalidity, e.modseq, e.uid), b"",
                              db=idx.modseq_db)

    # ---- messages -----------------------------------------------------------------------

    def entries(self, uidvalidity: int) -> list[Entry]:
        """Every message of the folder, ascending UID."""
        out: list[Entry] = []
        prefix = UV.pack(uidvalidity)
        cursor = self._txn.cursor(db=self._index.messages_db)
        if not cursor.set_range(prefix):
            return out
        unpack = MSG_KEY.unpack
        for k, v in cursor:
            if k[:4] != prefix:
                break
            out.append(decode_entry(unpack(k)[1], v))
        return out

    def entry(self, uidvalidity: int, uid: int) -> Entry | None:
        raw = self._txn.get(MSG_KEY.pack(uidvalidity, uid), db=self._index.messages_db)
        return None if raw is None else decode_entry(uid, raw)

    def changes_since(self, uidvalidity: int, modseq: int) -> tuple[list[Entry], list[int]]:
        """Messages added or changed with a MODSEQ above `modseq` (ascending MODSEQ), and
        the UIDs expunged since. Only valid for `modseq` >= the folder's expunge_floor."""
        prefix = UV.pack(uidvalidity)
        start = MOD_KEY.pack(uidvalidity, modseq + 1, 0)
        uids: list[int] = []
        cursor = self._txn.cursor(db=self._index.modseq_db)
        if cursor.set_range(start):
            for k in cursor.iternext(values=False):
                if k[:4] != prefix:
                    break
                uids.append(MOD_KEY.unpack(k)[2])
        changed = [e for e in (self.entry(uidvalidity, u) for u in uids) if e is not None]
        gone: list[int] = []
        cursor = self._txn.cursor(db=self._index.expunged_db)
        if cursor.set_range(start):
            for k in cursor.iternext(values=False):
                if k[:4] != prefix:
                    break
                gone.append(MOD_KEY.unpack(k)[2])
        return changed, gone

    def add(self, key: bytes, filename: str, flags: Iterable[str], size: int,
            internaldate: float) -> Entry:
        """Register a file now in cur/ under the next UID (RFC 3501 §2.3.1.1: strictly
        ascending, never reused within this UIDVALIDITY)."""
        self._must_sync()
        modseq = self._next_modseq(key)
        st = self._require(key)
        e = Entry(st.uidnext, filename, flag_set(flags), size, internaldate, modseq)
        self._txn.put(MSG_KEY.pack(st.uidvalidity, e.uid), encode_entry(e),
                      db=self._index.messages_db)
        self._txn.put(MOD_KEY.pack(st.uidvalidity, modseq, e.uid), b"",
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
        self._txn.put(MSG_KEY.pack(st.uidvalidity, e.uid), encode_entry(new),
                      db=self._index.messages_db)
        if modseq != e.modseq:
            self._txn.delete(MOD_KEY.pack(st.uidvalidity, e.modseq, e.uid),
                             db=self._index.modseq_db)
            self._txn.put(MOD_KEY.pack(st.uidvalidity, modseq, e.uid), b"",
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
        self._txn.delete(MSG_KEY.pack(uv, uid), db=self._index.messages_db)
        self._txn.delete(MSG_KEY.pack(uv, uid), db=self._index.headers_db)
        if old is not None:
            self._txn.delete(MOD_KEY.pack(uv, old.modseq, uid), db=self._index.modseq_db)
        self._txn.put(MOD_KEY.pack(uv, modseq, uid), b"", db=self._index.expunged_db)
        if modseq - st.expunge_floor > 2 * TOMBSTONES_KEPT:
            floor = modseq - TOMBSTONES_KEPT
            cursor = self._txn.cursor(db=self._index.expunged_db)
            prefix = UV.pack(uv)
            if cursor.set_range(prefix):
                while (cursor.key()[:4] == prefix
                       and MOD_KEY.unpack(cursor.key())[1] <= floor and cursor.delete()):
                    pass
            self._put_folder(key, replace(st, expunge_floor=floor))

    # ---- header cache ---------------------------------------------------------------------

    def header(self, uidvalidity: int, uid: int) -> bytes | None:
        """The cached header section of a message, or None."""
        raw = self._txn.get(MSG_KEY.pack(uidvalidity, uid), db=self._index.headers_db)
        return None if raw is None else bytes(raw)

    def put_header(self, uidvalidity: int, uid: int, data: bytes) -> None:
        """Cache a header section (not flushed: a lost one is read from the file again)."""
        if len(data) <= MAX_CACHED_HEADER:
            self.changed = True
            self._txn.put(MSG_KEY.pack(uidvalidity, uid), data, db=self._index.headers_db)

    # ---- reconciliation with the Maildir --------------------------------------------------

    def refresh(self, key: bytes, path: Path) -> FolderState:
        """scan() unless the folder's directories are unchanged since the last one (write
        transaction only: run before acting on flags another tool may have changed)."""
        st = self.folder(key)
        if st is not None and is_current(st, mtime_ns(path / "new"), mtime_ns(path / "cur"),
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
        new_mtime, cur_mtime = mtime_ns(new_dir), mtime_ns(cur_dir)
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



def mtime_ns(path: Path) -> int:
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

