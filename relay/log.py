"""Logging set-up: one line per event on stderr, written in batches by the workers.

A mail server logs a line per message received and per recipient delivered; written one
system call each, that was a measurable share of a busy worker's time. The workers' lines
go through a buffer flushed every FLUSH_INTERVAL seconds, at every WARNING or worse, and
at exit, so an operator's `tail -f` lags by at most that interval and nothing is lost
on a clean stop. A record costs no system call: the pid is fixed in the worker's format.

Imports: logging, stdlib (a leaf: nothing from relay).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time

FORMAT = "%(asctime)s relay[%(process)d] %(levelname)s %(name)s: %(message)s"
FLUSH_INTERVAL = 0.5


class _WorkerFormatter(logging.Formatter):
    """FORMAT with the worker's pid fixed and the time formatted once per second."""

    def __init__(self) -> None:
        super().__init__(FORMAT.replace("%(process)d", str(os.getpid())))
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return "%s,%03d" % (self._stamp, record.msecs)


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that flushes only when asked, or for WARNING and worse."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the server
            self.handleError(record)


def setup(verbose: bool = False) -> None:
    """Plain line-per-record logging to stderr (the CLI and the supervisor)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT,
                        stream=sys.stderr, force=True)


def batch_in_worker() -> None:
    """In a worker process: send records through a large buffer on a dup of stderr."""
    root = logging.getLogger()
    level = root.level
    stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(os.dup(sys.stderr.fileno()), "w"),
                                                buffer_size=1 << 16),
                              encoding="utf-8", errors="backslashreplace", write_through=False)
    handler = BatchingHandler(stream)
    handler.setFormatter(_WorkerFormatter())
    # Each LogRecord would otherwise ask for the pid (a system call), the thread and the
    # multiprocessing process name; the pid is in the format already.
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    # No caller lookup (a stack walk per record) either: the format names no file or
    # line (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
