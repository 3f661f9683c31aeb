"""MailStore: the mailbox API the IMAP and POP3 servers use (Dovecot's mail storage role).

Accounts are Maildirs (mda/maildir.py: layout, names, flags in file names) with a UID
index beside each (mda/index.py). This module holds the account level: MailStore (every
account of a process) and Account (folder management, RFC 3501 §6.3; subscriptions; the
POP3 lock). A mailbox opened by Account.folder() is a `Folder` (mda/folder.py), one
session's view; views are shared per process (mda/views.py); `Caches` (mda/caches.py, one
per MailStore) holds what the IMAP server parses from the immutable message files. The
values and errors all of them hand out are in mda/model.py.

Everything here blocks (files, fsync, LMDB); the IMAP and POP3 sessions call it from a
thread, never from the event loop. Several processes may use one account at once: index
changes are LMDB write transactions, which also serialise our renames; Maildir renames
are atomic.

Imports: stdlib, relay.mda.{maildir,index,index_schema,model,caches,folder}.
Trust: names come from IMAP clients (validated here: StoreError).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from relay.mda import maildir
from relay.mda.caches import Caches
from relay.mda.folder import Folder, quick_write
from relay.mda.index import MailboxIndex
from relay.mda.index_schema import INBOX_KEY
from relay.mda.model import FolderInfo, StoreError, StoreErrorKind

# RFC 6154 special-use attributes of the folders ensure_defaults() creates.
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"}
SUBSCRIPTIONS_FILE = "relay-subscriptions"
DEFAULTS_MARKER = "relay-defaults"
POP3_LOCK_FILE = "relay-pop3.lock"


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
                                       and not quick_write(self.index))

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
