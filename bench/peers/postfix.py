"""Postfix peer: a private, throw-away Postfix instance plus smtp-sink / smtp-source.

* ``ensure_postfix()`` installs Debian's ``postfix`` package noninteractively when
  running as root ("No configuration", so no system-wide instance is set up or
  started); otherwise it stops with a message naming the missing package.
* ``SmtpSink`` runs Postfix's ``smtp-sink`` on a free loopback port (no fsync:
  it is the loopback ceiling and the place Postfix relays to).
* ``PostfixInstance`` writes its own ``main.cf``/``master.cf`` into a temp
  ``config_directory`` (with ``queue_directory`` and ``data_directory`` beside it,
  on the repository's disk), listens on ``127.0.0.1:<free port>`` only and relays
  everything to the sink; ``postfix -c DIR start`` / ``stop``. Durability is
  Postfix's default: the queue file is fsync'ed before the 250 after DATA.
* ``run_smtp_source()`` drives ``smtp-source`` and returns its throughput.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, asdict
from pathlib import Path

from bench.util import (LOOPBACK, BenchError, check_loopback, free_port, make_tmpdir,
                        record_pid, rmtree, stop_process, tail, wait_port)

PACKAGE = "postfix"
SBIN = Path("/usr/sbin")
TOOLS = ("postfix", "postconf", "smtp-sink", "smtp-source")


def _tool(name: str) -> str:
    path = shutil.which(name) or (str(SBIN / name) if (SBIN / name).exists() else None)
    if not path:
        raise BenchError(f"{name} not found (Debian package '{PACKAGE}')")
    return path


def postfix_installed() -> bool:
    return all(shutil.which(t) or (SBIN / t).exists() for t in TOOLS)


def ensure_postfix(log=print) -> None:
    """Make sure Postfix and its smtp-sink/smtp-source are installed (apt-get as root)."""
    if postfix_installed():
        return
    if os.geteuid() != 0:
        raise BenchError(f"Debian package '{PACKAGE}' is not installed and we are not root: "
                         f"run `apt-get install {PACKAGE}` (choose 'No configuration') and retry")
    if not shutil.which("apt-get"):
        raise BenchError(f"Debian package '{PACKAGE}' is missing and apt-get is not available")
    log(f"installing Debian package '{PACKAGE}' (No configuration; no system instance is started)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    preseed = ("postfix postfix/main_mailer_type select No configuration\n"
               "postfix postfix/mailname string bench.test\n")
    subprocess.run(["debconf-set-selections"], input=preseed.encode(), check=True, env=env)

    def apt(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=900)

    r = apt("install", "-y", "-q", "--no-install-recommends", PACKAGE)
    if r.returncode != 0:  # stale or absent package lists: update once and retry
        apt("update", "-q")
        r = apt("install", "-y", "-q", "--no-install-recommends", PACKAGE)
    if r.returncode != 0 or not postfix_installed():
        out = r.stdout.decode(errors="replace")[-2000:]
        raise BenchError(f"could not install Debian package '{PACKAGE}':\n{out}")


# --------------------------------------------------------------------------- smtp-sink

class SmtpSink:
    """``smtp-sink`` on a free loopback port; accepts everything, writes nothing to disk.

    ``count()`` is the number of messages it has received so far (from its ``-c``
    counters, written to a small file in a temp dir).
    """

    def __init__(self, port: int | None = None, backlog: int = 1024, pipelining: bool = True,
                 host: str = LOOPBACK):
        self.host = check_loopback(host)     # e.g. 127.0.0.2 for the end-to-end MX target
        self.port = port or free_port(self.host)
        self.backlog = backlog
        self.pipelining = pipelining
        self.proc: subprocess.Popen | None = None
        self.name = "smtp-sink"
        self.base: Path | None = None

    def start(self) -> "SmtpSink":
        ensure_postfix()
        check_loopback(self.host)
        # -c: running counters on stdout; -u postfix: smtp-sink insists on dropping root;
        # -m: simultaneous connections; -p: do not announce PIPELINING (only if asked).
        cmd = [_tool("smtp-sink"), "-c", "-u", "postfix", "-m", "512"]
        if not self.pipelining:
            cmd.append("-p")
        cmd += [f"{self.host}:{self.port}", str(self.backlog)]
        self.base = make_tmpdir("sink-")
        with open(self.base / "counters", "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE,
                                         start_new_session=True)
        record_pid(self.base, self.proc.pid)
        try:
            wait_port(self.host, self.port, 10, self.proc)
        except BenchError as exc:
            err = self._stderr()
            self.stop()
            raise BenchError(f"smtp-sink did not start: {exc}\n{err}") from None
        return self

    def count(self) -> int:
        """Messages received so far."""
        try:
            with open(self.base / "counters", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256))
                found = re.findall(rb"mesg=(\d+)", f.read())
        except (OSError, TypeError):
            return 0
        return int(found[-1]) if found else 0

    def accounted(self) -> int:
        return self.count()

    def _stderr(self) -> str:
        if self.proc and self.proc.poll() is not None and self.proc.stderr:
            return self.proc.stderr.read().decode(errors="replace")[-1000:]
        return ""

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self.proc = None
        rmtree(self.base)
        self.base = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------- private instance

MASTER_CF = """\
# Private benchmark instance: SMTP only on 127.0.0.1:{port}; no chroot; no local delivery.
# service type  private unpriv  chroot  wakeup  maxproc command
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """A private Postfix (own config/queue/data directories) relaying to an smtp-sink.

    Never binds port 25 or any address but 127.0.0.1; ``mydestination`` is empty so
    every recipient is relayed (queued durably, then delivered to the sink).
    """

    name = "postfix"

    def __init__(self, sink_port: int, port: int | None = None, base: Path | None = None,
                 keep: bool = False, extra: dict | None = None, sink_host: str = LOOPBACK):
        self.extra = dict(extra or {})      # extra main.cf settings (experiments only)
        self.host = LOOPBACK
        self.port = port or free_port()
        self.sink_host = check_loopback(sink_host)
        self.sink_port = sink_port
        self.base = base
        self.keep = keep
        self.started = False
        self.config_dir = self.queue_dir = self.data_dir = None  # type: Path | None

    # -- helpers
    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([_tool("postfix"), "-c", str(self.config_dir), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)

    def _postconf(self, *args: str) -> str:
        r = subprocess.run([_tool("postconf"), "-c", str(self.config_dir), *args],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        return r.stdout.decode(errors="replace")

    def maillog(self) -> str:
        return tail(self.base / "maillog", 30) if self.base else ""

    def start(self) -> "PostfixInstance":
        ensure_postfix()
        if os.geteuid() != 0:
            raise BenchError("a private Postfix instance needs root (postfix -c DIR start)")
        check_loopback(self.host)
        self.base = self.base or make_tmpdir("postfix-")
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "spool"
        self.data_dir = self.base / "lib"
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix", "postfix")
        main_cf = f"""\
# Private benchmark instance written by bench/peers/postfix.py; safe to delete.
compatibility_level = 3.6
config_directory = {self.config_dir}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
maillog_file = {self.base}/maillog
maillog_file_prefixes = {self.base}
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relayhost = [{self.sink_host}]:{self.sink_port}
smtp_bind_address = {LOOPBACK}
smtpd_banner = $myhostname ESMTP
message_size_limit = 52428800
biff = no
append_dot_mydomain = no
smtputf8_enable = no
# the benchmark opens many short connections from one address: no per-client caps
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
default_process_limit = 200
# durability is left at Postfix's defaults (queue file fsync'ed before 250)
"""
        main_cf += "".join(f"{k} = {v}\n" for k, v in self.extra.items())
        (self.config_dir / "main.cf").write_text(main_cf)
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(host=self.host, port=self.port))
        # create queue subdirectories with the right owners/modes
        r = self._postfix("set-permissions", "create-missing", timeout=120)
        if r.returncode != 0:
            raise BenchError("postfix set-permissions failed:\n" + r.stdout.decode(errors="replace")[-2000:])
        r = self._postfix("start")
        out = r.stdout.decode(errors="replace")
        if r.returncode != 0:
            raise BenchError(f"postfix -c {self.config_dir} start failed:\n{out[-2000:]}\n{self.maillog()}")
        self.started = True
        try:
            wait_port(self.host, self.port, 30)
        except BenchError as exc:
            self.stop()
            raise BenchError(f"private postfix did not listen: {exc}\n{self.maillog()}") from None
        return self

    def queue_size(self) -> int:
        """Messages still queued (incoming+active+deferred+maildrop+hold)."""
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            d = self.queue_dir / sub
            if d.is_dir():
                for _root, _dirs, files in os.walk(d):
                    n += len(files)
        return n

    def drain(self, timeout: float = 30.0) -> int:
        """Wait (bounded) until the queue is empty; returns what is left."""
        deadline = time.monotonic() + timeout
        left = self.queue_size()
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.queue_size()
        return left

    def stop(self) -> None:
        if self.started and self.config_dir is not None:
            try:
                r = self._postfix("stop", timeout=60)
                if r.returncode != 0:
                    self._postfix("abort", timeout=30)
            except (subprocess.TimeoutExpired, BenchError):
                self._postfix("abort", timeout=30)
            self._wait_master_gone()
            self.started = False
        if not self.keep:
            rmtree(self.base)

    def _wait_master_gone(self, timeout: float = 15.0) -> None:
        pidfile = self.queue_dir / "pid" / "master.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid = int(pidfile.read_text().strip())
                os.kill(pid, 0)
            except (OSError, ValueError):
                return
            time.sleep(0.1)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


class PostfixPeer:
    """Context manager: smtp-sink + private Postfix relaying to it. ``.host``/``.port`` = Postfix."""

    name = "postfix"

    def __init__(self, keep: bool = False, extra: dict | None = None, sink_host: str = LOOPBACK):
        self.sink = SmtpSink(host=sink_host)
        self.instance: PostfixInstance | None = None
        self.keep = keep
        self.extra = extra

    @property
    def host(self) -> str:
        return self.instance.host

    @property
    def port(self) -> int:
        return self.instance.port

    def settle(self, timeout: float = 30.0) -> int:
        """Between measurements: let Postfix finish relaying the load to the sink (bounded).
        Returns the number of messages still queued."""
        return self.instance.drain(timeout) if self.instance else 0

    def accounted(self) -> int:
        """Messages Postfix has durably taken so far: delivered to the sink + still queued."""
        return self.sink.count() + (self.instance.queue_size() if self.instance else 0)

    # end-to-end scenario (bench/e2e.py): cheap probes, polled while the load drains
    def sink_count(self) -> int:
        return self.sink.count()

    def queue_len(self) -> int:
        """Files in Postfix's queue directories (maildrop, incoming, active, deferred, hold)."""
        return self.instance.queue_size() if self.instance else 0

    def route_text(self) -> str:
        return (f"relayhost = [{self.sink.host}]:{self.sink.port} (no MX lookup: Postfix uses the "
                f"system resolver, which must not be used here)")

    def __enter__(self):
        self.sink.start()
        try:
            self.instance = PostfixInstance(self.sink.port, keep=self.keep, extra=self.extra,
                                            sink_host=self.sink.host)
            self.instance.__enter__()
        except BaseException:
            self.sink.stop()
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self.instance:
                self.instance.stop()
        finally:
            self.sink.stop()


# --------------------------------------------------------------------------- smtp-source

@dataclass
class SourceResult:
    tool: str
    sessions: int
    messages_requested: int
    messages_ok: int
    size: int
    reuse: bool
    seconds: float
    msgs_per_s: float
    timed_out: bool
    returncode: int
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def run_smtp_source(host: str, port: int, *, sessions: int, messages: int, size: int,
                    reuse: bool, time_limit: float, rcpt: str = "user@sink.test",
                    sender: str = "bench@bench.test", helo: str = "client.bench.test") -> SourceResult:
    """Run ``smtp-source`` once and measure throughput (messages with a completed DATA / wall time).

    smtp-source opens ``-s`` parallel sessions and sends ``-m`` messages in total.
    Without ``-d`` it disconnects after every message (a new connection per message);
    with ``-d`` a session sends its next message over the same connection (reuse).
    ``-c`` prints a running count of completed DATA commands, so a run stopped at
    ``time_limit`` still yields how many messages went through.
    """
    check_loopback(host)
    cmd = [_tool("smtp-source"), "-c", "-s", str(sessions), "-m", str(messages),
           "-l", str(size), "-f", sender, "-t", rcpt, "-M", helo]
    if reuse:
        cmd.append("-d")
    cmd.append(f"{host}:{port}")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=time_limit)
    except BaseException as exc:
        if not isinstance(exc, subprocess.TimeoutExpired):   # Ctrl-C etc.: never leave it running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    elapsed = time.monotonic() - t0
    counts = re.findall(rb"(\d+)", out)
    done = int(counts[-1]) if counts else 0
    if proc.returncode == 0 and not timed_out:
        done = max(done, messages)
    done = min(done, messages)
    errtext = err.decode(errors="replace").strip()
    if proc.returncode not in (0,) and not timed_out:
        errtext = errtext or f"smtp-source exited {proc.returncode}"
    return SourceResult("smtp-source", sessions, messages, done, size, reuse, elapsed,
                        done / elapsed if elapsed > 0 else 0.0, timed_out,
                        proc.returncode, errtext[-500:])


if __name__ == "__main__":  # quick manual check: python -m bench.peers.postfix
    ensure_postfix()
    with PostfixPeer() as p:
        print(f"postfix on {p.host}:{p.port}, sink on {p.sink.port}")
        r = run_smtp_source(p.host, p.port, sessions=10, messages=200, size=10240, reuse=True, time_limit=15)
        print(r)
        print("left in queue after drain:", p.settle())
    sys.exit(0)
