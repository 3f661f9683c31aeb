"""The supervisor (Postfix's master): prepares the data directory, forks the workers,
forwards signals, restarts a worker that dies, and stops them all on SIGTERM/SIGINT.

The workers bind their own SO_REUSEPORT sockets; a worker that fails at start (a port
in use) stops the whole server with its message, as an operator expects.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import socket
import sys
import time

from relay.config import Config

log = logging.getLogger("relay.server")

# A worker that dies this soon after it started has a start-up problem, not bad luck.
STARTUP_GRACE = 3.0


def prepare(config: Config) -> None:
    """Create data_dir, the TLS certificate, and a fresh multiprocess metrics directory."""
    from relay import tls

    data = config.server.data_dir
    data.mkdir(parents=True, exist_ok=True)
    tls.ensure_certificate(config)
    metrics_dir = data / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    # Create (or check) the queue and account stores once, before any fork.
    from relay.auth.accounts import AccountStore
    from relay.queue.store import QueueStore

    QueueStore(data / "queue", config.queue.map_size, config.queue.max_map_size).close()
    AccountStore(data / "accounts").close()


class StartupError(Exception):
    """The server cannot start; str() says why in one line."""


def check_addresses(config: Config) -> None:
    """SO_REUSEPORT would let a second server share a port silently: refuse instead."""
    listen = config.listen
    for ep in (*listen.smtp, *listen.submission, *listen.submissions, *listen.imap,
               *listen.imaps, *listen.pop3, *listen.pop3s, *listen.metrics):
        try:
            with socket.create_connection((ep.host, ep.port), timeout=0.5):
                pass
        except OSError:
            continue
        raise StartupError(f"{ep} is already in use by another server")


def lock_data_dir(config: Config) -> int:
    """One server per data_dir: an exclusive lock held for the supervisor's lifetime."""
    config.server.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(config.server.data_dir / "relay.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupError(f"{config.server.data_dir} is in use by another relay") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def serve(config: Config) -> int:
    lock_data_dir(config)
    check_addresses(config)
    prepare(config)
    from relay import _fast  # fail before forking if the compiled module is missing

    log.info("relay starting: %d workers, parser %s", config.worker_count, _fast.IMPLEMENTATION)
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    for index in range(config.worker_count):
        pid, started = _spawn(config, index, signals)
        workers[pid] = (index, started)
    status = 0
    stopping = False
    while workers:
        info = signal.sigwaitinfo(signals)
        if info.si_signo in (signal.SIGTERM, signal.SIGINT) and not stopping:
            stopping = True
            log.info("relay stopping")
            _signal_all(workers, signal.SIGTERM)
            continue
        while workers:
            pid, wstatus = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            index, started = workers.pop(pid)
            _mark_dead(pid)
            code = os.waitstatus_to_exitcode(wstatus)
            if stopping:
                continue
            if time.monotonic() - started < STARTUP_GRACE and code != 0:
                log.error("worker %d failed at start (exit %d); stopping", index, code)
                status = 1
                stopping = True
                _signal_all(workers, signal.SIGTERM)
                continue
            log.warning("worker %d (pid %d) died (exit %d); restarting", index, pid, code)
            new_pid, new_started = _spawn(config, index, signals)
            workers[new_pid] = (index, new_started)
    log.info("relay stopped")
    return status


def _spawn(config: Config, index: int, signals: set[signal.Signals]) -> tuple[int, float]:
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
            from relay import worker

            code = worker.run(config, index)
        except BaseException:  # noqa: BLE001 - report and exit, never return into the parent's code
            log.exception("worker %d crashed", index)
        finally:
            logging.shutdown()
            sys.stderr.flush()
            os._exit(code)
    return pid, time.monotonic()


def _signal_all(workers: dict[int, tuple[int, float]], sig: int) -> None:
    for pid in workers:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _mark_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
