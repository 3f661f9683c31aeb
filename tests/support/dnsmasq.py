"""Harness: a real dnsmasq on 127.0.0.1 serving the records a test supplies.

    dns = Dnsmasq(tmp_path)
    dns.mx("example.test", "mx1.example.test", 10).host("mx1.example.test", "127.0.0.2")
    dns.null_mx("nullmx.test").servfail("servfail.test").unresponsive("slow.test")
    with dns:
        resolver = MxResolver([dns.nameserver])

The generated config answers only from local data: no-resolv, no-hosts, no DHCP,
bind-interfaces on 127.0.0.1 and a free port (UDP and TCP), `local=/test/` so any other
*.test name is NXDOMAIN, every query logged to a file (`queries()` reads it). Records
are fixed at start; TTLs are `ttl` (dnsmasq's local-ttl, default 300 s) unless a record
says otherwise.

SERVFAIL: dnsmasq only says SERVFAIL when an upstream does, so `servfail(domain)`
forwards that domain to a tiny upstream in this process (a thread on another loopback
port) that answers every query with SERVFAIL; dnsmasq relays it within milliseconds.
(Forwarding to a closed port instead makes dnsmasq wait silently: the client times out.
`unresponsive(domain)` gives exactly that, for timeout tests.)

If dnsmasq is missing it is installed when we are root (`apt-get install dnsmasq-base`,
which ships /usr/sbin/dnsmasq and starts no service); otherwise the error names the
package.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rcode

PACKAGE = "dnsmasq-base"
HOST = "127.0.0.1"
_QUERY_LINE = re.compile(r"query\[(\w+)\] (\S+) from ")


def dnsmasq_binary() -> str:
    """Path of dnsmasq, installing the Debian package first when root and missing."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    found = shutil.which("dnsmasq", path=path)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", PACKAGE]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
        found = shutil.which("dnsmasq", path=path)
        if found:
            return found
    raise RuntimeError(f"dnsmasq not found: the MX tests need the Debian package {PACKAGE} "
                       f"(as root: apt-get install {PACKAGE})")


def free_udp_tcp_port() -> int:
    """A loopback port free for both UDP and TCP right now (dnsmasq serves both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP+TCP port on 127.0.0.1")


class _ServfailUpstream:
    """A UDP 'nameserver' on loopback answering every query with SERVFAIL."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="servfail-upstream",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                reply = dns.message.make_response(dns.message.from_wire(data))
            except Exception:
                continue
            reply.set_rcode(dns.rcode.SERVFAIL)
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class Dnsmasq:
    """A dnsmasq subprocess on 127.0.0.1:`port`; configure, then `with` it (or start/stop)."""

    def __init__(self, workdir: Path, ttl: int = 300) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "dnsmasq.conf"
        self.log_path = self.workdir / "dnsmasq.log"
        self.ttl = ttl
        self.port = 0
        self._records: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._servfail: _ServfailUpstream | None = None
        self._silent: socket.socket | None = None

    @property
    def nameserver(self) -> str:
        """ "127.0.0.1:PORT", as MxResolver takes it."""
        return f"{HOST}:{self.port}"

    # --- records (before start) -------------------------------------------------------

    def _add(self, line: str) -> Dnsmasq:
        if self._proc is not None:
            raise RuntimeError("add records before starting dnsmasq")
        self._records.append(line)
        return self

    def mx(self, domain: str, exchanger: str, preference: int) -> Dnsmasq:
        return self._add(f"mx-host={domain},{exchanger},{preference}")

    def host(self, name: str, *addresses: str, ttl: int | None = None) -> Dnsmasq:
        """A and/or AAAA records for exactly `name` (not its subdomains)."""
        suffix = f",{ttl}" if ttl is not None else ""
        return self._add(f"host-record={name},{','.join(addresses)}{suffix}")

    def rr(self, name: str, rrtype: int, hexdata: str) -> Dnsmasq:
        """Any record, given as its type number and RDATA in hex."""
        return self._add(f"dns-rr={name},{rrtype},{hexdata}")

    def null_mx(self, domain: str) -> Dnsmasq:
        """RFC 7505 null MX: one MX, preference 0 (0000), exchange the root (00)."""
        return self.rr(domain, 15, "000000")

    def servfail(self, domain: str) -> Dnsmasq:
        """Every name at or under `domain` answers SERVFAIL (from the stub upstream)."""
        if self._servfail is None:
            self._servfail = _ServfailUpstream()
        return self._add(f"server=/{domain}/{HOST}#{self._servfail.port}")

    def unresponsive(self, domain: str) -> Dnsmasq:
        """Queries at or under `domain` get no answer at all (the client times out)."""
        if self._silent is None:
            self._silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._silent.bind((HOST, 0))  # bound, never read: no ICMP, no reply
        return self._add(f"server=/{domain}/{HOST}#{self._silent.getsockname()[1]}")

    # --- life cycle -------------------------------------------------------------------

    def _write_config(self) -> None:
        lines = [
            "no-resolv", "no-hosts", "no-poll", "bind-interfaces",
            f"listen-address={HOST}", f"port={self.port}",
            "local=/test/",  # unknown *.test names: NXDOMAIN, never forwarded
            f"local-ttl={self.ttl}",
            "log-queries", f"log-facility={self.log_path}",
            "pid-file=",  # none: we hold the process
            *self._records,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> Dnsmasq:
        binary = dnsmasq_binary()
        for _ in range(3):  # another process may take the port between probe and bind
            self.port = free_udp_tcp_port()
            self._write_config()
            self.log_path.write_text("")
            self._proc = subprocess.Popen(
                [binary, "--keep-in-foreground", f"--conf-file={self.config_path}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return self
            output = self._reap()
            if "in use" not in output:
                self._close_upstreams()
                raise RuntimeError(f"dnsmasq did not start: {output}\n"
                                   f"{self.log_path.read_text()}")
        self._close_upstreams()
        raise RuntimeError("dnsmasq could not bind a free port")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        probe = dns.message.make_query("harness-ready.invalid", "A")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                dns.query.udp(probe, HOST, port=self.port, timeout=0.2)
                return True
            except (dns.exception.Timeout, OSError):
                time.sleep(0.02)
        return False

    def _reap(self) -> str:
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.terminate()
        try:
            out, _ = self._proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        self._proc = None
        return out.decode(errors="replace")

    def _close_upstreams(self) -> None:
        if self._servfail is not None:
            self._servfail.close()
            self._servfail = None
        if self._silent is not None:
            self._silent.close()
            self._silent = None

    def stop(self) -> None:
        if self._proc is not None:
            self._reap()
        self._close_upstreams()

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- observation ------------------------------------------------------------------

    def queries(self, name: str | None = None) -> list[tuple[str, str]]:
        """(name, type) of every query dnsmasq has logged, oldest first; only `name`'s
        when given. The harness's own readiness probe is left out. dnsmasq writes its log
        a moment after answering, so the log is read until it stops growing (1 s at most)."""
        text, deadline = "", time.monotonic() + 1.0
        while time.monotonic() < deadline:
            again = self.log_path.read_text(errors="replace")
            if again == text:
                break
            text = again
            time.sleep(0.05)
        found = []
        for line in text.splitlines():
            m = _QUERY_LINE.search(line)
            if m and m.group(2) != "harness-ready.invalid":
                if name is None or m.group(2) == name:
                    found.append((m.group(2), m.group(1)))
        return found
