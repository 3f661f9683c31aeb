"""IMAP with third-party clients against the real relay: curl (imap:// and imaps://),
mbsync (isync: a round trip to a local Maildir and back, flags and a new message), mutt
(batch mode saving its Fcc over IMAP, and reading a message in a pseudo-terminal) and
fetchmail. Every run is bounded by a timeout."""

from __future__ import annotations

import imaplib
import os
import pty
import re
import select
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.relay_server import RelayProcess, add_users, free_port


USERS = ("curt", "isa", "mia", "fritz", "nora")
TIMEOUT = 30


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: make test installs it (Debian package {package})"
    return path


@pytest.fixture(scope="module")
def mda(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    imap, imaps = free_port(), free_port()
    relay = RelayProcess(tmp_path_factory.mktemp("imapclients"), delivery={"enabled": True},
                         listen={"imap": [f"127.0.0.1:{imap}"], "imaps": [f"127.0.0.1:{imaps}"]})
    relay.imap_port, relay.imaps_port = imap, imaps  # type: ignore[attr-defined]
    add_users(relay, USERS)
    with relay:
        yield relay


def deliver(relay: RelayProcess, user: str, *bodies: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        for body in bodies:
            assert s.sendmail("sender@remote.test", [f"{user}@example.test"], body) == {}
    deadline = time.monotonic() + 20
    while len(stored(relay, user)) < len(bodies):
        assert time.monotonic() < deadline, "delivery did not happen"
        time.sleep(0.05)


def stored(relay: RelayProcess, user: str, folder: str = "") -> list[bytes]:
    root = relay.data_dir / "mail" / "example.test" / user / folder
    if not root.exists():
        return []
    return [p.read_bytes() for d in ("new", "cur") for p in sorted((root / d).iterdir())]


def imap(relay: RelayProcess, user: str) -> imaplib.IMAP4:
    box = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)  # type: ignore[attr-defined]
    box.login(f"{user}@example.test", f"{user}-pw")
    return box


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, timeout=TIMEOUT, **kwargs)  # type: ignore[call-overload]


def test_curl_lists_searches_fetches_and_uploads(mda: RelayProcess, tmp_path: Path) -> None:
    curl = tool("curl", "curl")
    deliver(mda, "curt", b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n")
    auth = ["-sS", "-u", "curt@example.test:curt-pw"]
    plain = f"imap://127.0.0.1:{mda.imap_port}"  # type: ignore[attr-defined]
    secure = f"imaps://127.0.0.1:{mda.imaps_port}"  # type: ignore[attr-defined]
    listing = run([curl, *auth, plain + "/"])
    assert listing.returncode == 0, listing.stderr
    assert b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"' in listing.stdout
    found = run([curl, *auth, "-k", secure + "/INBOX?ALL"])
    assert found.returncode == 0 and found.stdout.strip() == b"* SEARCH 1 2", found.stderr
    message = run([curl, *auth, plain + "/INBOX;UID=2"])
    assert message.returncode == 0 and message.stdout == stored(mda, "curt")[1]
    upload = tmp_path / "draft.eml"
    upload.write_bytes(b"Subject: uploaded\r\n\r\nvia curl\r\n")
    put = run([curl, *auth, "-k", "-T", str(upload), secure + "/Drafts"])
    assert put.returncode == 0, put.stderr
    assert stored(mda, "curt", ".Drafts") == [upload.read_bytes()]


def test_mbsync_round_trip(mda: RelayProcess, tmp_path: Path) -> None:
    mbsync = tool("mbsync", "isync")
    deliver(mda, "isa", b"Subject: a\r\n\r\nA\r\n", b"Subject: b\r\n\r\nB\r\n")
    local = tmp_path / "local"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(f"""\
IMAPAccount relay
Host 127.0.0.1
Port {mda.imaps_port}
User isa@example.test
Pass isa-pw
SSLType IMAPS
CertificateFile {mda.data_dir / "tls" / "dev-cert.pem"}

IMAPStore remote
Account relay

MaildirStore near
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel relay
Far :remote:
Near :near:
Patterns *
Create Both
Expunge Both
SyncState *
""")  # type: ignore[attr-defined]
    first = run([mbsync, "-c", str(config), "-a"])
    assert first.returncode == 0, first.stderr
    inbox = sorted(p for d in ("new", "cur") for p in (local / "INBOX" / d).iterdir())
    # mbsync stores LF line ends and adds its X-TUID header; the rest is the same.
    assert [re.sub(rb"X-TUID: .*\n", b"", p.read_bytes()).replace(b"\n", b"\r\n")
            for p in inbox] == stored(mda, "isa")
    assert {"Sent", "Drafts", "Trash", "Junk"} <= {p.name for p in local.iterdir()}
    # Locally: flag the first message, file a new one in Sent.
    target = inbox[0]
    flagged = local / "INBOX" / "cur" / (target.name.split(":2,")[0] + ":2,FS")
    target.rename(flagged)
    (local / "Sent" / "new" / "1700000000.local.test").write_bytes(
        b"Subject: written offline\r\n\r\nhello\r\n")
    second = run([mbsync, "-c", str(config), "-a"])
    assert second.returncode == 0, second.stderr
    box = imap(mda, "isa")
    box.select("INBOX")
    assert box.fetch("1", "(FLAGS)")[1] == [b"1 (FLAGS (\\Flagged \\Seen))"]
    box.select("Sent")
    typ, data = box.fetch("1", "(BODY.PEEK[TEXT])")
    assert data[0][1] == b"hello\r\n"  # type: ignore[index]
    box.logout()


def mutt_config(relay: RelayProcess, home: Path) -> Path:
    rc = home / "muttrc"
    rc.write_text(f"""\
set folder="imap://mia%40example.test@127.0.0.1:{relay.imap_port}/"
set imap_pass="mia-pw"
set spoolfile="=INBOX"
set record="=Sent"
set copy=yes
set smtp_url="smtp://127.0.0.1:{relay.port}/"
set from="mia@example.test"
set ssl_starttls=no
set ssl_force_tls=no
set wait_key=no
set quit=yes
set delete=yes
set move=no
set confirmappend=no
""")  # type: ignore[attr-defined]
    return rc


def test_mutt_sends_with_fcc_over_imap_in_batch_mode(mda: RelayProcess, tmp_path: Path) -> None:
    mutt = tool("mutt", "mutt")
    rc = mutt_config(mda, tmp_path)
    sent = run([mutt, "-n", "-F", str(rc), "-s", "batch from mutt", "nora@example.test"],
               input=b"hello from mutt\n", env=dict(os.environ, HOME=str(tmp_path)))
    assert sent.returncode == 0, sent.stderr
    copies = stored(mda, "mia", ".Sent")
    assert len(copies) == 1 and b"Subject: batch from mutt" in copies[0]


def test_mutt_reads_and_files_a_message(mda: RelayProcess, tmp_path: Path) -> None:
    mutt = tool("mutt", "mutt")
    deliver(mda, "mia", b"Subject: for mutt\r\n\r\nread me\r\n")
    rc = mutt_config(mda, tmp_path)
    piped = tmp_path / "piped.eml"
    keys = f"<pipe-message>cat > {piped}<enter><save-message>=Trash<enter><sync-mailbox><quit>"
    master, slave = pty.openpty()
    proc = subprocess.Popen([mutt, "-n", "-F", str(rc), "-e", f"push '{keys}'"],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env=dict(os.environ, HOME=str(tmp_path), TERM="vt100"))
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    screen += os.read(master, 65536)
                except OSError:
                    break
        assert proc.wait(timeout=5) == 0, screen[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert piped.read_bytes().endswith(b"Subject: for mutt\r\n\r\nread me\r\n".replace(
        b"\r\n", b"\n"))
    assert stored(mda, "mia") == []
    assert b"read me" in stored(mda, "mia", ".Trash")[0]


def test_fetchmail_retrieves_over_imap(mda: RelayProcess, tmp_path: Path) -> None:
    fetchmail = tool("fetchmail", "fetchmail")
    deliver(mda, "fritz", b"Subject: f1\r\n\r\nfetch one\r\n", b"Subject: f2\r\n\r\nfetch two\r\n")
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(f"""\
set no syslog
poll 127.0.0.1 with proto IMAP service {mda.imap_port}
  user "fritz@example.test" there with password "fritz-pw" is "root" here
  options keep fetchall sslproto '' no sslcertck
  mda "/bin/sh -c 'cat > {out}/msg.$$'"
""")  # type: ignore[attr-defined]
    rc.chmod(0o600)
    done = run([fetchmail, "-f", str(rc), "--nodetach"],
               env=dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    bodies = sorted(p.read_bytes() for p in out.iterdir())
    assert len(bodies) == 2
    assert any(b.endswith(b"fetch one\r\n") or b.endswith(b"fetch one\n") for b in bodies)
    box = imap(mda, "fritz")
    box.select("INBOX", readonly=True)
    assert box.search(None, "SEEN") == ("OK", [b"1 2"])  # kept, marked seen
    box.logout()
