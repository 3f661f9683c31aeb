"""IMAP load generator (asyncio, raw protocol): operations/s and latency per operation type,
and an IDLE holder for the connection-capacity test.

    .venv/bin/python -m bench.imap_load --port 1143 -c 10 --time 15 [--op mix] [--json]
    .venv/bin/python -m bench.imap_load --port 1143 --idle 5000 --hold 10

Each client is one connection: greeting, ``LOGIN``, then a loop, timed from the moment
every client has logged in (a barrier) until ``time_limit`` seconds later or ``max_ops``
operations in total, whichever comes first:

* ``mix`` (the scenario): ``SELECT INBOX``; ``FETCH a:a+49 (FLAGS BODY.PEEK[HEADER.FIELDS
  (FROM SUBJECT DATE)])`` on a random window; ``FETCH k BODY.PEEK[]`` of one random message;
  ``STORE k +FLAGS (\\Flagged)`` or ``-FLAGS`` on a random message; ``UID SEARCH`` with, in
  turn, ``FROM "alice"``, ``SUBJECT "invoice"``, ``UNSEEN``, ``SINCE 1-Jan-2025``.
* one operation alone (``select``, ``fetch_headers``, ``fetch_body``, ``store``, ``search``):
  ``SELECT INBOX`` once, then that operation over and over: its own operations/s.

Every command is tagged; a response is read line by line, and a line that ends in a literal
``{n}`` is followed by exactly n octets and the rest of the line (so message bodies in FETCH
responses are read whole, counted, and dropped). An operation counts when its tagged ``OK``
arrives before the deadline; latency = command sent -> tagged response. ``NO``/``BAD``, a
timeout (``op_timeout``) or a dropped connection is a failure, counted per kind, and the first
few are kept verbatim (command and response) for the report. Sanity checks: SELECT must
report EXISTS, a header FETCH must return one FETCH response per message of its window, a
body FETCH one non-empty literal; ``search_counts`` records the hit count of each SEARCH key
(the same Maildir must give the same counts on every server).

Only 127.0.0.0/8 is a target (refused otherwise). Library use: ``run_ops(ImapLoadConfig(...))``
and ``run_idle(...)`` (each runs its own event loop: uvloop when installed).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from bench.util import BenchError, check_loopback, percentile

OPS = ("select", "fetch_headers", "fetch_body", "store", "search")
SEARCHES = (("from", b'FROM "alice"'), ("subject", b'SUBJECT "invoice"'), ("unseen", b"UNSEEN"),
            ("since", b"SINCE 1-Jan-2025"))
WINDOW = 50
HEADER_FIELDS = b"(FLAGS BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])"
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS", re.I)


class ImapProtocolError(Exception):
    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


def raise_nofile(want: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``want`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Conn:
    """One IMAP connection: tagged commands, responses with literals.

    Reads go through one buffer (``read()`` of up to 256 KiB, parsed in place), and the
    timeout is one ``asyncio.timeout`` per command, so the client's own CPU cost per response
    line stays small (it shares the machine with the server)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.r, self.w, self.timeout = reader, writer, timeout
        self.n = 0
        self.rx = 0
        self.buf = bytearray()
        self.pos = 0
        self.greeting = b""

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = 30.0, source: str | None = None) -> "Conn":
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=(source, 0) if source else None)
                c = cls(reader, writer, timeout)
                line, _ = await c.response()
        except TimeoutError:
            raise ImapProtocolError("connect", f"no greeting within {timeout:.0f}s") from None
        except OSError as exc:
            raise ImapProtocolError("connect", exc.strerror or str(exc)) from None
        c.greeting = line
        if not line.startswith(b"* OK") and not line.startswith(b"* PREAUTH"):
            c.close()
            raise ImapProtocolError("greeting", line[:200].decode("latin-1").strip())
        return c

    async def _fill(self) -> None:
        try:
            data = await self.r.read(262144)
        except OSError as exc:
            raise ImapProtocolError("closed", exc.strerror or str(exc)) from None
        if not data:
            raise ImapProtocolError("closed", "connection closed by the server"
                                    + (f" after {bytes(self.buf[self.pos:self.pos + 100])!r}"
                                       if len(self.buf) > self.pos else ""))
        self.rx += len(data)
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data

    async def response(self) -> tuple[bytes, list[int]]:
        """One response: its text (literal contents left out) and the literal sizes."""
        parts: list[bytes] = []
        lits: list[int] = []
        buf = self.buf
        while True:
            i = buf.find(b"\r\n", self.pos)
            while i < 0:
                if len(buf) - self.pos > 1 << 20:
                    raise ImapProtocolError("protocol", "response line longer than 1 MiB")
                await self._fill()
                buf = self.buf
                i = buf.find(b"\r\n", self.pos)
            line = bytes(buf[self.pos:i + 2])
            self.pos = i + 2
            parts.append(line)
            m = _LITERAL.search(line) if line.endswith(b"}\r\n") else None
            if m is None:
                return (line if len(parts) == 1 else b"".join(parts)), lits
            size = int(m.group(1))
            while len(self.buf) - self.pos < size:
                await self._fill()
            buf = self.buf
            self.pos += size
            lits.append(size)

    async def command(self, text: bytes) -> tuple[bytes, list[tuple[bytes, list[int]]]]:
        """Send ``<tag> text``; return (tagged line, untagged responses). NO/BAD raise."""
        self.n += 1
        tag = b"A%05d" % self.n
        try:
            self.w.write(tag + b" " + text + b"\r\n")
        except (OSError, RuntimeError) as exc:
            raise ImapProtocolError("closed", str(exc)) from None
        untagged = []
        shown = text if not text.upper().startswith(b"LOGIN ") else text.rsplit(b" ", 1)[0] + b" ***"
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    resp, lits = await self.response()
                    if resp.startswith(tag + b" "):
                        break
                    if resp.startswith(b"* BYE") and text != b"LOGOUT":
                        raise ImapProtocolError("BYE", f"C: {tag.decode()} {shown.decode('latin-1')[:120]} -> "
                                                       f"S: {resp.decode('latin-1').strip()[:300]}")
                    if resp.startswith(b"+"):
                        raise ImapProtocolError("protocol", f"unexpected continuation after "
                                                            f"{text[:60]!r}: {resp[:100]!r}")
                    untagged.append((resp, lits))
        except TimeoutError:
            raise ImapProtocolError("timeout", f"C: {tag.decode()} {shown.decode('latin-1')[:120]} -> "
                                               f"no tagged response within {self.timeout:.0f}s") from None
        status = resp[len(tag) + 1:len(tag) + 4].upper()
        if status != b"OK ":
            kind = "NO" if status.startswith(b"NO") else "BAD" if status.startswith(b"BAD") else "other"
            raise ImapProtocolError(kind, f"C: {tag.decode()} {shown.decode('latin-1')[:120]} -> "
                                          f"S: {resp.decode('latin-1').strip()[:300]}")
        return resp, untagged

    async def login(self, user: str, password: str) -> None:
        await self.command(b"LOGIN " + _quote(user) + b" " + _quote(password))

    def close(self) -> None:
        try:
            self.w.transport.abort()
        except Exception:
            pass


def _quote(s: str) -> bytes:
    return b'"' + s.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _exists(untagged) -> int | None:
    for resp, _ in untagged:
        m = _EXISTS.match(resp)
        if m:
            return int(m.group(1))
    return None


def wait_imap(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``host:port`` sends an IMAP ``* OK`` greeting; BenchError on timeout or if
    ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited with status {proc.returncode} before answering IMAP on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                s.settimeout(3.0)
                data = s.recv(512)
                if data.startswith(b"* OK") or data.startswith(b"* PREAUTH"):
                    try:
                        s.sendall(b"Z LOGOUT\r\n")
                    except OSError:
                        pass
                    return
                last = repr(data[:100]) if data else "connection closed without a greeting"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"nothing answered IMAP on {host}:{port} within {timeout:.0f}s (last: {last or 'no reply'})")


def check_login(host: str, port: int, user: str, password: str, timeout: float = 30.0) -> dict:
    """One connection: LOGIN, SELECT INBOX, FETCH 1 (FLAGS), LOGOUT. Raises BenchError with the
    exact exchange that failed; returns {'exists': n, 'greeting': ..., 'select_seconds': s}."""
    async def go():
        c = await Conn.open(host, port, timeout)
        try:
            await c.login(user, password)
            t = time.perf_counter()
            _, ut = await c.command(b"SELECT INBOX")
            sel = time.perf_counter() - t
            n = _exists(ut)
            if n is None:
                raise ImapProtocolError("protocol", "SELECT INBOX: no EXISTS response")
            if n:
                await c.command(b"FETCH 1 (FLAGS)")
            await c.command(b"LOGOUT")
            return {"exists": n, "greeting": c.greeting.decode("latin-1").strip()[:200],
                    "select_seconds": round(sel, 3)}
        finally:
            c.close()
    try:
        return _run(go())
    except ImapProtocolError as exc:
        raise BenchError(f"IMAP check against {host}:{port} failed: {exc}") from None


def _run(coro):
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# ------------------------------------------------------------------ operations load

@dataclass
class ImapLoadConfig:
    host: str = "127.0.0.1"
    port: int = 143
    user: str = "bench@bench.test"
    password: str = "bench-password"
    clients: int = 10
    op: str = "mix"                    # "mix" or one of OPS
    time_limit: float = 15.0
    max_ops: int = 500_000
    op_timeout: float = 30.0
    connect_timeout: float = 30.0
    seed: int = 1


@dataclass
class ImapLoadResult:
    config: dict
    seconds: float = 0.0
    clients_logged_in: int = 0
    ops: dict = field(default_factory=dict)        # op -> {"count", "ops_per_s", "p50_ms", ...}
    total_ops: int = 0
    total_ops_per_s: float = 0.0
    failures: dict = field(default_factory=dict)   # kind -> count
    failure_samples: list = field(default_factory=list)
    anomalies: dict = field(default_factory=dict)  # sanity-check misses -> count
    anomaly_samples: list = field(default_factory=list)
    search: dict = field(default_factory=dict)          # per SEARCH key: latency stats
    search_counts: dict = field(default_factory=dict)  # search key -> sorted distinct hit counts
    exists: list = field(default_factory=list)          # distinct EXISTS values seen
    rx_bytes: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class _Run:
    def __init__(self, cfg: ImapLoadConfig):
        self.cfg = cfg
        self.lat: dict[str, list[float]] = {op: [] for op in OPS}
        self.search_lat: dict[str, list[float]] = {k: [] for k, _ in SEARCHES}
        self.failures: dict[str, int] = {}
        self.samples: list[str] = []
        self.anomalies: dict[str, int] = {}
        self.anomaly_samples: list[str] = []
        self.search_counts: dict[str, set] = {k: set() for k, _ in SEARCHES}
        self.exists: set[int] = set()
        self.t0 = 0.0
        self.deadline = 0.0
        self.total = 0
        self.rx = 0

    def fail(self, exc: ImapProtocolError) -> None:
        self.failures[exc.kind] = self.failures.get(exc.kind, 0) + 1
        if len(self.samples) < 8 and str(exc) not in self.samples:
            self.samples.append(str(exc))

    def anomaly(self, kind: str, detail: str) -> None:
        self.anomalies[kind] = self.anomalies.get(kind, 0) + 1
        if len(self.anomaly_samples) < 8:
            self.anomaly_samples.append(f"{kind}: {detail}")

    def done(self) -> bool:
        return time.perf_counter() >= self.deadline or self.total >= self.cfg.max_ops

    async def timed(self, op: str, conn: Conn, cmd: bytes, sub: str | None = None):
        t = time.perf_counter()
        tagged, untagged = await conn.command(cmd)
        now = time.perf_counter()
        if now <= self.deadline and self.total < self.cfg.max_ops:
            self.lat[op].append(now - t)
            if sub:
                self.search_lat[sub].append(now - t)
            self.total += 1
        return untagged

    async def client(self, idx: int, ready: asyncio.Event, logged: list) -> None:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 1000 + idx)
        try:
            conn = await Conn.open(cfg.host, cfg.port, cfg.connect_timeout)
        except ImapProtocolError as exc:
            self.fail(exc)
            logged.append(False)
            return
        conn.timeout = cfg.op_timeout
        try:
            try:
                await conn.login(cfg.user, cfg.password)
                logged.append(True)
            except ImapProtocolError as exc:
                logged.append(False)
                self.fail(exc)
                return
            await ready.wait()
            exists = 0
            turn = idx
            if cfg.op != "mix":
                exists = await self.select(conn)
            while not self.done():
                try:
                    exists = await self.iteration(conn, rng, exists, turn)
                except ImapProtocolError as exc:
                    if exc.kind not in ("NO", "BAD", "other"):
                        raise              # the connection is unusable: this client stops
                    self.fail(exc)         # a refused command: counted, the loop goes on
                turn += 1
                if not exists:
                    self.anomaly("empty", "SELECT INBOX reported 0 messages (or failed)")
                    break
            try:
                conn.timeout = 5.0
                await conn.command(b"LOGOUT")
            except ImapProtocolError:
                pass
        except ImapProtocolError as exc:
            self.fail(exc)
        finally:
            self.rx += conn.rx
            conn.close()

    async def iteration(self, conn: Conn, rng: random.Random, exists: int, turn: int) -> int:
        """One loop of the client's operation(s); returns the mailbox size it knows."""
        op = self.cfg.op
        if op in ("mix", "select"):
            exists = await self.select(conn)
            if not exists:
                return 0
        if op in ("mix", "fetch_headers"):
            a = rng.randint(1, max(1, exists - WINDOW + 1))
            b = min(exists, a + WINDOW - 1)
            ut = await self.timed("fetch_headers", conn, b"FETCH %d:%d " % (a, b) + HEADER_FIELDS)
            # only the responses carrying the header literal: other clients' STOREs
            # may add unsolicited "* n FETCH (FLAGS ...)" updates
            n = sum(1 for r, ls in ut if ls and b" FETCH " in r[:20])
            if n != b - a + 1:
                self.anomaly("fetch_headers", f"FETCH {a}:{b}: {n} FETCH responses with a literal, "
                                              f"expected {b - a + 1}")
        if op in ("mix", "fetch_body"):
            m = rng.randint(1, exists)
            ut = await self.timed("fetch_body", conn, b"FETCH %d BODY.PEEK[]" % m)
            lits = [x for r, ls in ut if b" FETCH " in r[:20] for x in ls]
            if not lits or not lits[0]:
                self.anomaly("fetch_body", f"FETCH {m} BODY.PEEK[]: no message literal "
                                           f"({[r[:80] for r, _ in ut][:2]})")
        if op in ("mix", "store"):
            m = rng.randint(1, exists)
            sign = b"+" if rng.random() < 0.5 else b"-"
            await self.timed("store", conn, b"STORE %d %sFLAGS (\\Flagged)" % (m, sign))
        if op in ("mix", "search"):
            key, crit = SEARCHES[turn % len(SEARCHES)]
            ut = await self.timed("search", conn, b"UID SEARCH " + crit, key)
            hits = None
            for r, _ in ut:
                if r.upper().startswith(b"* SEARCH"):
                    hits = len(r[8:].split())
            if hits is None:
                self.anomaly("search", f"UID SEARCH {crit.decode()}: no * SEARCH response")
            else:
                self.search_counts[key].add(hits)
        return exists

    async def select(self, conn: Conn) -> int:
        ut = await self.timed("select", conn, b"SELECT INBOX")
        n = _exists(ut)
        if n is None:
            self.anomaly("select", "SELECT INBOX: no * n EXISTS")
            return 0
        self.exists.add(n)
        return n

    async def main(self) -> ImapLoadResult:
        cfg = self.cfg
        res = ImapLoadResult(config=asdict(cfg))
        ready = asyncio.Event()
        logged: list = []
        self.deadline = time.perf_counter() + cfg.connect_timeout + cfg.time_limit + 60
        tasks = [asyncio.ensure_future(self.client(i, ready, logged)) for i in range(cfg.clients)]
        t_conn = time.perf_counter() + cfg.connect_timeout + 5
        while len(logged) < cfg.clients and time.perf_counter() < t_conn:
            await asyncio.sleep(0.01)
        res.clients_logged_in = sum(logged)
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + cfg.time_limit
        ready.set()
        done, pending = await asyncio.wait(tasks, timeout=cfg.time_limit + cfg.op_timeout + 10)
        for t in pending:
            t.cancel()
        if pending:
            self.failures["hung"] = len(pending)
        end = min(time.perf_counter(), self.deadline)
        res.seconds = round(end - self.t0, 3)
        for op in OPS:
            xs = sorted(self.lat[op])
            if not xs and cfg.op not in ("mix", op):
                continue
            res.ops[op] = _stats(xs, res.seconds)
        res.search = {k: _stats(sorted(v), res.seconds) for k, v in self.search_lat.items() if v}
        res.total_ops = sum(len(v) for v in self.lat.values())
        res.total_ops_per_s = res.total_ops / res.seconds if res.seconds > 0 else 0.0
        res.failures = self.failures
        res.failure_samples = self.samples
        res.anomalies = self.anomalies
        res.anomaly_samples = self.anomaly_samples
        res.search_counts = {k: sorted(v) for k, v in self.search_counts.items() if v}
        res.exists = sorted(self.exists)
        res.rx_bytes = self.rx
        if not res.clients_logged_in:
            res.error = "no client could log in" + (f": {self.samples[0]}" if self.samples else "")
        return res


def _stats(xs: list[float], seconds: float) -> dict:
    return {"count": len(xs), "ops_per_s": len(xs) / seconds if seconds > 0 else 0.0,
            "p50_ms": _ms(percentile(xs, 50)), "p90_ms": _ms(percentile(xs, 90)),
            "p99_ms": _ms(percentile(xs, 99)), "max_ms": _ms(xs[-1] if xs else None),
            "mean_ms": _ms(sum(xs) / len(xs) if xs else None)}


def _ms(v):
    return None if v is None else round(v * 1000, 3)


def run_ops(cfg: ImapLoadConfig) -> ImapLoadResult:
    check_loopback(cfg.host)
    if cfg.op != "mix" and cfg.op not in OPS:
        raise ValueError(f"op must be 'mix' or one of {OPS}")
    raise_nofile(cfg.clients + 256)
    return _run(_Run(cfg).main())


# ------------------------------------------------------------------ IDLE capacity

@dataclass
class IdleResult:
    requested: int
    established: int = 0            # got "+ idling" within the ramp bound
    ramp_seconds: float = 0.0
    held_seconds: float = 0.0
    alive_after_hold: int = 0       # no BYE/EOF while held
    done_ok: int = 0                # DONE answered with a tagged OK
    failures: dict = field(default_factory=dict)
    failure_samples: list = field(default_factory=list)
    phases: dict = field(default_factory=dict)    # connect/login/select/idle: p50/p99/max ms
    samples: list = field(default_factory=list)   # what sample() returned during the hold
    sources: list = field(default_factory=list)
    nofile: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def run_idle(host: str, port: int, user: str, password: str, n: int, hold: float = 10.0,
             ramp_seconds: float = 300.0, ramp_concurrency: int = 64, sources: int = 16,
             sample=None, sample_times: tuple = (0.5, 1.0), progress=None,
             op_timeout: float = 60.0) -> IdleResult:
    """Open ``n`` connections (LOGIN, SELECT INBOX, IDLE) — at most ``ramp_concurrency`` being
    set up at once, for at most ``ramp_seconds`` — hold them ``hold`` seconds, calling
    ``sample()`` (in a thread) at the given fractions of the hold, then DONE and close.

    Client source addresses are spread over 127.0.1.1 .. 127.0.1.<sources> (0: the kernel's
    choice) so no one (source, destination) pair runs short of ephemeral ports."""
    check_loopback(host)
    nofile = raise_nofile(n + 512)
    res = IdleResult(requested=n, nofile=nofile,
                     sources=[f"127.0.1.{k + 1}" for k in range(sources)] if sources else [])
    if nofile < n + 64:
        res.failures["nofile"] = n
        res.failure_samples.append(f"RLIMIT_NOFILE is {nofile}, too low for {n} connections")
        return res

    async def main():
        sem = asyncio.Semaphore(ramp_concurrency)
        conns: list[Conn] = []
        lost = {"n": 0}
        stop_ramp = asyncio.Event()
        phase: dict[str, list[float]] = {"connect": [], "login": [], "select": [], "idle": []}

        def fail(exc: ImapProtocolError):
            res.failures[exc.kind] = res.failures.get(exc.kind, 0) + 1
            if len(res.failure_samples) < 8 and str(exc) not in res.failure_samples:
                res.failure_samples.append(str(exc))

        async def one(i: int):
            async with sem:
                if stop_ramp.is_set():
                    return
                src = res.sources[i % len(res.sources)] if res.sources else None
                t = time.perf_counter()
                try:
                    c = await Conn.open(host, port, op_timeout, src)
                except ImapProtocolError as exc:
                    fail(exc)
                    return
                t1 = time.perf_counter()
                try:
                    await c.login(user, password)
                    t2 = time.perf_counter()
                    await c.command(b"SELECT INBOX")
                    t3 = time.perf_counter()
                    c.n += 1
                    c.idle_tag = b"A%05d" % c.n
                    c.w.write(c.idle_tag + b" IDLE\r\n")
                    async with asyncio.timeout(op_timeout):
                        while True:
                            resp, _ = await c.response()
                            if resp.startswith(b"+"):
                                break
                            if resp.startswith(c.idle_tag + b" "):
                                raise ImapProtocolError("NO" if b" NO " in resp[:12] else "BAD",
                                                        f"IDLE -> {resp.decode('latin-1').strip()[:200]}")
                            if resp.startswith(b"* BYE"):
                                raise ImapProtocolError("BYE", resp.decode("latin-1").strip()[:200])
                    for k, v in (("connect", t1 - t), ("login", t2 - t1), ("select", t3 - t2),
                                 ("idle", time.perf_counter() - t3)):
                        phase[k].append(v)
                except TimeoutError:
                    fail(ImapProtocolError("timeout", f"IDLE: no continuation within {op_timeout:.0f}s"))
                    c.close()
                    return
                except ImapProtocolError as exc:
                    fail(exc)
                    c.close()
                    return
                conns.append(c)

        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        last = 0
        while True:
            done = sum(t.done() for t in tasks)
            if done == n:
                break
            if time.perf_counter() - t0 > ramp_seconds:
                stop_ramp.set()
                # the ones being set up get op_timeout to finish; the rest never start
                await asyncio.wait(tasks, timeout=op_timeout + 1)
                for t in tasks:
                    t.cancel()
                await asyncio.sleep(0)
                res.failures["ramp_timeout"] = n - len(conns)
                res.failure_samples.append(f"ramp_timeout: only {len(conns)} of {n} connections "
                                           f"reached IDLE within {ramp_seconds:.0f}s")
                break
            if progress and len(conns) - last >= max(500, n // 10):
                last = len(conns)
                progress(f"{len(conns)}/{n} idling after {time.perf_counter() - t0:.0f}s")
            await asyncio.sleep(0.05)
        res.ramp_seconds = round(time.perf_counter() - t0, 2)
        res.established = len(conns)
        for k, xs in phase.items():
            xs.sort()
            if xs:
                res.phases[k] = {"p50_ms": _ms(percentile(xs, 50)), "p99_ms": _ms(percentile(xs, 99)),
                                 "max_ms": _ms(xs[-1])}
        # hold: watch for drops (anything the server sends now other than "* ..." is odd)
        alive = {id(c): True for c in conns}

        async def watch(c: Conn):
            try:
                while True:
                    resp, _ = await c.response()
                    if resp.startswith(b"* BYE"):
                        alive[id(c)] = False
                        return
            except ImapProtocolError:
                alive[id(c)] = False
        watchers = [asyncio.ensure_future(watch(c)) for c in conns]
        t_hold = time.perf_counter()
        for frac in sample_times:
            wait = t_hold + hold * frac - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if sample is not None:
                s = await asyncio.to_thread(sample)
                s["connections_alive"] = sum(alive.values())
                s["at_seconds"] = round(time.perf_counter() - t_hold, 1)
                res.samples.append(s)
        res.held_seconds = round(time.perf_counter() - t_hold, 2)
        for w in watchers:
            w.cancel()
        await asyncio.sleep(0)
        res.alive_after_hold = sum(alive.values())
        lost["n"] = len(conns) - res.alive_after_hold

        # DONE: the server must finish each IDLE with a tagged OK
        async def done(c: Conn):
            if not alive[id(c)]:
                return False
            try:
                c.w.write(b"DONE\r\n")
                async with asyncio.timeout(op_timeout):
                    while True:
                        resp, _ = await c.response()
                        if resp.startswith(c.idle_tag + b" "):
                            if resp[len(c.idle_tag) + 1:].upper().startswith(b"OK"):
                                return True
                            raise ImapProtocolError("DONE", resp.decode("latin-1").strip()[:200])
            except TimeoutError:
                fail(ImapProtocolError("DONE:timeout", f"no tagged answer to DONE within {op_timeout:.0f}s"))
                return False
            except ImapProtocolError as exc:
                fail(ImapProtocolError("DONE:" + exc.kind, exc.detail))
                return False
            finally:
                try:
                    c.w.write(b"Z LOGOUT\r\n")
                except Exception:
                    pass
        oks = await asyncio.gather(*(done(c) for c in conns))
        res.done_ok = sum(1 for x in oks if x)
        await asyncio.sleep(0.2)
        for c in conns:
            c.close()
    _run(main())
    return res


# ------------------------------------------------------------------ CLI

def _print_ops(res: ImapLoadResult) -> None:
    print(f"{res.clients_logged_in} clients, {res.seconds:.1f}s, {res.total_ops} ops "
          f"({res.total_ops_per_s:.0f}/s), {res.rx_bytes / 1e6:.1f} MB received")
    for op, s in res.ops.items():
        print(f"  {op:14s} {s['count']:7d} ops {s['ops_per_s']:8.0f}/s  p50 {s['p50_ms']} ms  "
              f"p99 {s['p99_ms']} ms")
    for k, s in res.search.items():
        print(f"    search {k:8s} {s['count']:5d}  p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms  "
              f"hits {res.search_counts.get(k)}")
    if res.failures:
        print(f"  failures {res.failures}")
        for s in res.failure_samples:
            print(f"    {s}")
    if res.anomalies:
        print(f"  anomalies {res.anomalies}")
        for s in res.anomaly_samples:
            print(f"    {s}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.imap_load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="bench@bench.test")
    ap.add_argument("--password", default="bench-password")
    ap.add_argument("-c", "--clients", type=int, default=10)
    ap.add_argument("--op", default="mix", choices=("mix",) + OPS)
    ap.add_argument("--time", type=float, default=15.0, help="seconds of load (bounded)")
    ap.add_argument("--max-ops", type=int, default=500_000)
    ap.add_argument("--idle", type=int, default=0, help="IDLE capacity test with this many connections")
    ap.add_argument("--hold", type=float, default=10.0)
    ap.add_argument("--ramp-seconds", type=float, default=300.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.idle:
        r = run_idle(a.host, a.port, a.user, a.password, a.idle, a.hold, a.ramp_seconds,
                     progress=lambda m: print(m, file=sys.stderr))
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    res = run_ops(ImapLoadConfig(host=a.host, port=a.port, user=a.user, password=a.password,
                                 clients=a.clients, op=a.op, time_limit=a.time, max_ops=a.max_ops))
    if a.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        _print_ops(res)
    return 0 if not res.error else 1


if __name__ == "__main__":
    sys.exit(main())
