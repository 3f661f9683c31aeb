"""Small helpers shared by the harness: ports, temp dirs, percentiles, process control."""
from __future__ import annotations

import math
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
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def tail(path: Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# ------------------------------------------------------------------ one run at a time, no leftovers

_LOCK_FD: int | None = None


def acquire_run_lock() -> None:
    """One benchmark at a time on this checkout (two would share the 2 cores and spoil
    each other's figures). Held until the process exits."""
    global _LOCK_FD
    import fcntl
    fd = os.open(tmp_root() / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BenchError("another benchmark run holds bench/results/tmp/.lock; wait for it to finish") from None
    _LOCK_FD = fd


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def record_pid(base: Path, pid: int) -> None:
    """Remember a process we started (pid + start time, so a reused pid is never hit)."""
    st = _start_time(pid)
    if st:
        with open(base / "pids", "a") as f:
            f.write(f"{pid} {st}\n")


def reap_stale(log=print) -> None:
    """Stop what a killed earlier run left behind under bench/results/tmp (call with the
    run lock held): private Postfix instances and processes recorded by record_pid()."""
    for d in sorted(tmp_root().iterdir()):
        if not d.is_dir():
            continue
        if (d / "etc" / "main.cf").exists():
            pidfile = d / "spool" / "pid" / "master.pid"
            if pidfile.exists():
                log(f"bench: stopping a leftover private Postfix in {d}")
                for action in ("stop", "abort"):
                    subprocess.run(["/usr/sbin/postfix", "-c", str(d / "etc"), action],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        try:
            entries = (d / "pids").read_text().split("\n")
        except OSError:
            entries = []
        for line in entries:
            try:
                pid, st = line.split()
                pid = int(pid)
            except ValueError:
                continue
            if _start_time(pid) == st:
                log(f"bench: killing leftover process {pid} from {d.name}")
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        shutil.rmtree(d, ignore_errors=True)
