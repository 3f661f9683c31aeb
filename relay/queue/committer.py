"""GroupCommitter: many sessions' messages, one LMDB commit, one fsync.

Theory of operation. Sessions call `submit()` from the event loop; it appends to a
pending list and returns a future. One committer thread per worker process takes
*everything* pending, writes it in a single write transaction and commits (LMDB
fdatasyncs on commit), then resolves every future in one callback on the loop. While
that fsync runs, new messages pile up and form the next batch, so under load a batch
is as large as the number of messages that arrived during one fsync: the fsync rate
stays constant while throughput grows with concurrency (the classic group commit).

A future resolves only after the commit returned, which is what makes "250 means on
disk" true. If the batch does not fit (QueueFull), each message is retried alone so
that one huge message cannot refuse its neighbours; those that still fail get
QueueFull. Other writes (delivery outcomes, removals, bounces) ride in the same batches
through `run()`, so delivering does not add an fsync per message either: no client waits
for them, so they wait up to LAZY_WINDOW for a new message's commit to share (with one
client sending, its next message's 250 would otherwise queue behind the last one's
delivery record). What would break this: resolving futures before commit, or writing from
the loop thread (an fsync would stall every session of the worker).

Imports: stdlib, relay.queue.{model,store}, relay.metrics.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from relay import metrics
from relay.queue.model import Envelope
from relay.queue.store import QueueFull, QueueStore

_Op = Callable[[Any], Any]  # op(txn) -> result, run inside the batch's write transaction
_Item = tuple[_Op, "asyncio.Future[Any]", bool]  # (op, future, counts as a new message)


# How long a background write (run()) may wait for a new message to share its commit.
LAZY_WINDOW = 0.005


class GroupCommitter:
    def __init__(self, store: QueueStore, loop: asyncio.AbstractEventLoop,
                 delay: float = 0.0, lazy_window: float = LAZY_WINDOW) -> None:
        self.store = store
        self.loop = loop
        self.delay = delay
        self.lazy_window = lazy_window
        self._pending: list[_Item] = []
        self._urgent = 0  # new messages among _pending: a client waits for each
        self._lazy_since = 0.0  # when the oldest pending background write came
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, env: Envelope, body: bytes) -> asyncio.Future[None]:
        """Queue one new message for the next commit; resolves once it is durable."""
        return self._add(functools.partial(self.store.op_put_new, env=env, body=body), True)

    def run(self, op: _Op) -> asyncio.Future[Any]:
        """Run op(txn) in a batch within `lazy_window` (delivery outcomes, bounces): no
        client waits for these, so they ride in the next new message's commit when one
        comes soon; resolves with its result once durable."""
        return self._add(op, False)

    def _add(self, op: _Op, new: bool) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("committer stopped")
            if new:
                self._urgent += 1
                self._cond.notify()
            elif not self._pending:
                self._lazy_since = time.monotonic()
                self._cond.notify()  # start the window
            self._pending.append((op, fut, new))
        return fut

    def stop(self) -> None:
        """Commit what is pending, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._wait_for_work()
                if not self._pending and self._stopping:
                    return
            if self.delay:
                time.sleep(self.delay)
            with self._cond:
                batch, self._pending = self._pending, []
                self._urgent = 0
            started = time.perf_counter()
            results = self._commit(batch)
            took = time.perf_counter() - started
            self.loop.call_soon_threadsafe(_resolve, results, took,
                                           sum(1 for _, _, new in batch if new))

    def _wait_for_work(self) -> None:
        """Return (holding the lock) when a new message is pending, the oldest background
        write has waited `lazy_window`, or the committer stops."""
        while not self._stopping:
            if self._urgent:
                return
            if not self._pending:
                self._cond.wait()
                continue
            left = self._lazy_since + self.lazy_window - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _commit(self, batch: list[_Item]) -> list[_Result]:
        try:
            values = self.store.write([op for op, _, _ in batch])
        except QueueFull as exc:
            if len(batch) == 1:
                return [(batch[0][1], None, exc)]
            return [r for item in batch for r in self._commit([item])]
        except Exception as exc:  # noqa: BLE001 - every failure must reach its caller
            if len(batch) == 1:
                return [(batch[0][1], None, exc)]
            return [r for item in batch for r in self._commit([item])]
        return [(fut, value, None) for (_, fut, _), value in zip(batch, values)]


_Result = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _resolve(results: list[_Result], took: float, messages: int) -> None:
    """On the loop: settle the batch's futures and count it (metrics.TALLY is the loop's)."""
    metrics.TALLY.observe(metrics.QUEUE_COMMIT_SECONDS, took)
    metrics.TALLY.observe(metrics.QUEUE_COMMIT_BATCH, messages)
    for fut, value, exc in results:
        if fut.cancelled():
            continue
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)
