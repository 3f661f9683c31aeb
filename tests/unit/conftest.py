"""Shared fixtures for tests/unit: a queue store in tmp_path and a way to run one coroutine.

tests/unit has no __init__.py (rootdir-relative imports): test module basenames must be
unique across tests/unit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from relay.queue.store import QueueStore

T = TypeVar("T")


@pytest.fixture
def queue_store(tmp_path: Path) -> Iterator[QueueStore]:
    """A fresh QueueStore with a 1 MiB initial map (grows as needed)."""
    store = QueueStore(tmp_path / "queue", map_size=1 << 20, max_map_size=64 << 20)
    yield store
    store.close()


def _run_async(main: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


@pytest.fixture
def run_async() -> Callable[..., object]:
    """run_async(main): run the coroutine function `main` on a fresh asyncio loop (for
    the units that need one: committer, intake), bounded to 30 s."""
    return _run_async
