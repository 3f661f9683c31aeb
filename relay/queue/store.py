"""QueueStore: the LMDB environment holding queued messages.

One environment per data_dir, shared by every worker process (LMDB serialises writers
across processes with its own lock). Writes are synchronous and durable (the commit
fsyncs); callers that want many messages per fsync go through GroupCommitter.

Full map: the map grows (doubling, up to max_map_size); when it cannot grow, or the disk
is full, the write transaction is aborted and QueueFull raised. LMDB's copy-on-write
B-tree means an aborted write leaves every committed message intact.

Imports: lmdb, stdlib, relay.queue.{model,schema}.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import lmdb

from relay.queue import schema
from relay.queue.model import Envelope


class QueueFull(Exception):
    """No room for the write (map at its limit or disk full); nothing was written."""


class QueueStore:
    def __init__(self, path: Path, map_size: int = 64 << 20, max_map_size: int = 1 << 40,
                 readonly: bool = False) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_map_size = max_map_size
        self.readonly = readonly
        # sync/metasync on: mdb_txn_commit fdatasyncs before returning (durable 250).
        self.env = lmdb.open(
            str(path), map_size=map_size, max_dbs=len(schema.DATABASES) + 2, subdir=True,
            readonly=readonly, sync=True, metasync=True, lock=True, readahead=False,
            max_readers=512,
        )
        # set_mapsize needs no live transaction in this process: readers and the
        # resizer share this lock.
        self._resize_lock = threading.RLock()
        if readonly:
            self._dbs = {name: self.env.open_db(name, create=False) for name in schema.DATABASES
                         if self._db_exists(name)}
            if len(self._dbs) != len(schema.DATABASES):
                self._dbs = {}
        else:
            with self.env.begin(write=True) as txn:
                self._dbs = {name: self.env.open_db(name, txn=txn) for name in schema.DATABASES}
                version = txn.get(b"version", db=self._dbs[b"info"])
                if version is None:
                    txn.put(b"version", str(schema.SCHEMA_VERSION).encode(), db=self._dbs[b"info"])
                elif int(version) != schema.SCHEMA_VERSION:
                    raise RuntimeError(f"queue schema {int(version)} is not {schema.SCHEMA_VERSION}")

    def _db_exists(self, name: bytes) -> bool:
        with self.env.begin() as txn:
            return txn.get(name) is not None

    def close(self) -> None:
        with self._resize_lock:
            self.env.close()

    # ---- writes ---------------------------------------------------------------------

    def enqueue(self, items: Iterable[tuple[Envelope, bytes]]) -> None:
        """Write every (envelope, body) in one durable transaction, or none (QueueFull)."""
        items = list(items)
        self._write(lambda txn: self._put_all(txn, items))

    def _put_all(self, txn: lmdb.Transaction, items: list[tuple[Envelope, bytes]]) -> None:
        env_db, body_db = self._dbs[b"env"], self._dbs[b"body"]
        for env, body in items:
            key = env.id.encode()
            if not txn.put(key, schema.encode_envelope(env), db=env_db, overwrite=False):
                raise KeyError(f"queue id {env.id} already exists")
            txn.put(key, body, db=body_db)

    def update(self, env: Envelope) -> None:
        self._write(lambda txn: txn.put(env.id.encode(), schema.encode_envelope(env),
                                        db=self._dbs[b"env"]))

    def delete(self, queue_id: str) -> bool:
        def drop(txn: lmdb.Transaction) -> bool:
            key = queue_id.encode()
            found = txn.delete(key, db=self._dbs[b"env"])
            txn.delete(key, db=self._dbs[b"body"])
            return bool(found)

        return bool(self._write(drop))

    def _write(self, work):  # type: ignore[no-untyped-def]
        """Run work(txn) in a write transaction; grow the map on MapFullError."""
        with self._resize_lock:
            while True:
                try:
                    with self.env.begin(write=True) as txn:
                        return work(txn)
                except lmdb.MapResizedError:
                    self.env.set_mapsize(0)  # another process grew it: adopt its size
                except lmdb.MapFullError:
                    if not self._grow():
                        raise QueueFull("queue map is at max_map_size") from None
                except lmdb.Error as exc:
                    if _is_no_space(exc):
                        raise QueueFull(f"storage full or failing: {exc}") from None
                    raise

    def _grow(self) -> bool:
        current = self.env.info()["map_size"]
        if current >= self.max_map_size:
            return False
        self.env.set_mapsize(min(current * 2, self.max_map_size))
        return True

    # ---- reads ----------------------------------------------------------------------

    def _read(self):  # type: ignore[no-untyped-def]
        try:
            return self.env.begin()
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            return self.env.begin()

    def envelopes(self) -> Iterator[Envelope]:
        if not self._dbs:
            return
        with self._resize_lock, self._read() as txn:
            items = [schema.decode_envelope(v) for _, v in txn.cursor(db=self._dbs[b"env"])]
        yield from items

    def get(self, queue_id: str) -> tuple[Envelope, bytes] | None:
        if not self._dbs:
            return None
        with self._resize_lock, self._read() as txn:
            raw = txn.get(queue_id.encode(), db=self._dbs[b"env"])
            if raw is None:
                return None
            body = txn.get(queue_id.encode(), db=self._dbs[b"body"]) or b""
            return schema.decode_envelope(raw), bytes(body)

    def count_by_state(self) -> Counter[str]:
        return Counter(e.state.value for e in self.envelopes())

    def __len__(self) -> int:
        if not self._dbs:
            return 0
        with self._resize_lock, self._read() as txn:
            return int(txn.stat(self._dbs[b"env"])["entries"])


_STORAGE_ERRORS = tuple(os.strerror(e) for e in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG))


def _is_no_space(exc: lmdb.Error) -> bool:
    """Out of storage. LMDB reports a short page write (a full disk) as EIO."""
    return any(text in str(exc) for text in _STORAGE_ERRORS)
