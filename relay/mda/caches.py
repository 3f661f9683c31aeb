"""Byte-bounded LRU caches of what the servers of one process derive from message files.

One `Caches` per MailStore (so per process), shared by all sessions: the files never
change, so what is parsed from them is never stale; only the bound in bytes evicts.

Imports: stdlib.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class LruCache:
    """Values by key, least recently used dropped first beyond `max_bytes` (sizes as the
    caller counts them); thread-safe. A value bigger than the bound is not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        # No lock: each OrderedDict call is atomic (under the GIL), and a key evicted
        # between the two calls was simply a hit just before.
        items = self._items
        hit = items.get(key)
        if hit is None:
            return None
        try:
            items.move_to_end(key)
        except KeyError:
            pass
        return hit[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, n) = self._items.popitem(last=False)
                self._bytes -= n

    def has(self, key: Any) -> bool:
        return key in self._items

    def pop(self, key: Any) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]

    def __len__(self) -> int:
        return len(self._items)


class Caches:
    """What the servers of one process derive from message files (immutable, so never
    stale), shared by all sessions: parsed headers, whole messages, SEARCH columns."""

    def __init__(self, header_bytes: int = 16 << 20, message_bytes: int = 32 << 20,
                 column_bytes: int = 32 << 20) -> None:
        self.headers = LruCache(header_bytes)
        self.messages = LruCache(message_bytes)
        self.columns = LruCache(column_bytes)
