"""Small helpers shared by the harness: ports, temp dirs, percentiles, process control."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A peer could not be set up; the message says why (shown without a traceback)."""


def check_loopback(host: str) -> str:
    """Refuse any target outside 127.0.0.0/8 (the harness only ever loads loopback)."""
    try:
        addr = socket.gethostbyname(host)
    except OSError as exc:
        raise BenchError(f"cannot resolve {host!r}: {exc}") from exc
    if not addr.startswith("127."):
        raise BenchError(f"refusing non-loopback target {host} ({addr}); only 127.0.0.0/8 is allowed")
    return addr


def free_port(host: str = LOOPBACK) -> int:
    """An unprivileged TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None,
              banner: bool = True) -> None:
    """Wait until ``host:port`` accepts and (if ``banner``) sends an SMTP 220 greeting.

    Raises BenchError on timeout or if ``proc`` exits first.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited with status {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                if not banner:
                    return
                s.settimeout(2.0)
                data = s.recv(512)
                if data.startswith(b"220"):
                    try:
                        s.sendall(b"QUIT\r\n")
                        s.recv(512)
                    except OSError:
                        pass
                    return
                last = data[:80].decode("latin-1", "replace").strip()
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"nothing answered SMTP on {host}:{port} within {timeout:.0f}s (last: {last or 'no reply'})")


def tmp_root() -> Path:
    """Scratch space on the same disk as the repository (bench/results/tmp, gitignored)."""
    root = RESULTS / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root


def make_tmpdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_root()))
    path.chmod(0o755)
    return path


def rmtree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal ``proc`` (its process group if it leads one), wait, then SIGKILL if needed."""
    if proc is None or proc.poll() is not None:
        return
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(5)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def tail(path: Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])
