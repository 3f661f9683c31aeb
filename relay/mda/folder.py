"""Folder: one session's view of a mailbox (RFC 3501 §6.3.1 SELECT / EXAMINE state).

A Folder changes only when its owner calls sync(), so message sequence numbers stay
stable between the points where RFC 3501 §7.4.1 / RFC 9051 §7.5.1 allow the server to
report expunges. Its view is the process's shared `View` (mda/views.py) as of the last
sync, or a private copy holding its own changes since. Writes (store, append, copy, move,
expunge) go to disk and index at once; other sessions, in this process or another, see
them at their next sync().

\\Recent (RFC 3501 §2.3.2) is session state, never a stored flag: a Folder asked to
track it (IMAP SELECT claims, EXAMINE only looks) takes, at each sync that brings new
messages, the UIDs from the index's recent watermark up to its view's UIDNEXT
(IndexTxn.claim_recent, one write transaction, so exactly one session claims each message)
and keeps them as a few UID ranges (`RecentUids`).

Everything here blocks (files, fsync, LMDB): call it from a thread, never from the event
loop. Index changes are LMDB write transactions, which also serialise our renames in cur/;
a file that vanished between listing and reading counts as expunged.

Imports: stdlib, relay.mda.{maildir,index,index_schema,index_txn,model,views}
(relay.mda.store for types only).
Trust: flags come from IMAP clients (validated: StoreError); bodies are opaque octets.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from relay.mda import maildir
from relay.mda.index import MailboxIndex
from relay.mda.index_schema import Entry, FolderState
from relay.mda.index_txn import IndexTxn
from relay.mda.model import Changes, Message, StoreError, StoreErrorKind, normalise_flags
from relay.mda.views import NO_RECENT, RecentUids, View, as_message, latest_view

if TYPE_CHECKING:
    from relay.mda.store import Account

HEADER_CHUNK = 16 * 1024  # reads of a header section
HEADER_BATCH = 256  # header cache fills per transaction
_BLANK_LINE = re.compile(rb"\n\r?\n")


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

def quick_write(index: MailboxIndex) -> bool:
    """Whether a write transaction that need not be flushed would now neither wait for
    another thread of this process nor flush anything (MailboxIndex.commits_unflushed)."""
    return not index.writer_busy() and index.commits_unflushed()


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
        self.recent = NO_RECENT  # the UIDs this session holds as \Recent
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
            return quick_write(self._index)
        return True

    def quick_flag_change(self) -> bool:
        """Whether a store() of system flags would now neither wait for another thread of
        this process nor flush anything (MailboxIndex.commits_unflushed)."""
        return quick_write(self._index)

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
                    changed.append(as_message(w.update(self._key, e, name, new)))
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
