"""relay as an IMAP server (its MDA), over a copy of the bench Maildir.

Writes a temporary TOML config — one ``[listen] imap`` endpoint on a free 127.0.0.1 port
and no other listener, ``[delivery] enabled = false`` (plus ``nameservers`` on a dead
loopback port, so even a delivery would never reach the system resolver),
``[mda] allow_plaintext_auth = true``, ``workers = 0`` (one worker per core), ``[limits]``
``max_connections`` / ``max_connections_per_ip`` raised for the IDLE capacity test — adds
the account with ``relay users add ADDRESS -c CONFIG`` (password on stdin), copies the
Maildir to ``<data_dir>/mail/<domain>/<local>/`` (the relay indexes it on first SELECT),
and runs ``relay serve -c CONFIG`` with RLIMIT_NOFILE raised to the hard limit in the
child. Ready = an IMAP ``* OK`` greeting on the port, then one LOGIN / SELECT INBOX /
FETCH / LOGOUT exchange must succeed: a relay whose IMAP server does not answer (or
answers wrongly) is a BenchError that names the exact exchange and the tail of its log.

Stopped with SIGTERM (the supervisor stops its workers), SIGKILL to the process group
after a timeout; the pid is recorded for bench.util.reap_stale.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from bench.peers.relay import relay_command
from bench.util import LOOPBACK, REPO, BenchError, free_port, make_tmpdir, record_pid, rmtree, tail

CONFIG_TEMPLATE = """\
[server]
hostname = "bench.test"
data_dir = "{data_dir}"
workers = {workers}

[listen]
imap = ["{host}:{port}"]

[relay]
local_domains = ["{domain}"]

[limits]
max_connections = {max_connections}
max_connections_per_ip = {max_connections}
idle_timeout = 3600

[delivery]
enabled = false
nameservers = ["{host}:{dead_port}"]

[mda]
allow_plaintext_auth = true
"""


class RelayImapPeer:
    name = "relay"

    def __init__(self, maildir: Path, user: str, password: str, connections: int = 200,
                 keep: bool = False, workers: int = 0, start_timeout: float = 30.0):
        self.template = maildir
        self.user = user
        self.password = password
        self.connections = connections
        self.keep = keep
        self.workers = workers
        self.start_timeout = start_timeout
        self.host = LOOPBACK
        self.port = free_port()
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.cmd: list[str] = []
        self.check: dict = {}

    @property
    def config_path(self) -> Path:
        return self.base / "relay.toml"

    @property
    def logpath(self) -> Path:
        return self.base / "relay.log"

    def pids(self) -> list[int]:
        """Supervisor and workers."""
        from bench.imap import process_tree
        return process_tree(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def log_tail(self, n: int = 25) -> str:
        return tail(self.logpath, n) if self.base else ""

    def start(self) -> "RelayImapPeer":
        from bench.imap_data import copy_maildir
        from bench.imap_load import check_login, wait_imap
        self.cmd = relay_command()
        self.base = make_tmpdir("relay-imap-")
        data = self.base / "data"
        data.mkdir()
        local, _, domain = self.user.rpartition("@")
        self.config_path.write_text(CONFIG_TEMPLATE.format(
            data_dir=data, workers=self.workers, host=self.host, port=self.port, domain=domain,
            max_connections=max(1000, self.connections * 2 + 100), dead_port=free_port()))
        r = subprocess.run(self.cmd + ["check-config", "-c", str(self.config_path)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            raise BenchError(f"relay refuses the IMAP benchmark config ({self.config_path}):\n"
                             + r.stdout.decode(errors="replace")[-1500:])
        r = subprocess.run(self.cmd + ["users", "add", self.user, "-c", str(self.config_path)],
                           cwd=REPO, input=(self.password + "\n").encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            raise BenchError(f"`relay users add {self.user}` failed:\n"
                             + r.stdout.decode(errors="replace")[-1500:])
        copy_maildir(self.template, data / "mail" / domain / local)
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

        def child_limits():
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (ValueError, OSError):
                pass
        cmd = self.cmd + ["serve", "-c", str(self.config_path)]
        with open(self.logpath, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=child_limits)
        record_pid(self.base, self.proc.pid)
        try:
            wait_imap(self.host, self.port, self.start_timeout, self.proc)
            self.check = check_login(self.host, self.port, self.user, self.password, timeout=120)
        except BenchError as exc:
            out = self.log_tail()
            self.stop()
            raise BenchError(f"relay IMAP not usable ({' '.join(cmd)}): {exc}\n"
                             f"--- relay output (tail) ---\n{out or '(none)'}") from None
        return self

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # graceful: the relay stops its own workers
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"relay did not exit {timeout:.0f}s after SIGTERM; killing its process group",
                      file=sys.stderr)
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
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
