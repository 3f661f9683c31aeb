"""MailStore: the mailbox API the IMAP and POP3 servers use (Dovecot's mail storage role).

Accounts are Maildirs (mda/maildir.py: layout, names, flags in file names) with a UID
index beside each (mda/index.py). A `Folder` is one session's view of a mailbox: it
changes only when its owner calls sync(), so message sequence numbers stay stable between
the points where RFC 3501 §7.4.1 / RFC 9051 §7.5.1 allow the server to report expunges.
Writes (store, append, copy, move, expunge) go to disk and index at once; other sessions,
in this process or another, see them at their next sync().

Everything here blocks (files, fsync, LMDB); the IMAP and POP3 sessions call it from a
thread, never from the event loop. Several processes may use one account at once: index
changes are LMDB write transactions, which also serialise our renames in cur/; Maildir
renames are atomic; a file that vanished between listing and reading counts as expunged.

Imports: stdlib, relay.mda.{maildir,index}. Trust: names and flags come from IMAP clients
(validated here: StoreError); message bodies are opaque octets.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
    `internaldate` is a POSIX time; `modseq` is its RFC 7162 mod-sequence."""

    uid: int
    flags: frozenset[str]
    size: int
    internaldate: float
    modseq: int


@dataclass(frozen=True, slots=True)
class Changes:
    """What sync() found: new messages, expunged UIDs, flag changes by others (all
    ascending by UID), and the mailbox's UIDNEXT and HIGHESTMODSEQ now."""

    added: list[Message]
    expunged: list[int]
    flags: list[Message]
    uidnext: int
    highestmodseq: int


def _message(e: Entry) -> Message:
    return Message(e.uid, e.flags, e.size, e.internaldate, e.modseq)


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


class MailStore:
    """All accounts' Maildirs under `root` (data_dir/mail); one per server process,
    created after the worker forked (an LMDB environment must not cross a fork)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._layout = maildir.MaildirStore(root)
        self._indexes: dict[Path, MailboxIndex] = {}
        self._lock = threading.Lock()

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
        return Account(address, path, index)

    def close(self) -> None:
        with self._lock:
            for index in self._indexes.values():
                index.release()
            self._indexes.clear()


class Account:
    """One user's mailboxes: folder management (RFC 3501 §6.3), subscriptions, POP3 lock."""

    def __init__(self, address: str, path: Path, index: MailboxIndex) -> None:
        self.address = address
        self.path = path
        self.index = index

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
    messages in the view that still exist."""

    def __init__(self, account: Account, name: str, key: bytes, path: Path) -> None:
        self.account = account
        self.name = name
        self._key = key
        self._path = path
        self._index = account.index
        self.uidvalidity = 0
        st = self._refresh()
        self.uidvalidity = st.uidvalidity
        self._uidnext = st.uidnext
        self._highestmodseq = st.highestmodseq
        self._view: dict[int, Message] = {}
        self._synced = False

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

    # ---- the view ------------------------------------------------------------------------------

    def sync(self) -> Changes:
        """Pick up what changed since this view's last sync: deliveries (moved new/ ->
        cur/ and numbered in arrival order), expunges and flag changes by other sessions,
        processes or Maildir tools. The first call returns every message as added. When
        nothing changed it costs three stat()s and one index read (fit for IDLE polling).
        Raises StoreError(NONEXISTENT) when the mailbox went away or was replaced."""
        st = self._refresh()
        if self._synced and (st.uidnext, st.highestmodseq) == (self._uidnext,
                                                               self._highestmodseq):
            return Changes([], [], [], st.uidnext, st.highestmodseq)
        with self._index.reading() as r:
            st = self._check(r)
            view = {e.uid: _message(e) for e in r.entries(self.uidvalidity)}
        old = self._view
        added = [m for uid, m in view.items() if uid not in old]
        expunged = [uid for uid in old if uid not in view]
        flags = [m for uid, m in view.items() if uid in old and old[uid] != m]
        self._view, self._synced = view, True
        self._uidnext, self._highestmodseq = st.uidnext, st.highestmodseq
        return Changes(added, expunged, flags, st.uidnext, st.highestmodseq)

    def messages(self) -> list[Message]:
        """The view as of the last sync, ascending UID (sequence number = position + 1)."""
        return list(self._view.values())  # built and kept in UID order

    def status(self) -> dict[str, int]:
        """STATUS items (RFC 3501 §6.3.10, RFC 7162 HIGHESTMODSEQ, RFC 8438 SIZE) of the
        mailbox now, leaving this view alone. RECENT is always 0 (RFC 9051 drops it)."""
        self._refresh()
        with self._index.reading() as r:
            st = self._check(r)
            entries = r.entries(self.uidvalidity)
        return {"MESSAGES": len(entries), "RECENT": 0, "UIDNEXT": st.uidnext,
                "UIDVALIDITY": st.uidvalidity,
                "UNSEEN": sum("\\Seen" not in e.flags for e in entries),
                "HIGHESTMODSEQ": st.highestmodseq, "SIZE": sum(e.size for e in entries)}

    # ---- reading -------------------------------------------------------------------------------

    def _current(self, uid: int) -> tuple[Entry, Path] | None:
        """The message's index entry and file now, following renames by other tools."""
        for attempt in range(2):
            with self._index.reading() as r:
                e = r.entry(self.uidvalidity, uid)
            if e is None:
                return None
            path = self._path / "cur" / e.filename
            if os.path.lexists(path):
                return e, path
            if attempt == 0:
                self._refresh()
        return None

    def path(self, uid: int) -> Path:
        """The message file, for streaming reads. Raises KeyError when `uid` is not in the
        view or was expunged. A concurrent flag change renames the file: on
        FileNotFoundError ask again (or use open())."""
        if uid not in self._view:
            raise KeyError(uid)
        found = self._current(uid)
        if found is None:
            raise KeyError(uid)
        return found[1]

    def open(self, uid: int) -> BinaryIO:
        """The message file opened for reading, retrying across concurrent renames."""
        for _ in range(3):
            try:
                return self.path(uid).open("rb")
            except FileNotFoundError:
                continue
        raise KeyError(uid)

    def read(self, uid: int) -> bytes:
        """The whole message. Raises KeyError when it is gone."""
        with self.open(uid) as f:
            return f.read()

    # ---- changes -------------------------------------------------------------------------------

    def store(self, uids: list[int], flags: Iterable[str], mode: str) -> list[Message]:
        """STORE (RFC 3501 §6.4.6): mode "+" adds, "-" removes, "=" replaces `flags`.
        System flags are renamed into the file name; keywords live in the index. Returns
        the messages whose flags changed (each with a new MODSEQ, RFC 7162 §3.1.3);
        unchanged ones keep their modseq. Raises StoreError(INVALID) for a bad flag."""
        if mode not in ("+", "-", "="):
            raise ValueError(f"store mode {mode!r}")
        wanted = normalise_flags(flags)
        cur = self._path / "cur"
        changed: list[Message] = []
        with self._index.writing() as w:
            self._check(w)
            w.refresh(self._key, self._path)  # act on the flags in the file names now
            for uid in sorted(set(uids) & self._view.keys()):
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
                    except FileNotFoundError:
                        if attempt == 0:  # renamed or removed by another Maildir tool
                            w.scan(self._key, self._path)
                        continue
                    changed.append(_message(w.update(self._key, e, name, new)))
                    break
        for m in changed:
            self._view[m.uid] = m
        return changed

    def append(self, data: bytes, flags: Iterable[str] = (),
               internaldate: float | None = None) -> int:
        """APPEND (RFC 3501 §6.3.11): written to tmp/, fsynced, renamed into cur/ with its
        flags; returns the UID (RFC 4315 APPENDUID). The view sees it at the next sync."""
        wanted = normalise_flags(flags)
        base = maildir.unique_name(len(data))
        tmp = self._path / "tmp" / base
        try:
            st = maildir.write_file(tmp, data, internaldate)
        except FileNotFoundError:
            raise self._gone() from None
        final = self._path / "cur" / maildir.with_flags(base, wanted)
        try:
            with self._index.writing() as w:
                self._check(w)
                os.rename(tmp, final)
                maildir.fsync_dir(final.parent)
                uid = w.add(self._key, final.name, wanted, st.st_size, st.st_mtime).uid
        except BaseException:
            tmp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)  # the index refused it: the client hears NO
            raise
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
            for uid in sorted(set(uids) & self._view.keys()):
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
        cur = self._path / "cur"
        pairs: list[tuple[int, int]] = []
        placed: list[Path] = []
        try:
            with self._index.writing() as w:
                self._check(w)
                for e, base, tmp in staged:
                    final = cur / maildir.with_flags(base, e.flags)
                    os.rename(tmp, final)
                    placed.append(final)
                    new = w.add(self._key, final.name, e.flags, e.size, e.internaldate)
                    pairs.append((e.uid, new.uid))
                if placed:
                    maildir.fsync_dir(cur)
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            raise
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
        return self._remove(list(self._view) if uids is None else uids, only_deleted=True)

    def _remove(self, uids: list[int], only_deleted: bool) -> list[int]:
        cur = self._path / "cur"
        gone: list[int] = []
        with self._index.writing() as w:
            self._check(w)
            w.refresh(self._key, self._path)  # \Deleted as the file names say now
            for uid in sorted(set(uids) & self._view.keys()):
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
        for uid in gone:
            del self._view[uid]
        return gone
