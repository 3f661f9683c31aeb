"""A small asyncio SMTP load generator for what smtp-source cannot do.

N concurrent sessions send M messages in total (a shared budget), each with a
payload of S bytes, either reusing each session's connection or opening a new
connection per message. When the server advertises PIPELINING, MAIL, RCPT(s) and
DATA (or BDAT) go out in one write (RFC 2920); with ``chunking`` and a server that
advertises CHUNKING the content goes as one ``BDAT n LAST`` (RFC 3030). Many
recipients per message are supported (``rcpts``).

Per message it records the latency from sending MAIL to the final 250 after the
content, and it counts every message whose transaction did not end in 2xx by the
first failing reply code (or "conn"/"timeout"/"proto" for transport problems).

Bounded: never more than ``messages`` transactions, no new message after
``time_limit`` seconds, every read/write under ``io_timeout``, and the whole run
cancelled at ``time_limit + io_timeout``. Only loopback targets are accepted.

CLI:  python -m bench.loadgen --port 2525 -s 50 -m 2000 -l 10240 [--no-reuse]
      [--no-pipelining] [--chunking] [--rcpts 10] [--time 15] [--json]
Library:  run_load(LoadConfig(...)) -> LoadResult
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from bench.util import LOOPBACK, check_loopback, percentile


@dataclass
class LoadConfig:
    host: str = LOOPBACK
    port: int = 2525
    sessions: int = 10
    messages: int = 1000
    size: int = 10240               # payload bytes (headers not included), like smtp-source -l
    reuse: bool = True              # False: new connection (EHLO ... QUIT) per message
    pipelining: bool = True         # use PIPELINING when the server advertises it
    chunking: bool = False          # use BDAT when the server advertises CHUNKING
    rcpts: int = 1                  # recipients per message
    time_limit: float = 15.0        # no new message after this many seconds
    io_timeout: float = 30.0        # per read/write
    sender: str = "bench@bench.test"
    rcpt_domain: str = "sink.test"
    helo: str = "loadgen.bench.test"


@dataclass
class LoadResult:
    tool: str
    config: dict
    attempted: int = 0
    ok: int = 0
    failed: int = 0
    failures: dict = field(default_factory=dict)   # reply code (or conn/timeout/proto) -> count
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    connect_p50_ms: float | None = None             # TCP connect + banner + EHLO
    connections: int = 0
    pipelining_used: bool = False
    chunking_used: bool = False
    stopped_by_time: bool = False
    extensions: list = field(default_factory=list)
    latencies_ms: list = field(default_factory=list, repr=False)

    def to_dict(self, with_latencies: bool = False) -> dict:
        d = asdict(self)
        if not with_latencies:
            d.pop("latencies_ms")
        return d

    def summary(self) -> str:
        def f(v):
            return "-" if v is None else f"{v:.2f}"
        mode = ("pipelined " if self.pipelining_used else "") + ("BDAT" if self.chunking_used else "DATA")
        s = (f"{self.ok}/{self.attempted} ok in {self.seconds:.2f}s = {self.msgs_per_s:.1f} msg/s; "
             f"latency ms p50 {f(self.p50_ms)} p90 {f(self.p90_ms)} p99 {f(self.p99_ms)} "
             f"max {f(self.max_ms)}; {self.connections} connections; {mode}")
        if self.failures:
            s += f"; failures {dict(self.failures)}"
        if self.stopped_by_time:
            s += "; stopped by time limit"
        return s


class SmtpError(Exception):
    def __init__(self, code: str, text: str = ""):
        super().__init__(f"{code} {text}".strip())
        self.code = code


class _Conn:
    """One SMTP client connection (streams + multi-line reply parsing)."""

    def __init__(self, cfg: LoadConfig):
        self.cfg = cfg
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ext: set[str] = set()

    async def _io(self, aw):
        return await asyncio.wait_for(aw, self.cfg.io_timeout)

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await self._io(self.reader.readline())
            if not line:
                raise ConnectionError("connection closed by server")
            if len(line) < 4 or not line[:3].isdigit():
                raise SmtpError("proto", line[:60].decode("latin-1", "replace"))
            lines.append(line[4:].rstrip(b"\r\n").decode("latin-1", "replace"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    async def open(self) -> None:
        cfg = self.cfg
        self.reader, self.writer = await self._io(
            asyncio.open_connection(cfg.host, cfg.port, limit=1 << 20))
        code, text = await self.reply()
        if code != 220:
            raise SmtpError(str(code), text)
        self.writer.write(f"EHLO {cfg.helo}\r\n".encode())
        code, text = await self.reply()
        if code != 250:
            raise SmtpError(str(code), text)
        self.ext = {ln.split()[0].upper() for ln in text.split("\n")[1:] if ln.strip()}

    async def close(self, quit: bool = True) -> None:
        if self.writer is None:
            return
        try:
            if quit:
                self.writer.write(b"QUIT\r\n")
                await asyncio.wait_for(self.reply(), 5)
        except Exception:
            pass
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except Exception:
            pass
        self.writer = self.reader = None


def _make_body(size: int) -> bytes:
    """``size`` bytes of CRLF-terminated 78-column text lines, none starting with '.'."""
    line = (b"The quick brown fox jumps over the lazy dog 0123456789 "
            b"abcdefghijklmnopqrstuvw\r\n")          # 80 octets with CRLF
    n, rest = divmod(size, len(line))
    if rest == 1 and n:                      # fold a lone octet into an 81-octet line
        return line * (n - 1) + b"x" + line
    return line * n + (b"x" * (rest - 2) + b"\r\n" if rest >= 2 else b"\r\n" if rest else b"")


class _Load:
    def __init__(self, cfg: LoadConfig):
        self.cfg = cfg
        self.body = _make_body(cfg.size)
        self.claimed = 0
        self.ok = 0
        self.failures: Counter = Counter()
        self.lat: list[float] = []
        self.connect_lat: list[float] = []
        self.connections = 0
        self.pipelining_used = False
        self.chunking_used = False
        self.stopped_by_time = False
        self.extensions: set[str] = set()
        self.deadline = 0.0

    def claim(self) -> int | None:
        if time.monotonic() >= self.deadline:
            if self.claimed < self.cfg.messages:
                self.stopped_by_time = True
            return None
        if self.claimed >= self.cfg.messages:
            return None
        self.claimed += 1
        return self.claimed

    def content(self, n: int, rcpts: list[str]) -> bytes:
        hdr = (f"From: <{self.cfg.sender}>\r\nTo: <{rcpts[0]}>\r\n"
               f"Subject: bench message {n}\r\nMessage-ID: <{n}.{id(self)}@loadgen.bench.test>\r\n"
               f"\r\n").encode()
        return hdr + self.body

    async def connect(self) -> _Conn:
        conn = _Conn(self.cfg)
        t0 = time.perf_counter()
        self.connections += 1
        await conn.open()
        self.connect_lat.append((time.perf_counter() - t0) * 1000.0)
        self.extensions |= conn.ext
        return conn

    async def transaction(self, conn: _Conn, n: int) -> tuple[bool, str]:
        """One MAIL..250 transaction. Returns (ok, failing code); raises on transport trouble."""
        cfg = self.cfg
        rcpts = [f"user{n}.{i}@{cfg.rcpt_domain}" if cfg.rcpts > 1 else f"user{n}@{cfg.rcpt_domain}"
                 for i in range(cfg.rcpts)]
        content = self.content(n, rcpts)
        pipelining = cfg.pipelining and "PIPELINING" in conn.ext
        bdat = cfg.chunking and "CHUNKING" in conn.ext
        self.pipelining_used |= pipelining
        self.chunking_used |= bdat
        mail = f"MAIL FROM:<{cfg.sender}>" + (f" SIZE={len(content)}" if "SIZE" in conn.ext else "")
        cmds = [mail.encode() + b"\r\n"] + [f"RCPT TO:<{r}>\r\n".encode() for r in rcpts]
        if bdat:
            last = f"BDAT {len(content)} LAST\r\n".encode() + content
        else:
            last = b"DATA\r\n"
        w = conn.writer
        t0 = time.perf_counter()
        if pipelining:
            w.write(b"".join(cmds) + last)   # the whole envelope (and BDAT content) in one write
            await conn._io(w.drain())
            replies = [await conn.reply() for _ in cmds]
        else:
            replies = []
            for c in cmds:
                w.write(c)
                r = await conn.reply()
                replies.append(r)
                if r[0] >= 400 and c is cmds[0]:
                    break                     # MAIL refused: no point in sending RCPTs
            if replies[0][0] >= 400 or all(r[0] >= 400 for r in replies[1:]):
                first_bad = str(next(r[0] for r in replies if r[0] >= 400))
                if first_bad != "421":
                    await self._rset(conn)
                return False, first_bad
            w.write(last)
        mail_ok = replies[0][0] < 400
        accepted = sum(1 for r in replies[1:] if r[0] < 400)
        code, _text = await conn.reply()      # reply to DATA, or to BDAT ... LAST
        if code == 354 and not bdat:
            # RFC 2920 3.1: a 354 despite no accepted recipient is answered with an empty message
            w.write(content + b".\r\n" if mail_ok and accepted else b".\r\n")
            await conn._io(w.drain())
            code, _text = await conn.reply()
        if mail_ok and accepted and 200 <= code < 300:
            self.lat.append((time.perf_counter() - t0) * 1000.0)
            if accepted < len(rcpts):          # some recipients refused; the message still went
                bad = next(r[0] for r in replies[1:] if r[0] >= 400)
                self.failures[f"rcpt-{bad}"] += 1
            return True, ""
        if not mail_ok:
            first_bad = str(replies[0][0])
        elif not accepted:
            first_bad = str(next(r[0] for r in replies[1:] if r[0] >= 400))
        else:
            first_bad = str(code)
        if not first_bad.startswith("421"):
            await self._rset(conn)
        return False, first_bad

    async def _rset(self, conn: _Conn) -> None:
        conn.writer.write(b"RSET\r\n")
        code, text = await conn.reply()
        if code >= 400:
            raise SmtpError(str(code), "RSET refused: " + text)

    async def worker(self) -> None:
        conn: _Conn | None = None
        try:
            while (n := self.claim()) is not None:
                try:
                    if conn is None:
                        conn = await self.connect()
                    ok, code = await self.transaction(conn, n)
                    if ok:
                        self.ok += 1
                    else:
                        self.failures[code] += 1
                        if code.startswith("421"):
                            await conn.close(quit=False)
                            conn = None
                    if not self.cfg.reuse and conn is not None:
                        await conn.close()
                        conn = None
                except (asyncio.TimeoutError, TimeoutError):
                    self.failures["timeout"] += 1
                    if conn:
                        await conn.close(quit=False)
                    conn = None
                except SmtpError as exc:
                    self.failures[exc.code] += 1
                    if conn:
                        await conn.close(quit=exc.code != "proto")
                    conn = None
                except (ConnectionError, OSError, asyncio.IncompleteReadError):
                    self.failures["conn"] += 1
                    if conn:
                        await conn.close(quit=False)
                    conn = None
                    await asyncio.sleep(0.01)   # do not spin on a refusing port
        finally:
            if conn is not None:
                await conn.close()


async def run_load_async(cfg: LoadConfig) -> LoadResult:
    check_loopback(cfg.host)
    if cfg.sessions < 1 or cfg.messages < 1 or cfg.rcpts < 1 or cfg.size < 0:
        raise ValueError("sessions, messages and rcpts must be >= 1, size >= 0")
    load = _Load(cfg)
    t0 = time.monotonic()
    load.deadline = t0 + cfg.time_limit
    tasks = [asyncio.ensure_future(load.worker()) for _ in range(min(cfg.sessions, cfg.messages))]
    done, pending = await asyncio.wait(tasks, timeout=cfg.time_limit + cfg.io_timeout + 5)
    for t in pending:
        t.cancel()
    if pending:
        load.stopped_by_time = True
        await asyncio.wait(pending, timeout=10)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            load.failures[type(t.exception()).__name__] += 1
    elapsed = time.monotonic() - t0
    lat = sorted(load.lat)
    res = LoadResult(
        tool="loadgen", config=asdict(cfg), attempted=load.claimed, ok=load.ok,
        failed=load.claimed - load.ok, failures=dict(load.failures), seconds=elapsed,
        msgs_per_s=load.ok / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(lat, 50), p90_ms=percentile(lat, 90), p99_ms=percentile(lat, 99),
        max_ms=lat[-1] if lat else None, mean_ms=sum(lat) / len(lat) if lat else None,
        connect_p50_ms=percentile(sorted(load.connect_lat), 50), connections=load.connections,
        pipelining_used=load.pipelining_used, chunking_used=load.chunking_used,
        stopped_by_time=load.stopped_by_time, extensions=sorted(load.extensions),
        latencies_ms=load.lat)
    return res


def _loop_factory():
    try:
        import uvloop
        return uvloop.new_event_loop
    except ImportError:
        return None


def run_load(cfg: LoadConfig) -> LoadResult:
    """Synchronous wrapper (uvloop when available). Not for use inside a running loop."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(run_load_async(cfg))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default=LOOPBACK, help="loopback address only (default %(default)s)")
    ap.add_argument("--port", type=int, default=2525)
    ap.add_argument("-s", "--sessions", type=int, default=10, help="concurrent sessions")
    ap.add_argument("-m", "--messages", type=int, default=1000, help="messages in total")
    ap.add_argument("-l", "--size", type=int, default=10240, help="payload bytes per message")
    ap.add_argument("-r", "--rcpts", type=int, default=1, help="recipients per message")
    ap.add_argument("--no-reuse", action="store_true", help="new connection per message")
    ap.add_argument("--no-pipelining", action="store_true", help="never pipeline")
    ap.add_argument("--chunking", action="store_true", help="BDAT when advertised")
    ap.add_argument("--time", type=float, default=15.0, help="stop starting messages after N s")
    ap.add_argument("--io-timeout", type=float, default=30.0)
    ap.add_argument("--rcpt-domain", default="sink.test")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    cfg = LoadConfig(host=a.host, port=a.port, sessions=a.sessions, messages=a.messages,
                     size=a.size, reuse=not a.no_reuse, pipelining=not a.no_pipelining,
                     chunking=a.chunking, rcpts=a.rcpts, time_limit=a.time,
                     io_timeout=a.io_timeout, rcpt_domain=a.rcpt_domain)
    res = run_load(cfg)
    if a.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        print(res.summary())
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
