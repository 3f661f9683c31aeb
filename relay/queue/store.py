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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb

from relay.queue import schema
from relay.queue.model import Envelope, MessageState


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
    # Each op_* runs inside a write transaction given by the caller (GroupCommitter batches
    # many of them into one commit); the plain methods run one op in a durable txn of its own.

    def op_put_new(self, txn: lmdb.Transaction, env: Envelope, body: bytes) -> None:
        key = env.id.encode()
        if not txn.put(key, schema.encode_envelope(env), db=self._dbs[b"env"], overwrite=False):
            raise KeyError(f"queue id {env.id} already exists")
        txn.put(key, body, db=self._dbs[b"body"])
        if env.state is not MessageState.HOLD:
            txn.put(schema.sched_key(env.next_attempt, env.id), b"", db=self._dbs[b"sched"])

    def op_update(self, txn: lmdb.Transaction, env: Envelope,
                  current: Envelope | None = None) -> bool:
        """Replace the envelope (state, recipients, next attempt); False if it is gone.
        `current`: the stored envelope when the caller already read it in this txn."""
        key = env.id.encode()
        if current is None:
            current = self.get_in(txn, env.id)
            if current is None:
                return False
        self._unschedule(txn, current)
        txn.put(key, schema.encode_envelope(env), db=self._dbs[b"env"])
        if env.state is not MessageState.HOLD:
            txn.put(schema.sched_key(env.next_attempt, env.id), b"", db=self._dbs[b"sched"])
        return True

    def op_delete(self, txn: lmdb.Transaction, queue_id: str,
                  current: Envelope | None = None) -> bool:
        key = queue_id.encode()
        if current is None:
            current = self.get_in(txn, queue_id)
            if current is None:
                return False
        self._unschedule(txn, current)
        txn.delete(key, db=self._dbs[b"env"])
        txn.delete(key, db=self._dbs[b"body"])
        return True

    def _unschedule(self, txn: lmdb.Transaction, env: Envelope) -> None:
        txn.delete(schema.sched_key(env.next_attempt, env.id), db=self._dbs[b"sched"])

    def write(self, ops: list[Callable[[lmdb.Transaction], Any]]) -> list[Any]:
        """Run every op in one durable transaction, or none (QueueFull)."""
        return self._write(lambda txn: [op(txn) for op in ops])  # type: ignore[no-any-return]

    def enqueue(self, items: Iterable[tuple[Envelope, bytes]]) -> None:
        """Write every (envelope, body) in one durable transaction, or none (QueueFull)."""
        items = list(items)
        self._write(lambda txn: [self.op_put_new(txn, env, body) for env, body in items])

    def update(self, env: Envelope) -> bool:
        return bool(self._write(lambda txn: self.op_update(txn, env)))

    def delete(self, queue_id: str) -> bool:
        return bool(self._write(lambda txn: self.op_delete(txn, queue_id)))

    def modify(self, queue_id: str, change: Callable[[Envelope], bool]) -> bool:
        """Read-modify-write one envelope in one txn (operator commands); False if absent
        or when change() returns False."""
        def work(txn: lmdb.Transaction) -> bool:
            raw = txn.get(queue_id.encode(), db=self._dbs[b"env"])
            if raw is None:
                return False
            env = schema.decode_envelope(raw)
            if not change(env):
                return False
            return self.op_update(txn, env)

        return bool(self._write(work))

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
        found = self.get_many([queue_id])
        return found[0] if found else None

    def get_many(self, queue_ids: list[str]) -> list[tuple[Envelope, bytes]]:
        """The (envelope, body) of each id still queued, in order, read in one transaction."""
        if not self._dbs:
            return []
        out: list[tuple[Envelope, bytes]] = []
        env_db, body_db = self._dbs[b"env"], self._dbs[b"body"]
        with self._resize_lock, self._read() as txn:
            for queue_id in queue_ids:
                key = queue_id.encode()
                raw = txn.get(key, db=env_db)
                if raw is not None:
                    out.append((schema.decode_envelope(raw), bytes(txn.get(key, db=body_db) or b"")))
        return out

    def due(self, now: float, limit: int = 1000) -> list[str]:
        """Ids whose next attempt is at or before `now`, oldest first (held ones never)."""
        if not self._dbs:
            return []
        end = schema.sched_key(now, "\xff")
        out: list[str] = []
        with self._resize_lock, self._read() as txn:
            cursor = txn.cursor(db=self._dbs[b"sched"])
            if not cursor.first():
                return out
            for key in cursor.iternext(values=False):
                if key > end or len(out) >= limit:
                    break
                out.append(schema.sched_id(key))
        return out

    def get_in(self, txn: lmdb.Transaction, queue_id: str) -> Envelope | None:
        """The envelope as seen by an open transaction (for read-modify-write ops)."""
        raw = txn.get(queue_id.encode(), db=self._dbs[b"env"])
        return None if raw is None else schema.decode_envelope(raw)

    def state_counts(self, now: float) -> dict[str, int]:
        """Messages by state for relay_queue_messages, without decoding an envelope (a
        scrape of a 100,000-message backlog must not stall the worker): held ones have no
        schedule entry; of the scheduled, those due by `now` are active and the rest wait
        for their retry time, deferred (Postfix's active and deferred queues). Counting
        the deferred walks their schedule keys only."""
        if not self._dbs:
            return {"active": 0, "deferred": 0, "hold": 0}
        with self._resize_lock, self._read() as txn:
            total = int(txn.stat(self._dbs[b"env"])["entries"])
            scheduled = int(txn.stat(self._dbs[b"sched"])["entries"])
            cursor = txn.cursor(db=self._dbs[b"sched"])
            waiting = 0
            if cursor.set_range(schema.sched_key(now, "\xff")):
                waiting = sum(1 for _ in cursor.iternext(values=False))
        return {"active": scheduled - waiting, "deferred": waiting, "hold": total - scheduled}

    def __len__(self) -> int:
        if not self._dbs:
            return 0
        with self._resize_lock, self._read() as txn:
            return int(txn.stat(self._dbs[b"env"])["entries"])


_STORAGE_ERRORS = tuple(os.strerror(e) for e in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG))


def _is_no_space(exc: lmdb.Error) -> bool:
    """Out of storage. LMDB reports a short page write (a full disk) as EIO."""
    return any(text in str(exc) for text in _STORAGE_ERRORS)
