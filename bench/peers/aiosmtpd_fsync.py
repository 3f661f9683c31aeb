"""aiosmtpd peer: a plain aiosmtpd server whose handler makes every message durable.

The handler writes each message (envelope header + content) to its own file and
``fsync``s it before returning ``250``; the write+fsync runs in the default thread
pool so concurrent sessions can overlap their fsyncs (as any sensible aiosmtpd
deployment would). The server runs in its own process (uvloop when importable):

    python -m bench.peers.aiosmtpd_fsync --port 2526 --dir /var/tmp/spool

``AiosmtpdPeer`` starts that process on a free loopback port and stops it.
aiosmtpd 1.4 advertises neither PIPELINING nor CHUNKING, so clients talk to it
one command at a time.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from bench.util import (LOOPBACK, REPO, BenchError, check_loopback, free_port, make_tmpdir,
                        record_pid, rmtree, stop_process, tail, wait_port)


class FsyncHandler:
    """aiosmtpd handler: one file per message, fsync'ed before the 250."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq = itertools.count()
        self._pid = os.getpid()

    def _store(self, name: str, header: bytes, content: bytes) -> None:
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, header)
            view = memoryview(content)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)

    async def handle_DATA(self, server, session, envelope):
        name = f"{self._pid}.{next(self._seq)}.msg"
        header = ("X-Envelope-From: <{}>\r\nX-Envelope-To: {}\r\n".format(
            envelope.mail_from or "", ",".join(f"<{r}>" for r in envelope.rcpt_tos))).encode(
                "utf-8", "surrogateescape")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._store, name, header, envelope.original_content or b"")
        except OSError as exc:
            return f"451 4.3.0 cannot store message: {exc.strerror}"
        return "250 2.0.0 Ok: queued as " + name


async def serve(host: str, port: int, directory: Path) -> None:
    from aiosmtpd.smtp import SMTP

    handler = FsyncHandler(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.bench.test", data_size_limit=52428800,
                     ident="aiosmtpd-fsync"),
        host=host, port=port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"aiosmtpd_fsync listening on {host}:{port}, spool {directory}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="aiosmtpd server that fsyncs each message before 250")
    ap.add_argument("--host", default=LOOPBACK)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True, type=Path, help="spool directory (one file per message)")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args(argv)
    check_loopback(args.host)
    if not args.no_uvloop:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
    asyncio.run(serve(args.host, args.port, args.dir))
    return 0


class AiosmtpdPeer:
    """Context manager running the server above in a subprocess on a free loopback port."""

    name = "aiosmtpd_fsync"

    def __init__(self, keep: bool = False):
        self.host = LOOPBACK
        self.port = free_port()
        self.keep = keep
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.stored = 0

    @property
    def spool(self) -> Path:
        return self.base / "spool"

    def start(self) -> "AiosmtpdPeer":
        try:
            import aiosmtpd  # noqa: F401  (fail here, clearly, rather than in the child)
        except ImportError:
            raise BenchError("Python package 'aiosmtpd' is not installed in this environment "
                             "(it is in the project's 'test' extra)") from None
        self.base = make_tmpdir("aiosmtpd-")
        self.spool.mkdir()
        log = open(self.base / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.peers.aiosmtpd_fsync", "--host", self.host,
             "--port", str(self.port), "--dir", str(self.spool)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        record_pid(self.base, self.proc.pid)
        try:
            wait_port(self.host, self.port, 20, self.proc)
        except BenchError as exc:
            out = tail(self.base / "server.log")
            self.stop()
            raise BenchError(f"aiosmtpd_fsync did not start: {exc}\n{out}") from None
        return self

    def settle(self, timeout: float = 30.0) -> int:
        """Between measurements: count the stored messages, then empty the spool so the
        disk does not fill up."""
        if self.base is not None:
            self.stored += sum(1 for e in os.scandir(self.spool) if e.name.endswith(".msg"))
            shutil.rmtree(self.spool, ignore_errors=True)
            self.spool.mkdir(exist_ok=True)
        return 0

    def accounted(self) -> int:
        """Messages stored (and fsync'ed) so far, as counted by settle()."""
        return self.stored

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self.proc = None
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


if __name__ == "__main__":
    sys.exit(main())
