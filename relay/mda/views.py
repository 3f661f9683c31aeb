"""Shared folder views: one immutable `View` per folder and process, and a session's
\\Recent UIDs (`RecentUids`, RFC 3501 §2.3.2).

Views are cheap: each process keeps, per folder, one immutable `View` of the index (the
messages at one UIDNEXT/HIGHESTMODSEQ), brought up to date incrementally from the index's
changes-since-MODSEQ (RFC 7162) and shared by every session that has synced to it; a
session copies it only while it holds changes of its own not yet synced. So a SELECT, a
sync with nothing new, or a thousand IDLE sessions on one mailbox cost no per-message work
or memory each.

Imports: stdlib, relay.mda.{index,index_schema,model}.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from relay.mda.index import MailboxIndex
from relay.mda.index_schema import Entry, FolderState
from relay.mda.model import Message


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



NO_RECENT = RecentUids()  # shared by Folders that do not track \Recent: never add to it


def as_message(e: Entry) -> Message:
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
        msgs = {e.uid: as_message(e) for e in entries}
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
            m = as_message(e)
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
