"""MaildirStore: one Maildir per account under data_dir/mail/<domain>/<local>/.

Delivery is the classic atomic Maildir protocol: write tmp/<unique>, fsync the file,
rename into new/, fsync new/ (so the rename itself is durable). Any Maildir reader
(mutt, Dovecot, our IMAP/POP3 servers) sees a message whole or not at all. Unique
names follow Dovecot's form "<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>".

Imports: stdlib only. The only code that writes mailboxes (Trust: bodies are opaque octets).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

_counter = itertools.count(1)


class MaildirStore:
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
        now = time.time()
        host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        name = (f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{host}"
                f",S={len(message)}")
        tmp = maildir / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(message)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        final = maildir / "new" / name
        os.rename(tmp, final)
        dfd = os.open(maildir / "new", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return final
