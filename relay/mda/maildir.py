"""Maildir on disk: delivery, file names, flags in names, Maildir++ folder names.

One Maildir per account under data_dir/mail/<domain>/<local>/; its cur/ new/ tmp/ are INBOX
and each other folder is a Maildir++ sub-Maildir ".Name.Child" beside them. Everything here
is the interchange format any Maildir tool (mutt, Dovecot, Courier) reads and writes; the
UID index that makes IMAP fast lives in mda/index.py and is rebuilt from this.

Delivery is the classic atomic protocol: write tmp/<unique>, fsync the file, rename into
new/, fsync new/ (so the rename itself is durable). Any reader sees a message whole or not
at all. Unique names follow Dovecot's form "<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>".

Flags ride in the name after ":2," as sorted letters (the Maildir "info" of
cr.yp.to/proto/maildir.html): D \\Draft, F \\Flagged, P Passed ($Forwarded), R \\Answered,
S \\Seen, T \\Deleted. Letters we do not know (Dovecot's a-z keyword letters) are kept.

Folder names (IMAP names, "/" as hierarchy delimiter, already decoded from modified UTF-7
by the IMAP parser) map to directories as Dovecot's Maildir++ layout does by default: each
level is encoded in IMAP modified UTF-7 (RFC 3501 §5.1.3, what Dovecot and Courier write
on disk), then "\\" and "." inside a level are escaped Dovecot-listescape style as "\\5c"
and "\\2e", and levels are joined with "." behind a leading ".":
"Work/Projects" <-> ".Work.Projects", "a.b" <-> ".a\\2eb", "Entwürfe" <-> ".Entw&APw-rfe".

Imports: stdlib, relay.mda.imap.utf7 (the one modified UTF-7 codec, pure). Trust: bodies
are opaque octets; names come from the account store (addresses) or from IMAP clients
(folder names: validated here before they touch a path).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from relay.mda.imap import utf7

INFO = ":2,"  # separator of the Maildir info part; flags follow it
# Maildir flag letters and the IMAP flag each stands for (RFC 3501 §2.3.2 system flags;
# "Passed" has no IMAP system flag, so it carries the $Forwarded keyword of RFC 5788).
FLAG_OF_LETTER = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered",
                  "S": "\\Seen", "T": "\\Deleted"}
LETTER_OF_FLAG = {flag: letter for letter, flag in FLAG_OF_LETTER.items()}
NAME_MAX = 255  # one directory entry (Maildir++ flattens the hierarchy into one name)

_counter = itertools.count(1)


class MaildirStore:
    """Delivery into new/ (the local delivery agent's side of the Maildir)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, account: str) -> Path:
        """Maildir of `account` ("local@domain", already normalised by the account store)."""
        local, _, domain = account.rpartition("@")
        for part in (local, domain):
            if not part or part in (".", "..") or "/" in part or "\0" in part:
                raise ValueError(f"unsafe mailbox name: {account!r}")
        return self.root / domain / local

    def ensure(self, maildir: Path) -> None:
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)

    def deliver(self, account: str, message: bytes) -> Path:
        """Store `message` atomically and durably; returns its path under new/."""
        maildir = self.path_for(account)
        self.ensure(maildir)
        name = unique_name(len(message))
        tmp = maildir / "tmp" / name
        write_file(tmp, message)
        final = maildir / "new" / name
        os.rename(tmp, final)
        fsync_dir(maildir / "new")
        return final


# ---- file names and flags ----------------------------------------------------------------


def unique_name(size: int) -> str:
    """A new file base name, unique per host, process and call; sorts by arrival time."""
    now = time.time()
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{host},S={size}"


def split_info(filename: str) -> tuple[str, str]:
    """(base name, info letters) of a file in cur/; a name without ":2," has no flags."""
    base, sep, letters = filename.partition(INFO)
    return base, letters if sep else ""


def flags_of(filename: str) -> frozenset[str]:
    """The IMAP flags a file name carries (letters after ":2,")."""
    return frozenset(FLAG_OF_LETTER[c] for c in split_info(filename)[1] if c in FLAG_OF_LETTER)


def with_flags(filename: str, flags: Iterable[str]) -> str:
    """`filename` with its info part rewritten for `flags`; unknown letters are kept."""
    base, letters = split_info(filename)
    keep = {c for c in letters if c not in FLAG_OF_LETTER}
    ours = {LETTER_OF_FLAG[f] for f in flags if f in LETTER_OF_FLAG}
    return base + INFO + "".join(sorted(keep | ours))


_ARRIVAL = re.compile(r"(\d+)\.(?:M(\d+))?")


def arrival_key(filename: str, mtime: float) -> tuple[float, str]:
    """Sort key for assigning UIDs in arrival order: the time in a Dovecot/qmail style name
    ("<secs>.M<usecs>...", numerically: usecs are not zero-padded), else the file's mtime."""
    m = _ARRIVAL.match(filename)
    when = int(m.group(1)) + int(m.group(2) or 0) / 1e6 if m else mtime
    return when, filename


# ---- durable file operations ----------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make renames and unlinks in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, mtime: float | None = None) -> os.stat_result:
    """Create `path` (never overwriting), write and fsync `data`; set its mtime (the IMAP
    INTERNALDATE) when given. Returns the file's final stat."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
        os.fsync(fd)
        return os.fstat(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (Maildir files are never modified in place, so a link is a
    copy); across file systems or where links are refused, copy, keep the mtime, fsync."""
    try:
        os.link(src, dst)
        return
    except FileNotFoundError:
        raise
    except OSError:
        pass
    with open(src, "rb") as fin:
        st = os.fstat(fin.fileno())
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(fd, "wb", closefd=False) as fout:
                shutil.copyfileobj(fin, fout)
            os.utime(fd, ns=(st.st_mtime_ns, st.st_mtime_ns))
            os.fsync(fd)
        except BaseException:
            dst.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)


def make_maildir(path: Path, folder: bool) -> None:
    """cur/ new/ tmp/ under `path`; Maildir++ marks sub-folders with an empty maildirfolder."""
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    if folder:
        (path / "maildirfolder").touch()


# ---- folder names <-> Maildir++ directory names --------------------------------------------

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f*%]")  # controls, and LIST wildcards (RFC 3501 §6.3.8)


def folder_dirname(name: str) -> str:
    """The Maildir++ directory for IMAP mailbox `name` ("INBOX" itself is the root and is
    not handled here). Raises ValueError for a name that cannot be a mailbox: empty, "/" at
    either end or doubled, a level "." or "..", control characters, "*" or "%", or a
    directory name longer than NAME_MAX."""
    if not name or _FORBIDDEN.search(name):
        raise ValueError(f"invalid mailbox name {name!r}")
    levels = name.split("/")
    if any(level in ("", ".", "..") for level in levels):
        raise ValueError(f"invalid mailbox name {name!r}")
    encoded = "." + ".".join(_escape(utf7.encode(level)) for level in levels)
    if len(encoded.encode()) > NAME_MAX:
        raise ValueError(f"mailbox name too long: {name!r}")
    return encoded


def folder_name(dirname: str) -> str | None:
    """The IMAP mailbox name of Maildir++ directory `dirname` (".Work.Projects" ->
    "Work/Projects"), or None when it is not a folder we can name."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        return None
    levels = dirname[1:].split(".")
    try:
        decoded = [utf7.decode(_unescape(level)) for level in levels]
    except ValueError:
        return None
    name = "/".join(decoded)
    try:
        folder_dirname(name)
    except ValueError:
        return None
    return name


_ESCAPED = re.compile(r"\\([0-9a-fA-F]{2})")


def _escape(level: str) -> str:
    return level.replace("\\", "\\5c").replace(".", "\\2e")


def _unescape(level: str) -> str:
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), level)
