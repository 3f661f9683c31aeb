"""DeliveryScheduler: takes due messages from the queue, delivers, records, retries, bounces
(Postfix's qmgr and bounce daemons in one place, per worker process).

Theory of operation.
- Partition: each worker delivers the messages whose queue id carries its worker index
  (modulo the worker count), so workers never deliver the same message and need no
  lock; a message received by a worker is delivered by that same worker.
- New messages are handed over in memory right after their commit (`submit`), so
  delivery does not wait for a poll; the schedule index (queue/schema.py "sched") is
  scanned every `poll` seconds for retries, operator flushes and messages left from
  before a restart, SCAN_LIMIT at a time, read SCAN_BATCH per read transaction; when a
  scan was cut at the limit (a backlog) the next one starts as soon as half of what it
  took is done. An in-flight set keeps one message from being taken twice.
- A finished attempt is settled by `settle()`, a pure function: delivered and bounced
  recipients become final, the rest wait for the next step of the retry schedule
  (with jitter) until `max_queue_lifetime`, then bounce. The settlement, the removal of
  a finished message and any DSN are written in one transaction via the group
  committer, so they are durable together and cost no extra fsync.
- Never bounce a bounce: a failed message with the null sender is dropped and logged.
What would break it: settling outside the committer (lost or doubled DSNs), or taking
messages from another worker's partition (double delivery).

Imports: asyncio, relay.queue, relay.delivery.{route,local,bounce}, relay.metrics.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from relay import metrics
from relay.delivery import bounce
from relay.delivery.local import LocalDelivery
from relay.delivery.route import Destination, Router
from relay.queue.committer import GroupCommitter
from relay.queue.model import (
    Envelope,
    MessageState,
    Outcome,
    QueueIdFactory,
    Recipient,
    RecipientState,
)
from relay.queue.store import QueueStore

log = logging.getLogger("relay.delivery")
SCAN_LIMIT = 2000  # due messages taken per scan of the schedule
SCAN_BATCH = 256  # of those, read per executor call (one read transaction)
_DELIVERED = {kind: metrics.MESSAGES_DELIVERED.labels(kind=kind) for kind in ("local", "remote")}


class RemoteDelivery(Protocol):
    async def deliver(self, dest: Destination, sender: str, recipients: list[str], body: bytes,
                      smtputf8: bool) -> list[Outcome]: ...


@dataclass(frozen=True, slots=True)
class Policy:
    retry_schedule: tuple[float, ...]
    max_queue_lifetime: float
    delay_warning: float  # 0: off


@dataclass(slots=True)
class Settlement:
    envelope: Envelope | None  # None: every recipient is final, remove the message
    failed: list[Outcome] = field(default_factory=list)  # to bounce now
    delayed: list[Outcome] = field(default_factory=list)  # still queued
    warn: bool = False  # send the one delay DSN now


def retry_delay(attempts: int, schedule: tuple[float, ...], rng: random.Random) -> float:
    """The wait after the `attempts`-th failed attempt: the schedule's step (the last one
    repeats) with up to +-10% jitter, so retries of a burst spread out."""
    step = schedule[min(max(attempts, 1), len(schedule)) - 1]
    return step * rng.uniform(0.9, 1.1)


def settle(env: Envelope, outcomes: list[Outcome], now: float, policy: Policy,
           rng: random.Random) -> Settlement:
    """Apply one attempt's outcomes to a copy of `env` (pure)."""
    by_rcpt = {o.recipient: o for o in outcomes}
    expired = now - env.arrival >= policy.max_queue_lifetime
    recipients: list[Recipient] = []
    result = Settlement(None)
    for r in env.recipients:
        o = by_rcpt.get(r.address)
        if r.state is not RecipientState.PENDING or o is None:
            recipients.append(r)
            continue
        if o.action == "delayed" and expired:
            # RFC 3463 X.4.7: delivery time expired; the last error explains why.
            o = replace(o, action="failed", status="4.4.7",
                        diagnostic=o.diagnostic or "x-relay; delivery time expired")
        if o.action == "delivered":
            recipients.append(Recipient(r.address, RecipientState.DELIVERED, ""))
        elif o.action == "failed":
            recipients.append(Recipient(r.address, RecipientState.BOUNCED, o.diagnostic))
            result.failed.append(o)
        else:
            recipients.append(Recipient(r.address, RecipientState.PENDING, o.diagnostic))
            result.delayed.append(o)
    if not result.delayed:
        return result
    attempts = env.attempts + 1
    warned = env.extra.get("warned") == "1"
    result.warn = bool(policy.delay_warning and not warned
                       and now - env.arrival >= policy.delay_warning)
    extra = dict(env.extra)
    if result.warn:
        extra["warned"] = "1"
    result.envelope = replace(
        env, recipients=recipients, attempts=attempts,
        state=MessageState.HOLD if env.state is MessageState.HOLD else MessageState.DEFERRED,
        next_attempt=now + retry_delay(attempts, policy.retry_schedule, rng),
        last_error=result.delayed[-1].diagnostic, extra=extra)
    return result


class DeliveryScheduler:
    def __init__(self, *, store: QueueStore, committer: GroupCommitter, router: Router,
                 local: LocalDelivery, remote: RemoteDelivery, policy: Policy,
                 ids: QueueIdFactory, hostname: str, worker: int, workers: int,
                 concurrency: int = 200, poll: float = 1.0,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.committer, self.router = store, committer, router
        self.local, self.remote, self.policy = local, remote, policy
        self.ids, self.hostname = ids, hostname
        self.worker, self.workers = worker, workers
        self.poll = poll
        self.rng = rng or random.Random()
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # set when a backlog scan's batch is half done
        self._low_water = 0
        self._stopping = False
        self._loop = asyncio.get_running_loop()  # kept: each lookup costs a getpid()

    def owns(self, queue_id: str) -> bool:
        try:
            return int(queue_id[13:15], 16) % self.workers == self.worker
        except ValueError:
            return self.worker == 0

    def submit(self, env: Envelope, body: bytes) -> None:
        """A message was just committed by this worker: start delivering it now."""
        if self._stopping or env.id in self._in_flight or env.state is MessageState.HOLD:
            return
        self._start(env, body)

    def flush(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Scan the schedule until stopped."""
        while not self._stopping:
            full = False
            try:
                full = await self._scan()
            except Exception:  # noqa: BLE001 - the scheduler must outlive any one bug
                log.exception("schedule scan failed")
            if full:
                # A backlog (a restart, an outage's retries): scan again as soon as half
                # of what was taken is done, not a whole poll later.
                self._room.clear()
                self._low_water = len(self._in_flight) // 2
                if len(self._in_flight) > self._low_water:
                    try:
                        await asyncio.wait_for(self._room.wait(), self.poll)
                    except asyncio.TimeoutError:
                        pass
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
        for task in self._tasks:
            task.cancel()

    async def _scan(self) -> bool:
        """Start what is due; True when it started something and was cut at SCAN_LIMIT
        (more may be due: scanning again soon makes progress, never a busy loop)."""
        loop = self._loop
        due = await loop.run_in_executor(None, self.store.due, self.clock(), SCAN_LIMIT)
        mine = [q for q in due if q not in self._in_flight and self.owns(q)]
        started = 0
        for start in range(0, len(mine), SCAN_BATCH):  # one read transaction per batch
            if self._stopping:
                return False
            found = await loop.run_in_executor(None, self.store.get_many,
                                               mine[start:start + SCAN_BATCH])
            for env, body in found:
                # Re-check: intake may have handed it over while we were reading.
                if (env.state is MessageState.HOLD or env.id in self._in_flight
                        or self._stopping):
                    continue
                self._start(env, body)
                started += 1
        return started > 0 and len(due) >= SCAN_LIMIT

    def _start(self, env: Envelope, body: bytes) -> None:
        self._in_flight.add(env.id)
        task = self._loop.create_task(self._attempt(env, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, env: Envelope, body: bytes) -> None:
        try:
            async with self._slots:
                outcomes = await self._deliver(env, body)
                await self._record(env, body, outcomes)
        except Exception:  # noqa: BLE001 - retried at the next scan
            log.exception("%s: delivery attempt failed", env.id)
        finally:
            self._in_flight.discard(env.id)
            if len(self._in_flight) <= self._low_water:
                self._room.set()

    async def _deliver(self, env: Envelope, body: bytes) -> list[Outcome]:
        pending = [r.address for r in env.recipients if r.state is RecipientState.PENDING]
        routes = self.router.split(pending)
        jobs: list[Any] = []
        if routes.local:
            jobs.append(self.local.deliver(env.sender, routes.local, body))
        for dest, rcpts in routes.remote.items():
            jobs.append(self.remote.deliver(dest, env.sender, rcpts, body, env.smtputf8))
        if len(jobs) == 1:  # the common case: no task for gather() to wrap it in
            return list(await jobs[0])
        outcomes: list[Outcome] = []
        for result in await asyncio.gather(*jobs):
            outcomes.extend(result)
        return outcomes

    async def _record(self, env: Envelope, body: bytes, outcomes: list[Outcome]) -> None:
        now = self.clock()
        result = settle(env, outcomes, now, self.policy, self.rng)
        notices: list[tuple[Envelope, bytes]] = []
        if bounce.is_bounce(env.sender):
            if result.failed:
                log.warning("%s: undeliverable bounce dropped (never bounce a bounce): %s",
                            env.id, "; ".join(o.diagnostic for o in result.failed))
        else:
            if result.failed:
                notices.append(self._dsn(env, body, result.failed, now, "failure"))
            if result.warn:
                notices.append(self._dsn(env, body, result.delayed, now, "delay"))

        def write(txn: Any) -> bool:
            # Re-read inside the batch: the operator may have held or deleted it meanwhile.
            current = self.store.get_in(txn, env.id)
            if current is None:
                return False
            if result.envelope is None:
                self.store.op_delete(txn, env.id, current)
            else:
                updated = result.envelope
                if current.state is MessageState.HOLD:
                    updated = replace(updated, state=MessageState.HOLD)
                self.store.op_update(txn, updated, current)
            for notice, notice_body in notices:
                self.store.op_put_new(txn, notice, notice_body)
            return True

        if not await self.committer.run(write):
            log.info("%s: removed by the operator during delivery", env.id)
            return
        self._log(env, outcomes, result)
        if result.envelope is None:
            metrics.TALLY.observe(metrics.DELIVERY_DURATION, max(0.0, now - env.arrival))
        for notice, notice_body in notices:
            self.submit(notice, notice_body)

    def _dsn(self, env: Envelope, body: bytes, outcomes: list[Outcome], now: float,
             kind: str) -> tuple[Envelope, bytes]:
        header_end = body.find(b"\r\n\r\n")
        original = body if header_end < 0 else body[: header_end + 4]
        dsn = bounce.build_dsn(reporting_mta=self.hostname, original_sender=env.sender,
                               queue_id=env.id, arrival=env.arrival, now=now,
                               outcomes=outcomes, original=original, kind=kind,
                               retry_until=env.arrival + self.policy.max_queue_lifetime)
        notice = Envelope(id=self.ids.next(), sender="", recipients=[Recipient(env.sender)],
                          arrival=now, size=len(dsn), smtputf8=env.smtputf8)
        log.info("%s: %s notice %s to <%s>", env.id, kind, notice.id, env.sender)
        return notice, dsn

    def _log(self, env: Envelope, outcomes: list[Outcome], result: Settlement) -> None:
        for o in outcomes:
            kind = "local" if o.diagnostic.startswith("x-relay; delivered to maildir") else "remote"
            if o.action == "delivered":
                metrics.TALLY.add(_DELIVERED[kind])
                log.info("%s: delivered to=<%s> relay=%s tls=%s status=%s (%s)", env.id,
                         o.recipient, o.remote_mta.removeprefix("dns; ") or "local",
                         "yes" if o.tls else "no", o.status, o.diagnostic)
        for o in result.failed:
            metrics.TALLY.add(metrics.MESSAGES_BOUNCED)
            log.info("%s: bounced to=<%s> status=%s (%s)%s", env.id, o.recipient, o.status,
                     o.diagnostic, " expired" if o.status == "4.4.7" else "")
        if result.delayed and result.envelope is not None:
            metrics.TALLY.add(metrics.MESSAGES_DEFERRED)
            for o in result.delayed:
                log.info("%s: deferred to=<%s> status=%s (%s) next_attempt=%s", env.id,
                         o.recipient, o.status, o.diagnostic,
                         time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                       time.gmtime(result.envelope.next_attempt)))
