"""Tests for relay._fast: both twins, every chunking, one contract (DESIGN.md §5.4).

Shared helpers live here so that every test module drives the twins the same way.
"""

from __future__ import annotations

from typing import Any, Iterable

from relay._fast import (
    cmdline_c,
    cmdline_py,
    data_c,
    data_py,
    headers_c,
    headers_py,
    outbound_c,
    outbound_py,
)
from relay._fast.spec import CommandSyntaxError

# (label, module) pairs; every test runs on both.
DATA_IMPLS = [("python", data_py), ("cython", data_c)]
CMDLINE_IMPLS = [("python", cmdline_py), ("cython", cmdline_c)]
HEADERS_IMPLS = [("python", headers_py), ("cython", headers_c)]
OUTBOUND_IMPLS = [("python", outbound_py), ("cython", outbound_c)]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets (clamped, sorted, duplicates giving empty chunks)."""
    points = sorted(min(max(c, 0), len(data)) for c in cuts)
    chunks, start = [], 0
    for p in points:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    return chunks


def drive_reader(module: Any, chunks: Iterable[bytes], max_size: int, max_line: int) -> dict:
    """Feed `chunks` to module.DataReader; return everything observable.

    trace holds, per feed, (consumed, done, size, flags, body()) so two implementations
    can be compared step by step; the other keys are the final state.
    """
    reader = module.DataReader(max_size, max_line)
    trace = []
    for chunk in chunks:
        used = reader.feed(chunk)
        assert 0 <= used <= len(chunk)
        if not reader.done:
            assert used == len(chunk), "consumed less than fed without being done"
        trace.append((used, reader.done, reader.size, reader.flags, reader.body()))
    return {
        "trace": trace,
        "consumed": sum(t[0] for t in trace),
        "done": reader.done,
        "size": reader.size,
        "flags": reader.flags,
        "body": reader.body(),
    }


def final(result: dict) -> tuple:
    """The chunking-independent part of a drive_reader result."""
    return (result["consumed"], result["done"], result["size"], result["flags"], result["body"])


def command_result(module: Any, line: bytes) -> tuple:
    """parse_command's complete observable result: the Command, or the failure kind."""
    try:
        cmd = module.parse_command(line)
    except CommandSyntaxError as exc:
        return ("error", exc.kind)
    return ("ok", cmd.verb, cmd.path, cmd.params, cmd.arg, type(cmd).__name__)
