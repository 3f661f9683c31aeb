"""GroupCommitter with a real QueueStore and an asyncio loop: batching and failure isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from relay.queue.committer import GroupCommitter
from relay.queue.model import Envelope, Recipient
from relay.queue.store import QueueFull, QueueStore

MiB = 1 << 20
Runner = Callable[..., Any]  # the run_async fixture
# Long enough that every submit of one loop iteration lands in the same batch.
BATCH_WINDOW = 0.05


class CountingStore(QueueStore):
    """A QueueStore that records the size of every write transaction the committer asks for.

    write(ops) and enqueue(items) each run one durable transaction (neither calls the other).
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []
        self.threads: set[str] = set()

    def _record(self, n: int) -> None:
        self.calls.append(n)
        self.threads.add(threading.current_thread().name)

    def write(self, ops):  # type: ignore[no-untyped-def]
        ops = list(ops)
        self._record(len(ops))
        return super().write(ops)

    def enqueue(self, items: Iterable[tuple[Envelope, bytes]]) -> None:
        items = list(items)
        self._record(len(items))
        super().enqueue(items)


def envelope(queue_id: str) -> Envelope:
    return Envelope(id=queue_id, sender="alice@example.org",
                    recipients=[Recipient("bob@example.test")], arrival=1.0, size=0)


def test_concurrent_submits_resolve_and_share_commits(tmp_path: Path, run_async: Runner) -> None:
    store = CountingStore(tmp_path / "q", map_size=MiB)

    async def main() -> list[object]:
        committer = GroupCommitter(store, asyncio.get_running_loop(), delay=BATCH_WINDOW)
        try:
            futures = [committer.submit(envelope(f"ID{i:04d}"), b"body %d" % i)
                       for i in range(200)]
            return await asyncio.gather(*futures)
        finally:
            committer.stop()

    try:
        assert run_async(main) == [None] * 200
        assert len(store) == 200
        for i in range(200):
            got = store.get(f"ID{i:04d}")
            assert got is not None and got[1] == b"body %d" % i
        assert sum(store.calls) == 200
        assert len(store.calls) < 200
        assert store.threads == {"group-commit"}  # never the loop thread
    finally:
        store.close()


def test_submits_from_many_tasks_are_committed_in_fewer_batches(
        tmp_path: Path, run_async: Runner) -> None:
    store = CountingStore(tmp_path / "q", map_size=MiB)

    async def main() -> None:
        committer = GroupCommitter(store, asyncio.get_running_loop(), delay=BATCH_WINDOW)

        async def session(n: int) -> None:
            await asyncio.sleep(0)
            await committer.submit(envelope(f"S{n:03d}"), b"m")

        try:
            await asyncio.gather(*(session(n) for n in range(50)))
        finally:
            committer.stop()

    try:
        run_async(main)
        assert len(store) == 50
        assert len(store.calls) < 50
    finally:
        store.close()


def test_future_resolves_only_after_the_message_is_readable(
        tmp_path: Path, run_async: Runner) -> None:
    store = QueueStore(tmp_path / "q", map_size=MiB)

    async def main() -> None:
        committer = GroupCommitter(store, asyncio.get_running_loop())
        try:
            await committer.submit(envelope("DURABLE"), b"x")
            assert store.get("DURABLE") == (envelope("DURABLE"), b"x")
        finally:
            committer.stop()

    try:
        run_async(main)
    finally:
        store.close()


def test_queue_full_fails_only_the_message_that_does_not_fit(
        tmp_path: Path, run_async: Runner) -> None:
    store = CountingStore(tmp_path / "q", map_size=MiB, max_map_size=MiB)

    async def main() -> list[object]:
        committer = GroupCommitter(store, asyncio.get_running_loop(), delay=BATCH_WINDOW)
        try:
            futures = [committer.submit(envelope(f"SMALL{i}"), b"s" * 1000) for i in range(5)]
            futures.insert(2, committer.submit(envelope("HUGE"), b"h" * (2 * MiB)))
            return await asyncio.gather(*futures, return_exceptions=True)
        finally:
            committer.stop()

    try:
        results = run_async(main)
        assert results[:2] == [None, None] and results[3:] == [None] * 3
        assert isinstance(results[2], QueueFull)
        assert store.get("HUGE") is None
        assert sorted(e.id for e in store.envelopes()) == [f"SMALL{i}" for i in range(5)]
        assert store.calls[0] == 6  # they were one batch before the split
    finally:
        store.close()


def test_duplicate_id_fails_only_its_own_message(tmp_path: Path, run_async: Runner) -> None:
    # Like QueueFull, a refusal caused by one message must not refuse its neighbours.
    store = QueueStore(tmp_path / "q", map_size=MiB)
    store.enqueue([(envelope("TAKEN"), b"old")])

    async def main() -> list[object]:
        committer = GroupCommitter(store, asyncio.get_running_loop(), delay=BATCH_WINDOW)
        try:
            futures = [committer.submit(envelope("N1"), b"1"),
                       committer.submit(envelope("TAKEN"), b"new"),
                       committer.submit(envelope("N2"), b"2")]
            return await asyncio.gather(*futures, return_exceptions=True)
        finally:
            committer.stop()

    try:
        results = run_async(main)
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], Exception)
        assert store.get("TAKEN") == (envelope("TAKEN"), b"old")
        assert store.get("N1") is not None and store.get("N2") is not None
    finally:
        store.close()


def test_stop_commits_what_is_pending(tmp_path: Path, run_async: Runner) -> None:
    store = QueueStore(tmp_path / "q", map_size=MiB)

    async def main() -> None:
        committer = GroupCommitter(store, asyncio.get_running_loop(), delay=BATCH_WINDOW)
        futures = [committer.submit(envelope(f"P{i}"), b"p") for i in range(3)]
        committer.stop()
        await asyncio.gather(*futures)

    try:
        run_async(main)
        assert len(store) == 3
    finally:
        store.close()


def test_submit_after_stop_raises(tmp_path: Path, run_async: Runner) -> None:
    store = QueueStore(tmp_path / "q", map_size=MiB)

    async def main() -> None:
        committer = GroupCommitter(store, asyncio.get_running_loop())
        committer.stop()
        with pytest.raises(RuntimeError):
            committer.submit(envelope("LATE"), b"x")

    try:
        run_async(main)
        assert store.get("LATE") is None
    finally:
        store.close()


def test_cancelled_future_does_not_break_the_batch(tmp_path: Path, run_async: Runner) -> None:
    store = QueueStore(tmp_path / "q", map_size=MiB)

    async def main() -> None:
        committer = GroupCommitter(store, asyncio.get_running_loop(), delay=BATCH_WINDOW)
        try:
            gone = committer.submit(envelope("GONE"), b"g")
            kept = committer.submit(envelope("KEPT"), b"k")
            gone.cancel()
            await kept
        finally:
            committer.stop()

    try:
        run_async(main)
        assert store.get("KEPT") is not None
    finally:
        store.close()


def test_a_background_write_waits_to_share_the_next_messages_commit(
        tmp_path: Path, run_async: Runner) -> None:
    store = CountingStore(tmp_path / "q", map_size=MiB)

    async def main() -> tuple[object, object]:
        committer = GroupCommitter(store, asyncio.get_running_loop(), lazy_window=5.0)
        try:
            outcome = committer.run(lambda txn: "recorded")
            await asyncio.sleep(0.05)
            assert not outcome.done()  # no client waits for it: it waits for company
            new = committer.submit(envelope("NEXT"), b"x")
            return await asyncio.wait_for(asyncio.gather(outcome, new), 2.0)
        finally:
            committer.stop()

    try:
        assert run_async(main) == ["recorded", None]
        assert store.calls == [2]  # one commit for both
    finally:
        store.close()


def test_a_background_write_alone_is_committed_after_the_window(
        tmp_path: Path, run_async: Runner) -> None:
    store = CountingStore(tmp_path / "q", map_size=MiB)

    async def main() -> float:
        committer = GroupCommitter(store, asyncio.get_running_loop(), lazy_window=0.2)
        try:
            started = time.monotonic()
            assert await asyncio.wait_for(committer.run(lambda txn: 7), 2.0) == 7
            return time.monotonic() - started
        finally:
            committer.stop()

    try:
        took = run_async(main)
        assert 0.15 <= took < 1.5 and store.calls == [1]
    finally:
        store.close()


def test_stop_does_not_wait_out_the_window(tmp_path: Path, run_async: Runner) -> None:
    store = CountingStore(tmp_path / "q", map_size=MiB)

    async def main() -> float:
        committer = GroupCommitter(store, asyncio.get_running_loop(), lazy_window=30.0)
        committer.run(lambda txn: None)
        started = time.monotonic()
        committer.stop()
        return time.monotonic() - started

    try:
        assert run_async(main) < 5.0 and store.calls == [1]
    finally:
        store.close()
