"""relay peer: our own MTA, started from the checkout's venv.

Writes a temporary TOML config (data_dir in a temp dir on the repository's disk,
one SMTP listener on a free 127.0.0.1 port), runs ``.venv/bin/relay serve -c CONFIG``
as a subprocess, waits for the SMTP greeting, and stops it with SIGTERM (SIGKILL
to its process group only if it does not exit in time). Any failure to start is a
BenchError naming the command and the tail of its output.

In this benchmark recipients are at a remote domain (sink.test) and the client is
in relay_networks, so the relay accepts them for relaying: each 250 means the
message is durably queued. If the relay knows a ``[delivery]`` section (checked with
``relay check-config``), it is pointed at an smtp-sink on loopback (``smarthost``)
with a dead loopback ``nameservers`` entry, exactly like Postfix's relayhost, so
delivery never leaves 127.0.0.0/8. Only a relay that does not know ``[delivery]`` at
all (so cannot deliver) is run without it; any other refusal stops the benchmark.

``RelayPeer(relaying=False)`` ("relay_queue_only") runs with ``[delivery] enabled =
false`` and no sink: it accepts and queues only, the like-for-like peer of the aiosmtpd
handler, which stores and relays nothing.

``RelayPeer(route="mx")`` is the end-to-end set-up (bench/e2e.py): no smarthost;
``[delivery] nameservers`` is a loopback dnsmasq (bench/peers/dns.py) whose
``sink.test MX 10 mx.sink.test``, ``mx.sink.test A 127.0.0.2`` points at an smtp-sink
on 127.0.0.2, and ``[delivery] port`` is that sink's port. ``route="smarthost"`` with
``sink_host="127.0.0.2"`` is the like-for-like variant (same sink address, no MX lookup,
like Postfix's relayhost). Both need ``[delivery]``: a relay without it is not run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.peers.dns import LoopbackDns
from bench.peers.postfix import SmtpSink
from bench.util import (LOOPBACK, REPO, BenchError, free_port, make_tmpdir, record_pid, rmtree,
                        tail, wait_port)

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

DELIVERY_TEMPLATE = """
[delivery]
smarthost = "{sink_host}:{sink_port}"
nameservers = ["{host}:{dns_port}"]
"""

# relay_queue_only: accept and queue, deliver nothing (compared with aiosmtpd)
QUEUE_ONLY_TEMPLATE = """
[delivery]
enabled = false
"""

# end to end: the sink is found through MX records served by a loopback dnsmasq
MX_DELIVERY_TEMPLATE = """
[delivery]
nameservers = ["{nameserver}"]
port = {sink_port}
"""

E2E_DOMAIN = "sink.test"                 # the recipients' domain (smtp-source/loadgen default)
E2E_MX = "mx.sink.test"


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

    def __init__(self, keep: bool = False, start_timeout: float = 30.0, route: str = "smarthost",
                 sink_host: str = LOOPBACK, relaying: bool = True):
        if route not in ("smarthost", "mx"):
            raise ValueError(f"route must be 'smarthost' or 'mx', not {route!r}")
        self.route = route
        # False: `[delivery] enabled = false` (accept and queue only, like the aiosmtpd
        # peer, which stores and relays nothing); the peer is then named relay_queue_only.
        self.relaying = relaying
        if not relaying:
            self.name = "relay_queue_only"
        self.sink_host = sink_host
        self.dns: LoopbackDns | None = None
        self._qstore = None                  # read-only view of the queue (queue_len)
        self.host = LOOPBACK
        self.port = free_port()
        self.keep = keep
        self.start_timeout = start_timeout
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.sink: SmtpSink | None = None
        self.delivery = False          # True: [delivery] accepted, relaying to our smtp-sink
        self.last_queue: int | None = None   # queue size at the last settle()
        self.cmd: list[str] = []

    @property
    def config_path(self) -> Path:
        return self.base / "relay.toml"

    def config_text(self, delivery_sink: int | None = None) -> str:
        text = CONFIG_TEMPLATE.format(data_dir=self.base / "data", host=self.host, port=self.port)
        if delivery_sink and self.dns is not None:
            text += MX_DELIVERY_TEMPLATE.format(nameserver=self.dns.nameserver,
                                                sink_port=delivery_sink)
        elif delivery_sink:
            # nameservers: a dead loopback port, so nothing can ever reach the system resolver
            text += DELIVERY_TEMPLATE.format(host=self.host, sink_host=self.sink_host,
                                             sink_port=delivery_sink, dns_port=free_port())
        return text

    def route_text(self) -> str:
        if self.route == "mx" and self.dns is not None and self.sink is not None:
            return (f"MX lookup via dnsmasq {self.dns.nameserver}: {E2E_DOMAIN} MX {E2E_MX} -> "
                    f"{self.sink.host}, [delivery] port = {self.sink.port}")
        if self.sink is not None:
            return f"[delivery] smarthost = {self.sink.host}:{self.sink.port} (no MX lookup)"
        return "no delivery"

    def _check_config(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd + ["check-config", "-c", str(self.config_path)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)

    def start(self) -> "RelayPeer":
        self.cmd = relay_command()
        self.base = make_tmpdir("relay-")
        (self.base / "data").mkdir()
        # Prefer a config with delivery to a loopback smtp-sink; fall back to the plain one
        # for a relay that does not know [delivery] yet.
        if not self.relaying:
            self.config_path.write_text(self.config_text() + QUEUE_ONLY_TEMPLATE)
            r = self._check_config()
            if r.returncode != 0:
                raise BenchError(f"relay refuses [delivery] enabled = false:\n"
                                 + r.stdout.decode(errors="replace")[-1500:])
            return self._serve()
        self.sink = SmtpSink(host=self.sink_host).start()
        if self.route == "mx":
            self.dns = LoopbackDns({E2E_DOMAIN: (E2E_MX, self.sink.host)}).start()
        self.config_path.write_text(self.config_text(self.sink.port))
        r = self._check_config()
        if r.returncode == 0:
            self.delivery = True
        else:
            said = r.stdout.decode(errors="replace")
            if self.route == "mx":
                raise BenchError(f"relay refuses the end-to-end [delivery] section "
                                 f"(nameservers/port on loopback):\n{said[-1500:]}")
            if not ("delivery" in said and "unknown section" in said):
                # A relay that knows [delivery] but refuses ours must not run: it could look
                # up MX records through the system resolver, off loopback.
                raise BenchError(f"relay refuses the benchmark's [delivery] section "
                                 f"(smarthost/nameservers on loopback):\n{said[-1500:]}")
            self.sink.stop()
            self.sink = None
            self.config_path.write_text(self.config_text())
            r2 = self._check_config()
            if r2.returncode != 0:
                raise BenchError(f"relay refuses the benchmark config ({self.config_path}):\n"
                                 + r2.stdout.decode(errors="replace")[-1500:])
        return self._serve()

    def _serve(self) -> "RelayPeer":
        cmd = self.cmd + ["serve", "-c", str(self.config_path)]
        logpath = self.base / "relay.log"
        with open(logpath, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        record_pid(self.base, self.proc.pid)
        try:
            wait_port(self.host, self.port, self.start_timeout, self.proc)
        except BenchError as exc:
            out = tail(logpath, 25)
            self.stop()
            raise BenchError(f"relay did not start ({' '.join(cmd)}): {exc}\n"
                             f"--- relay output (tail) ---\n{out or '(none)'}") from None
        return self

    def queue_count(self) -> int | None:
        """Messages in the relay's queue (``relay queue list --json``), None if unavailable."""
        try:
            r = subprocess.run(self.cmd + ["queue", "list", "-c", str(self.config_path), "--json"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
            return len(json.loads(r.stdout)) if r.returncode == 0 else None
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None

    def settle(self, timeout: float = 30.0, stall: float = 3.0) -> int:
        """Between measurements. With delivery to the sink: wait while the queue drains
        (until empty, no progress for ``stall`` s, or ``timeout``). Returns the number of
        messages left in the queue (also kept in ``last_queue``)."""
        left = self.queue_len()
        if left is not None and self.delivery:
            now = time.monotonic()
            deadline, last_progress, prev = now + timeout, now, left
            while left and now < deadline and now - last_progress < stall:
                time.sleep(0.2)
                left = self.queue_len() or 0
                now = time.monotonic()
                if left < prev:
                    prev, last_progress = left, now
        self.last_queue = left
        return left or 0

    def delivered(self) -> int:
        return self.sink.count() if self.sink else 0

    # end-to-end scenario (bench/e2e.py): cheap probes, polled while the load drains
    def sink_count(self) -> int:
        return self.delivered()

    def queue_len(self) -> int | None:
        """Messages in the queue, cheaply: the LMDB entry count of the queue's envelope
        table through a read-only environment in this process (the relay's own
        ``QueueStore``); falls back to ``relay queue list --json`` (a process per call)
        when that cannot be opened. None if neither works."""
        if self._qstore is None:
            try:
                from relay.queue.store import QueueStore
                path = self.base / "data" / "queue"
                if (path / "data.mdb").exists():
                    self._qstore = QueueStore(path, readonly=True)
            except Exception:
                self._qstore = False
        if self._qstore:
            try:
                return len(self._qstore)
            except Exception:
                pass
        return self.queue_count()

    def log_size(self) -> int:
        try:
            return (self.base / "relay.log").stat().st_size
        except (OSError, TypeError):
            return 0

    def log_count(self, text: str, since: int = 0) -> int:
        """Lines of the relay's log (from byte ``since`` on) that contain ``text``."""
        try:
            with open(self.base / "relay.log", "rb") as f:
                f.seek(since)
                return sum(1 for line in f if text.encode() in line)
        except (OSError, TypeError):
            return 0

    def dns_queries(self) -> int | None:
        return self.dns.queries() if self.dns is not None else None

    def accounted(self) -> int | None:
        """Messages the relay has durably taken so far: delivered to the sink + still queued
        (as of the last settle()); None when the queue cannot be listed."""
        if self.last_queue is None:
            return None
        return self.delivered() + self.last_queue

    def stop(self, timeout: float = 20.0) -> None:
        if self._qstore:
            try:
                self._qstore.close()
            except Exception:
                pass
        self._qstore = None
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
        if self.sink is not None:
            self.sink.stop()
            self.sink = None
        if self.dns is not None:
            self.dns.stop()
            self.dns = None
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
