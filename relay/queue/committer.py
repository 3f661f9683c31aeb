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
through `run()`, so delivering does not add an fsync per message either. What would break this: resolving futures before commit, or writing from
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


class GroupCommitter:
    def __init__(self, store: QueueStore, loop: asyncio.AbstractEventLoop,
                 delay: float = 0.0) -> None:
        self.store = store
        self.loop = loop
        self.delay = delay
        self._pending: list[_Item] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, env: Envelope, body: bytes) -> asyncio.Future[None]:
        """Queue one new message for the next commit; resolves once it is durable."""
        return self._add(functools.partial(self.store.op_put_new, env=env, body=body), True)

    def run(self, op: _Op) -> asyncio.Future[Any]:
        """Run op(txn) in the next batch (delivery outcomes, bounces); resolves with its result."""
        return self._add(op, False)

    def _add(self, op: _Op, new: bool) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("committer stopped")
            self._pending.append((op, fut, new))
            self._cond.notify()
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
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending and self._stopping:
                    return
            if self.delay:
                time.sleep(self.delay)
            with self._cond:
                batch, self._pending = self._pending, []
            started = time.perf_counter()
            results = self._commit(batch)
            took = time.perf_counter() - started
            self.loop.call_soon_threadsafe(_resolve, results, took,
                                           sum(1 for _, _, new in batch if new))

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
