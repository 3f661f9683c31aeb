"""Dovecot peer: a private, throw-away Dovecot (imap only) over a copy of the bench Maildir.

* ``ensure_dovecot()`` installs Debian's ``dovecot-imapd`` (and so ``dovecot-core``) when
  running as root, with ``DEBIAN_FRONTEND=noninteractive`` and a policy-rc.d that forbids
  starting services for the duration of the install (an existing one is left alone), so
  no system-wide Dovecot is started; not root: it stops with a message naming the package.
* ``DovecotPeer(maildir=...)`` writes its own ``dovecot.conf`` into a temp dir on the
  repository's disk (``base_dir``, ``state_dir``, logs, passwd-file beside it) and runs
  ``dovecot -F -c FILE`` (foreground, a child of the harness, its own process group).
  Nothing of /etc/dovecot is read: the file does not include conf.d, so Dovecot's
  built-in defaults apply except for what is set here:

  - ``protocols = imap``; ``imap-login`` listens on ``127.0.0.1:<free port>`` only and
    its ``imaps`` listener is disabled (``port = 0``); every other service that has an
    inet listener is not started (no pop3/lmtp/submission protocol), so ports 143/993
    are never bound;
  - ``ssl = no``, ``disable_plaintext_auth = no``, ``auth_mechanisms = plain login``;
  - one user (passwd-file, ``{PLAIN}`` password), every login mapped by a static userdb
    to the Debian ``mail`` user (uid/gid 8: Dovecot refuses mail access as root) with
    ``mail_location = maildir:<copy>``; the copy is chown'ed to that user;
  - ``mail_max_userip_connections`` raised (the default 10 per user and IP would refuse
    the benchmark's clients), ``service imap { process_limit }`` and the login process
    limits sized for the requested number of connections (Dovecot's default: one imap
    process per connection, ``client_limit = 1``);
  - ``log_path``/``info_log_path`` in the temp dir.

  ``stop()`` sends SIGTERM to the master (its whole process group after a timeout) — used
  on normal exit, on errors and on Ctrl-C (the peer is a context manager). The master's
  pid is recorded so a run killed with SIGKILL is cleaned up by the next one
  (bench.util.reap_stale).
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from bench.util import (LOOPBACK, BenchError, free_port, make_tmpdir, record_pid, rmtree,
                        stop_process, tail)

PACKAGE = "dovecot-imapd"
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
MAIL_USER = "mail"          # Debian base-passwd: uid/gid 8, no login


def dovecot_binary() -> str | None:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    found = shutil.which("dovecot", path=path)
    if found and Path("/usr/lib/dovecot/imap").exists():
        return found
    return None


def ensure_dovecot(log=print) -> str:
    """Path of the dovecot binary; installs ``dovecot-imapd`` as root when missing."""
    found = dovecot_binary()
    if found:
        return found
    if os.geteuid() != 0:
        raise BenchError(f"Debian package '{PACKAGE}' is not installed and we are not root: "
                         f"run `apt-get install {PACKAGE}` and retry (the IMAP scenario compares "
                         "against a private Dovecot)")
    if not shutil.which("apt-get"):
        raise BenchError(f"Debian package '{PACKAGE}' is missing and apt-get is not available")
    log(f"installing Debian package '{PACKAGE}' (no service is started: policy-rc.d says 101)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    own_policy = not POLICY_RC_D.exists()
    if own_policy:
        POLICY_RC_D.write_text("#!/bin/sh\n# bench: no service starts during this install\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        def apt(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["apt-get", *args], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=900)
        install = ("install", "-y", "-q", "--no-install-recommends",
                   "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
                   PACKAGE)
        r = apt(*install)
        if r.returncode != 0:           # stale or absent package lists: update once and retry
            apt("update", "-q")
            r = apt(*install)
    finally:
        if own_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    found = dovecot_binary()
    if r.returncode != 0 or not found:
        raise BenchError(f"could not install Debian package '{PACKAGE}':\n"
                         + r.stdout.decode(errors="replace")[-2000:])
    return found


def dovecot_version() -> str:
    b = dovecot_binary()
    if not b:
        return "?"
    try:
        return subprocess.run([b, "--version"], capture_output=True, timeout=10).stdout.decode().split()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


CONFIG_TEMPLATE = """\
# private benchmark instance (bench/peers/dovecot.py); nothing from /etc/dovecot is read
instance_name = {instance}
base_dir = {base}/run
state_dir = {base}/state
protocols = imap
listen = {host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot-info.log
mail_location = maildir:{maildir}
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
default_internal_user = dovecot
default_login_user = dovenull
default_process_limit = {process_limit}
default_client_limit = {client_limit}
default_vsz_limit = 256M
protocol imap {{
  mail_max_userip_connections = {max_userip}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}
}}
service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  process_limit = {login_limit}
}}
service imap {{
  process_limit = {process_limit}
}}
service anvil {{
  client_limit = {client_limit}
}}
service log {{
  client_limit = {client_limit}
}}
"""


class DovecotPeer:
    """Private Dovecot over ``maildir`` (copied into the peer's temp dir, owned by ``mail``)."""

    name = "dovecot"

    def __init__(self, maildir: Path, user: str, password: str, connections: int = 200,
                 keep: bool = False, start_timeout: float = 30.0):
        self.template = maildir
        self.user = user
        self.password = password
        self.connections = connections
        self.keep = keep
        self.start_timeout = start_timeout
        self.host = LOOPBACK
        self.port = free_port()
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.binary = ""

    @property
    def config_path(self) -> Path:
        return self.base / "dovecot.conf"

    @property
    def maildir(self) -> Path:
        return self.base / "home" / "Maildir"

    def pids(self) -> list[int]:
        """The master and everything under it (login, imap, auth, log, anvil, config...)."""
        from bench.imap import process_tree
        return process_tree(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def start(self) -> "DovecotPeer":
        self.binary = ensure_dovecot()
        try:
            mail = pwd.getpwnam(MAIL_USER)
            for u in ("dovecot", "dovenull"):
                pwd.getpwnam(u)
        except KeyError as exc:
            raise BenchError(f"user {exc} missing (Debian's dovecot-core creates dovecot/dovenull; "
                             f"'{MAIL_USER}' comes with base-passwd)") from None
        self.base = make_tmpdir("dovecot-")
        for d in ("run", "state", "home"):
            (self.base / d).mkdir()
        from bench.imap_data import copy_maildir
        copy_maildir(self.template, self.maildir)
        for root, dirs, files in os.walk(self.base / "home"):
            os.chown(root, mail.pw_uid, mail.pw_gid)
            for f in files:
                os.chown(os.path.join(root, f), mail.pw_uid, mail.pw_gid)
        # every directory above the Maildir must be traversable by the mail user
        p = self.base
        while p != p.parent:
            if not os.stat(p).st_mode & 0o001:
                raise BenchError(f"{p} is not searchable by others: the private Dovecot's mail "
                                 f"user ({MAIL_USER}) could not reach its Maildir copy")
            p = p.parent
        passwd = self.base / "passwd"
        passwd.write_text(f"{self.user}:{{PLAIN}}{self.password}::::::\n")
        passwd.chmod(0o640)
        os.chown(passwd, 0, pwd.getpwnam("dovecot").pw_gid)
        n = self.connections
        self.config_path.write_text(CONFIG_TEMPLATE.format(
            instance=f"bench-{self.base.name}", base=self.base, host=self.host, port=self.port,
            maildir=self.maildir, home=self.base / "home", uid=mail.pw_uid, gid=mail.pw_gid,
            process_limit=n + 50, client_limit=max(1000, 2 * n + 100), max_userip=n + 100,
            login_limit=min(n + 50, 1000)))
        r = subprocess.run(["doveconf", "-c", str(self.config_path), "-n"], capture_output=True, timeout=30)
        if r.returncode != 0:
            raise BenchError("dovecot refuses the benchmark config:\n"
                             + (r.stderr or r.stdout).decode(errors="replace")[-1500:])
        # fd limit: the log and anvil services keep one fd per imap process
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

        def raise_nofile():
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (ValueError, OSError):
                pass
        with open(self.base / "master.out", "wb") as out:
            self.proc = subprocess.Popen([self.binary, "-F", "-c", str(self.config_path)],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=raise_nofile)
        record_pid(self.base, self.proc.pid)
        try:
            from bench.imap_load import wait_imap
            wait_imap(self.host, self.port, self.start_timeout, self.proc)
        except BenchError as exc:
            out = tail(self.base / "master.out", 15) + "\n" + tail(self.base / "dovecot.log", 15)
            self.stop()
            raise BenchError(f"dovecot did not start: {exc}\n--- dovecot output (tail) ---\n"
                             f"{out.strip() or '(none)'}") from None
        return self

    def log_tail(self, n: int = 20) -> str:
        return tail(self.base / "dovecot.log", n) if self.base else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            # SIGTERM to the master: it stops its children; then the whole group, just in case
            stop_process(proc, timeout=15)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not self.keep:
            rmtree(self.base)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
