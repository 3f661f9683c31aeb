"""Sequence sets (RFC 3501 §9 sequence-set; "$" RFC 5182 §2.1): the value and its grammar.

`SequenceSet` is the value, resolved against a mailbox only when asked (RFC 3501 §6.4.8);
`SequenceSetGrammar` reads one for FETCH, STORE, COPY, MOVE, UID EXPUNGE and SEARCH;
`parse_sequence_set` reads one from text.

Imports: stdlib only, and relay.mda.imap.tokens. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from relay.mda.imap.tokens import GrammarError, TokenGrammar


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """RFC 3501 §9 sequence-set, kept as ranges so "1:4294967295" costs two ints.

    Each range is (first, last) as written, None standing for "*" (the largest number in use).
    `saved` is the RFC 5182 "$" (the saved search result, which the session substitutes).
    """

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False

    def _bounds(self, largest: int) -> Iterator[tuple[int, int]]:
        for a, b in self.ranges:
            lo, hi = largest if a is None else a, largest if b is None else b
            yield (lo, hi) if lo <= hi else (hi, lo)

    def contains(self, n: int, largest: int) -> bool:
        """Whether `n` is in the set when "*" means `largest`."""
        return any(lo <= n <= hi for lo, hi in self._bounds(largest))

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Sorted, merged, inclusive ranges within 1..largest (RFC 3501 §6.4.8: "559:*"
        includes the largest value even when 559 is above it)."""
        out: list[tuple[int, int]] = []
        for lo, hi in sorted(self._bounds(largest)):
            lo, hi = max(lo, 1), min(hi, largest)
            if lo > hi:
                continue
            if out and lo <= out[-1][1] + 1:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        return out

    def values(self, largest: int) -> Iterator[int]:
        """Every member in ascending order (lazily: iterate, do not list, huge sets)."""
        for lo, hi in self.resolve(largest):
            yield from range(lo, hi + 1)

    def max_explicit(self) -> int:
        """The largest number written (not "*"), 0 if none: lets the session reject message
        numbers beyond the mailbox (RFC 3501 §9 seq-number)."""
        return max((x for r in self.ranges for x in r if x is not None), default=0)

    def __str__(self) -> str:
        if self.saved:
            return "$"

        def one(x: int | None) -> str:
            return "*" if x is None else str(x)

        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


class SequenceSetGrammar(TokenGrammar):
    """sequence-set and seq-number (RFC 3501 §9)."""

    def sequence_set(self) -> SequenceSet:
        c = self.c
        if c.peek() == 0x24:  # "$" RFC 5182 §2.1
            c.pos += 1
            return SequenceSet(saved=True)
        ranges: list[tuple[int | None, int | None]] = []
        while True:
            first = self.seq_number()
            last = first
            if c.peek() == 0x3A:
                c.pos += 1
                last = self.seq_number()
            ranges.append((first, last))
            if c.peek() != 0x2C:
                return SequenceSet(tuple(ranges))
            c.pos += 1

    def seq_number(self) -> int | None:
        if self.c.peek() == 0x2A:
            self.c.pos += 1
            return None
        return self.number(nonzero=True)


def parse_sequence_set(text: str) -> SequenceSet:
    """Parse a sequence-set such as "1:5,7,*".

    Raises:
        ValueError: not sequence-set syntax.
    """
    g = SequenceSetGrammar([text.encode("latin-1")], [], False)
    try:
        seq = g.sequence_set()
        g.end()
    except GrammarError as exc:
        raise ValueError(exc.text) from None
    return seq
