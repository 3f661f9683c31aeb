"""A loopback DNS server for the end-to-end scenario: dnsmasq on 127.0.0.1:<free port>.

    with LoopbackDns({"sink.test": ("mx.sink.test", "127.0.0.2")}) as dns:
        ...  # [delivery] nameservers = [dns.nameserver]  ("127.0.0.1:PORT")

dnsmasq answers only from its command line: ``--no-resolv --no-hosts`` (no upstream,
no /etc/hosts), ``--local=/test/`` (any other *.test name is NXDOMAIN, never
forwarded), ``--bind-interfaces --listen-address=127.0.0.1`` on a port free for UDP and
TCP, one ``--mx-host`` + ``--host-record`` per domain (addresses must be in
127.0.0.0/8), ``--local-ttl`` 300 s. Every query is logged to a file so the report can
say how many lookups the relay made (``queries()``).

Only the harness's own code (this module) talks to it; nothing here reads
/etc/resolv.conf. dnsmasq-base ships /usr/sbin/dnsmasq and starts no service; as root
it is installed when missing (like Postfix in bench/peers/postfix.py).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

from bench.util import (LOOPBACK, BenchError, check_loopback, make_tmpdir, record_pid, rmtree,
                        stop_process, tail)

PACKAGE = "dnsmasq-base"
_QUERY = re.compile(r"query\[(\w+)\] (\S+) from ")


def dnsmasq_binary() -> str:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    found = shutil.which("dnsmasq", path=path)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", PACKAGE]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
        found = shutil.which("dnsmasq", path=path)
        if found:
            return found
    raise BenchError(f"dnsmasq not found: the end-to-end scenario needs the Debian package "
                     f"'{PACKAGE}' (as root: apt-get install {PACKAGE})")


def free_udp_tcp_port(host: str = LOOPBACK) -> int:
    """A port free for both UDP and TCP on ``host`` right now (dnsmasq serves both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise BenchError(f"no free UDP+TCP port on {host}")


def _mx_query(name: str, qid: int = 0x6265) -> bytes:
    """A minimal DNS query (RD set) for the MX records of ``name``."""
    labels = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.rstrip(".").split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 15, 1)


def mx_answer_count(host: str, port: int, name: str, timeout: float = 0.3) -> int | None:
    """Number of answer records to an MX query for ``name`` (None: no reply / not NOERROR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(_mx_query(name), (host, port))
            data = s.recv(4096)
        except OSError:
            return None
    if len(data) < 12:
        return None
    qid, flags, _qd, an, _ns, _ar = struct.unpack("!HHHHHH", data[:12])
    if qid != 0x6265 or flags & 0x000F:       # wrong id or rcode != NOERROR
        return None
    return an


class LoopbackDns:
    """dnsmasq on 127.0.0.1:<free port> serving ``{domain: (exchanger, address)}`` as
    ``domain MX 10 exchanger`` + ``exchanger A address``. Context manager."""

    name = "dnsmasq"

    def __init__(self, mx: dict[str, tuple[str, str]], ttl: int = 300):
        for _domain, (_exchanger, address) in mx.items():
            check_loopback(address)
        self.mx = dict(mx)
        self.ttl = ttl
        self.host = LOOPBACK
        self.port = 0
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._probes = 0

    @property
    def nameserver(self) -> str:
        """``"127.0.0.1:PORT"`` as the relay's ``[delivery] nameservers`` takes it."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base / "dnsmasq.log"

    def command(self) -> list[str]:
        cmd = [dnsmasq_binary(), "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
               "--bind-interfaces", f"--listen-address={self.host}", f"--port={self.port}",
               "--local=/test/", f"--local-ttl={self.ttl}", "--pid-file=",
               "--log-queries", f"--log-facility={self.log_path}"]
        for domain, (exchanger, address) in self.mx.items():
            cmd += [f"--mx-host={domain},{exchanger},10", f"--host-record={exchanger},{address}"]
        return cmd

    def start(self) -> "LoopbackDns":
        self.base = make_tmpdir("dns-")
        self.base.chmod(0o777)        # dnsmasq drops root before it writes the query log
        last = ""
        for _ in range(3):            # the port may be taken between the probe and the bind
            self.port = free_udp_tcp_port(self.host)
            with open(self.base / "dnsmasq.out", "wb") as out:
                self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            record_pid(self.base, self.proc.pid)
            if self._wait_ready():
                self._probes = self._count()     # the readiness probes are not the relay's
                return self
            last = tail(self.base / "dnsmasq.out", 10)
            stop_process(self.proc, 5)
            self.proc = None
            if "in use" not in last:
                break
        self.stop()
        raise BenchError(f"dnsmasq did not start on {self.host}: {last or 'no output'}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        """Ready = it answers the MX query of the first domain with at least one record."""
        domain = next(iter(self.mx), "ready.test")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            n = mx_answer_count(self.host, self.port, domain)
            if n:
                return True
            time.sleep(0.05)
        return False

    def queries(self) -> int:
        """Queries dnsmasq has answered since it was ready (the harness's own readiness
        probes left out), from its query log."""
        return max(0, self._count() - self._probes)

    def _count(self) -> int:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, TypeError):
            return 0
        return len(_QUERY.findall(text))

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


if __name__ == "__main__":  # manual check: python -m bench.peers.dns
    with LoopbackDns({"sink.test": ("mx.sink.test", "127.0.0.2")}) as d:
        print(f"dnsmasq on {d.nameserver}: sink.test MX answers "
              f"{mx_answer_count(d.host, d.port, 'sink.test')}; queries logged {d.queries()}")
