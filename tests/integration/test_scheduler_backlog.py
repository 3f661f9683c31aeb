"""A queue backlog (after a restart or an outage) drains without waiting a poll per scan.

The scheduler runs on a real LMDB queue and group committer; only the remote side is a
recorder below it (the unit under test is the scan/hand-out loop, not SMTP).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from relay.delivery import scheduler as scheduler_module
from relay.delivery.route import Destination, Router
from relay.delivery.scheduler import DeliveryScheduler, Policy
from relay.queue.committer import GroupCommitter
from relay.queue.model import Envelope, Outcome, QueueIdFactory, Recipient
from relay.queue.store import QueueStore


class Recorder:
    """Accepts every recipient, after a yield to the loop like a real connection."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def deliver(self, dest: Destination, sender: str, recipients: list[str],
                      body: bytes, smtputf8: bool) -> list[Outcome]:
        await asyncio.sleep(0.001)
        self.seen.extend(recipients)
        return [Outcome(r, "delivered", "2.0.0", "smtp; 250 2.0.0 ok", "dns; sink.test")
                for r in recipients]


@pytest.mark.parametrize("backlog", [35, 7])
def test_backlog_beyond_one_scan_drains_long_before_the_next_poll(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backlog: int) -> None:
    monkeypatch.setattr(scheduler_module, "SCAN_LIMIT", 10)
    monkeypatch.setattr(scheduler_module, "SCAN_BATCH", 4)
    store = QueueStore(tmp_path / "queue")
    ids = QueueIdFactory(0)
    store.enqueue((Envelope(id=ids.next(), sender="a@x.test",
                            recipients=[Recipient(f"r{i}@y.test")], arrival=time.time(),
                            size=3), b"x\r\n") for i in range(backlog))
    remote = Recorder()

    async def scenario() -> float:
        committer = GroupCommitter(store, asyncio.get_running_loop())
        sched = DeliveryScheduler(
            store=store, committer=committer,
            router=Router((), None, ("127.0.0.9", 25), 25),  # type: ignore[arg-type]
            local=None, remote=remote,  # type: ignore[arg-type]
            policy=Policy((60.0,), 3600.0, 0.0), ids=ids, hostname="relay.test",
            worker=0, workers=1, poll=30.0)
        started = time.monotonic()
        runner = asyncio.get_running_loop().create_task(sched.run())
        try:
            while len(store) and time.monotonic() - started < 10:
                await asyncio.sleep(0.02)
            return time.monotonic() - started
        finally:
            await sched.stop()
            runner.cancel()
            committer.stop()

    took = asyncio.run(scenario())
    assert sorted(remote.seen) == sorted(f"r{i}@y.test" for i in range(backlog))  # each once
    assert len(store) == 0
    assert took < 5  # four scans of ten; waiting a poll (30 s) between them would fail
    store.close()
