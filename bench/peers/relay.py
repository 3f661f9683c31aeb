"""relay peer: our own MTA, started from the checkout's venv.

Writes a temporary TOML config (data_dir in a temp dir on the repository's disk,
one SMTP listener on a free 127.0.0.1 port), runs ``.venv/bin/relay serve -c CONFIG``
as a subprocess, waits for the SMTP greeting, and stops it with SIGTERM (SIGKILL
to its process group only if it does not exit in time). Any failure to start is a
BenchError naming the command and the tail of its output.

In this benchmark recipients are at a remote domain (sink.test) and the client is
in relay_networks, so the relay accepts them for relaying: each 250 means the
message is durably queued. (Delivery is a later feature; nothing is delivered.)
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from bench.util import (LOOPBACK, REPO, BenchError, free_port, make_tmpdir, rmtree, tail,
                        wait_port)

CONFIG_TEMPLATE = """\
[server]
hostname = "bench.test"
data_dir = "{data_dir}"
workers = 0

[listen]
smtp = ["{host}:{port}"]

[relay]
local_domains = ["bench.test"]
relay_networks = ["127.0.0.0/8"]
max_message_size = 52428800
"""


def relay_command() -> list[str]:
    """The relay's entry point: the checkout's venv first, then next to this interpreter."""
    for cand in (REPO / ".venv" / "bin" / "relay", Path(sys.executable).parent / "relay"):
        if cand.exists() and os.access(cand, os.X_OK):
            return [str(cand)]
    found = shutil.which("relay")
    if found:
        return [found]
    raise BenchError(f"the relay is not installed: no {REPO / '.venv/bin/relay'} "
                     "(install the project into .venv, e.g. `.venv/bin/pip install -e .`)")


class RelayPeer:
    name = "relay"

    def __init__(self, keep: bool = False, start_timeout: float = 30.0):
        self.host = LOOPBACK
        self.port = free_port()
        self.keep = keep
        self.start_timeout = start_timeout
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None

    def config_text(self) -> str:
        return CONFIG_TEMPLATE.format(data_dir=self.base / "data", host=self.host, port=self.port)

    def start(self) -> "RelayPeer":
        cmd = relay_command()
        self.base = make_tmpdir("relay-")
        (self.base / "data").mkdir()
        config = self.base / "relay.toml"
        config.write_text(self.config_text())
        cmd += ["serve", "-c", str(config)]
        logpath = self.base / "relay.log"
        with open(logpath, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_port(self.host, self.port, self.start_timeout, self.proc)
        except BenchError as exc:
            out = tail(logpath, 25)
            self.stop()
            raise BenchError(f"relay did not start ({' '.join(cmd)}): {exc}\n"
                             f"--- relay output (tail) ---\n{out or '(none)'}") from None
        return self

    def settle(self, timeout: float = 30.0) -> int:
        return 0

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
            try:  # workers left behind (or a hung master): kill the whole group
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
