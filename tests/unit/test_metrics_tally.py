"""metrics.Tally: deferred counts and observations equal what direct calls would give."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from relay.metrics import Tally


def _pair(registry: CollectorRegistry, name: str) -> Histogram:
    return Histogram(name, "test", buckets=(0.01, 0.1, 1, 10), registry=registry)


def test_deferred_observations_equal_direct_ones() -> None:
    registry = CollectorRegistry()
    direct, deferred = _pair(registry, "direct_seconds"), _pair(registry, "deferred_seconds")
    tally = Tally()
    values = [0.0, 0.01, 0.010001, 0.05, 0.1, 0.5, 1, 9.99, 10, 10.5, 1e9]
    for v in values:
        direct.observe(v)
        tally.observe(deferred, v)
    before = generate_latest(registry).decode()
    assert "deferred_seconds_count 0.0" in before  # nothing until the flush
    tally.flush()
    text = generate_latest(registry).decode()
    lines = {line.replace("direct_", "X_").replace("deferred_", "X_")
             for line in text.splitlines() if line.startswith(("direct_", "deferred_"))
             and "_created" not in line}
    direct_lines = {line.replace("direct_", "X_") for line in text.splitlines()
                    if line.startswith("direct_") and "_created" not in line}
    assert lines == direct_lines  # every bucket, _count and _sum the same
    assert f'X_seconds_count {float(len(values))}' in direct_lines
    tally.flush()  # a second flush adds nothing
    assert generate_latest(registry).decode() == text


def test_deferred_counts() -> None:
    registry = CollectorRegistry()
    counter = Counter("things", "test", ["kind"], registry=registry)
    tally = Tally()
    for _ in range(3):
        tally.add(counter.labels(kind="a"))
    tally.add(counter.labels(kind="b"), 2.5)
    tally.flush()
    text = generate_latest(registry).decode()
    assert 'things_total{kind="a"} 3.0' in text and 'things_total{kind="b"} 2.5' in text
