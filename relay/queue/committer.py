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
QueueFull. What would break this: resolving futures before commit, or writing from
the loop thread (an fsync would stall every session of the worker).

Imports: stdlib, relay.queue.{model,store}, relay.metrics.
"""

from __future__ import annotations

import asyncio
import threading
import time

from relay import metrics
from relay.queue.model import Envelope
from relay.queue.store import QueueFull, QueueStore

_Item = tuple[Envelope, bytes, asyncio.Future[None]]


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
        """Queue one message for the next commit; the future resolves once it is durable."""
        fut: asyncio.Future[None] = self.loop.create_future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("committer stopped")
            self._pending.append((env, body, fut))
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
            results = self._commit(batch)
            self.loop.call_soon_threadsafe(_resolve, results)

    def _commit(self, batch: list[_Item]) -> list[tuple[asyncio.Future[None], BaseException | None]]:
        started = time.perf_counter()
        try:
            self.store.enqueue((env, body) for env, body, _ in batch)
        except QueueFull:
            if len(batch) == 1:
                return [(batch[0][2], QueueFull("queue full"))]
            return [r for item in batch for r in self._commit([item])]
        except Exception as exc:  # noqa: BLE001 - every failure must reach its session
            return [(fut, exc) for _, _, fut in batch]
        metrics.QUEUE_COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.QUEUE_COMMIT_BATCH.observe(len(batch))
        return [(fut, None) for _, _, fut in batch]


def _resolve(results: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for fut, exc in results:
        if fut.cancelled():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)
