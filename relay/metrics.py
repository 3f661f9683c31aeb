"""Every Prometheus metric, declared once. Everyone else only increments.

Worker processes share values through prometheus-client's multiprocess mode: the
supervisor sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module, and
any worker's /metrics endpoint aggregates all of them (see `render`).

Imports: prometheus_client, stdlib (a leaf: nothing from relay).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

MESSAGES_RECEIVED = Counter(
    "relay_messages_received_total", "Messages accepted with 250 and durably queued")
SMTP_SESSIONS_ACTIVE = Gauge(
    "relay_smtp_sessions_active", "Open inbound SMTP sessions", multiprocess_mode="livesum")
SMTP_REPLIES = Counter(
    "relay_smtp_replies_total", "SMTP replies sent, by code", ["code"])
QUEUE_COMMIT_SECONDS = Histogram(
    "relay_queue_commit_seconds", "Duration of one durable group commit (write + fsync)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
QUEUE_COMMIT_BATCH = Histogram(
    "relay_queue_commit_batch_messages", "Messages per group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
MESSAGES_DELIVERED = Counter(
    "relay_messages_delivered_total", "Deliveries completed, one per recipient", ["kind"])
MESSAGES_DEFERRED = Counter(
    "relay_messages_deferred_total", "Delivery attempts that left recipients for a retry")
MESSAGES_BOUNCED = Counter(
    "relay_messages_bounced_total", "Recipients bounced (5xx, expiry, undeliverable)")
DELIVERY_DURATION = Histogram(
    "relay_delivery_duration_seconds", "Time from arrival until a message leaves the queue",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 14400, 86400, 432000))
OUTBOUND_CONNECTIONS_ACTIVE = Gauge(
    "relay_outbound_connections_active", "Open outbound SMTP connections",
    multiprocess_mode="livesum")
DNS_LOOKUPS = Counter(
    "relay_dns_lookups_total", "MX/address resolutions by result", ["result"])
LOCAL_DELIVERIES = Counter(
    "relay_local_deliveries_total", "Messages written to a local Maildir")
IMAP_SESSIONS_ACTIVE = Gauge(
    "relay_imap_sessions_active", "Open IMAP sessions", multiprocess_mode="livesum")
POP3_SESSIONS_ACTIVE = Gauge(
    "relay_pop3_sessions_active", "Open POP3 sessions", multiprocess_mode="livesum")
IMAP_COMMANDS = Counter(
    "relay_imap_commands_total", "IMAP commands processed, by command", ["command"])
AUTH_FAILURES = Counter(
    "relay_auth_failures_total", "Failed logins, by protocol", ["protocol"])
AUTH_CACHE = Counter(
    "relay_auth_cache_total", "Login cache lookups (hit: no argon2id check), by result",
    ["result"])
BUILD_INFO = Gauge(
    "relay_build_info", "Build facts: which parser implementation serves",
    ["version", "parser"], multiprocess_mode="max")

class Tally:
    """Hot-path counts and observations kept in plain Python and pushed to Prometheus by
    `flush()`.

    In multiprocess mode every Counter.inc() takes a lock, checks getpid() (a system
    call) and writes an mmap'd file, and a Histogram.observe() does that twice; at
    thousands of messages a second that was an eighth of the event loop's time. The
    worker flushes every FLUSH_INTERVAL seconds and at exit, so a scrape is at most that
    much behind. Event-loop thread only (the committer thread observes directly)."""

    FLUSH_INTERVAL = 0.5

    def __init__(self) -> None:
        self._counts: dict[object, float] = {}
        # histogram child -> [sum, count per bucket index]
        self._observed: dict[Histogram, list[Any]] = {}

    def add(self, child: object, amount: float = 1) -> None:
        self._counts[child] = self._counts.get(child, 0) + amount

    def observe(self, histogram: Histogram, amount: float) -> None:
        """Histogram.observe(amount), deferred: the same buckets and sum at the flush."""
        entry = self._observed.get(histogram)
        if entry is None:
            entry = self._observed[histogram] = [0.0, [0] * len(histogram._upper_bounds)]
        entry[0] += amount
        # Histogram.observe counts the first bucket whose bound is >= amount; the
        # exposition makes the counts cumulative.
        entry[1][bisect.bisect_left(histogram._upper_bounds, amount)] += 1

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for child, amount in counts.items():
            child.inc(amount)  # type: ignore[attr-defined]
        observed, self._observed = self._observed, {}
        for histogram, (total, buckets) in observed.items():
            histogram._sum.inc(total)
            for index, n in enumerate(buckets):
                if n:
                    histogram._buckets[index].inc(n)


TALLY = Tally()
_reply_children: dict[int, Counter] = {}


def count_reply(code: int) -> None:
    child = _reply_children.get(code)
    if child is None:
        child = _reply_children[code] = SMTP_REPLIES.labels(code=str(code))
    TALLY.add(child)


class QueueCollector:
    """relay_queue_messages{state}, read from the queue at scrape time."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily("relay_queue_messages", "Messages in the queue, by state",
                                   labels=["state"])
        counts = self._counts()
        for state in ("active", "deferred", "hold"):
            family.add_metric([state], counts.get(state, 0))
        return [family]


def render(queue_counts: Callable[[], dict[str, int]]) -> tuple[bytes, str]:
    """The /metrics body: every process's values plus the queue gauge."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY  # type: ignore[assignment]
    collector = QueueCollector(queue_counts)
    registry.register(collector)  # type: ignore[arg-type]
    try:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    finally:
        registry.unregister(collector)  # type: ignore[arg-type]
