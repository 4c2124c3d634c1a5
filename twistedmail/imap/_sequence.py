# -*- test-case-name: tests.test_imap_parser -*-
"""IMAP sequence sets (RFC 3501 §9 ``sequence-set``), for the IMAP step of the flow.

A sequence set names messages by sequence number or by UID: numbers and
ranges separated by commas, ``*`` standing for the largest number in use.  The
parser builds a L{SequenceSet}; the server resolves it against the mailbox
(L{SequenceSet.iter_numbers} for sequence numbers, L{SequenceSet.iter_uids}
for a sorted UID list) and builds compact sets for responses with
L{SequenceSet.from_numbers}.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["MAX_NUMBER", "SequenceSet", "SequenceSetError"]

#: The largest nz-number (RFC 3501 §9: "0 < n < 4,294,967,296").
MAX_NUMBER = 4294967295


class SequenceSetError(ValueError):
    """Text that is not a valid sequence set."""


#: One bound of a range: a number, or None for ``*``.
Bound = int | None


def _parse_bound(token: bytes) -> Bound:
    if token == b"*":
        return None
    if (
        not token.isdigit()
        or not token.isascii()
        or token[:1] == b"0"
        or len(token) > 10
    ):
        raise SequenceSetError("sequence numbers are non-zero numbers or '*'")
    value = int(token)
    if value > MAX_NUMBER:
        raise SequenceSetError("sequence number too large")
    return value


def _format_bound(bound: Bound) -> str:
    return "*" if bound is None else str(bound)


@dataclass(frozen=True)
class SequenceSet:
    """A parsed ``sequence-set`` (RFC 3501 §9), kept as written.

    @ivar ranges: ``(first, last)`` pairs in the order given; a single number
        is ``(n, n)``; None stands for ``*``.  A range may run downwards
        (``4:2`` is the same as ``2:4``).
    """

    ranges: tuple[tuple[Bound, Bound], ...]

    def __post_init__(self) -> None:
        if not self.ranges:
            raise SequenceSetError("empty sequence set")
        for pair in self.ranges:
            for bound in pair:
                if bound is not None and not 0 < bound <= MAX_NUMBER:
                    raise SequenceSetError("sequence number out of range")

    @classmethod
    def parse(cls, data: bytes | str) -> SequenceSet:
        """Parse the ``sequence-set`` production (RFC 3501 §9).

        ::

            sequence-set = (seq-number / seq-range) *("," sequence-set)
            seq-range    = seq-number ":" seq-number
            seq-number   = nz-number / "*"

        @raise SequenceSetError: when C{data} does not match.
        """
        if isinstance(data, str):
            try:
                data = data.encode("ascii")
            except UnicodeEncodeError:
                raise SequenceSetError("non-ASCII sequence set") from None
        ranges = []
        for item in data.split(b","):
            first, colon, last = item.partition(b":")
            start = _parse_bound(first)
            ranges.append((start, _parse_bound(last) if colon else start))
        return cls(tuple(ranges))

    @classmethod
    def from_numbers(cls, numbers: Iterable[int]) -> SequenceSet:
        """The most compact set holding exactly C{numbers} (ascending ranges).

        @raise SequenceSetError: when C{numbers} is empty or out of range.
        """
        ranges: list[tuple[Bound, Bound]] = []
        for n in sorted(set(numbers)):
            last = ranges[-1][1] if ranges else None
            if last is not None and n == last + 1:
                ranges[-1] = (ranges[-1][0], n)
            else:
                ranges.append((n, n))
        return cls(tuple(ranges))

    def to_bytes(self) -> bytes:
        """Format as a ``sequence-set``; C{parse(s.to_bytes()) == s}."""
        parts = []
        for first, last in self.ranges:
            if first == last:
                parts.append(_format_bound(first))
            else:
                parts.append(f"{_format_bound(first)}:{_format_bound(last)}")
        return ",".join(parts).encode("ascii")

    def __str__(self) -> str:
        return self.to_bytes().decode("ascii")

    @property
    def uses_star(self) -> bool:
        """True when ``*`` appears in the set."""
        return any(b is None for pair in self.ranges for b in pair)

    def resolved(self, largest: int) -> list[tuple[int, int]]:
        """Ascending, merged, non-overlapping ``(low, high)`` ranges.

        ``*`` becomes C{largest}.  Numbers above C{largest} stay in: for UIDs,
        ``559:*`` with a largest UID of 500 covers 500 to 559 (RFC 3501
        §6.4.8); callers clip for sequence numbers.
        """
        spans = []
        for first, last in self.ranges:
            a = largest if first is None else first
            b = largest if last is None else last
            spans.append((min(a, b), max(a, b)))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for low, high in spans:
            if merged and low <= merged[-1][1] + 1:
                if high > merged[-1][1]:
                    merged[-1] = (merged[-1][0], high)
            else:
                merged.append((low, high))
        return merged

    def normalised(self, largest: int | None = None) -> SequenceSet:
        """The same set, ascending and merged.

        With C{largest}, ``*`` is replaced by it and numbers above it are
        dropped (sequence-number semantics); without, ``*`` is kept as the
        highest bound.

        @raise SequenceSetError: when nothing is left (every number above
            C{largest}).
        """
        if largest is None:
            star = MAX_NUMBER + 1
            spans = self.resolved(star)
            return SequenceSet(
                tuple(
                    (None if lo == star else lo, None if hi == star else hi)
                    for lo, hi in spans
                )
            )
        clipped = [
            (lo, min(hi, largest)) for lo, hi in self.resolved(largest) if lo <= largest
        ]
        return SequenceSet(tuple((lo, hi) for lo, hi in clipped if lo > 0))

    def is_within(self, largest: int) -> bool:
        """True when every number in the set is at most C{largest}.

        A sequence-number set naming a message that does not exist is an
        error (RFC 3501 §9, ``seq-number``); with an empty mailbox even ``*``
        names nothing.
        """
        spans = self.resolved(largest)
        return largest > 0 and spans[-1][1] <= largest

    def iter_numbers(self, largest: int) -> Iterator[int]:
        """The message sequence numbers in the set, ascending, up to C{largest}.

        ``*`` is C{largest}; numbers above it are skipped.
        """
        if largest <= 0:
            return
        for low, high in self.resolved(largest):
            if low > largest:
                break
            yield from range(low, min(high, largest) + 1)

    def iter_uids(self, uids: Sequence[int]) -> Iterator[int]:
        """The UIDs of C{uids} (ascending) that the set names, ascending.

        ``*`` is the largest UID in the mailbox; with no messages the set
        names nothing (RFC 3501 §6.4.8).
        """
        if not uids:
            return
        for low, high in self.resolved(uids[-1]):
            start = bisect.bisect_left(uids, low)
            stop = bisect.bisect_right(uids, high)
            for index in range(start, stop):
                yield uids[index]

    def contains(self, number: int, largest: int) -> bool:
        """Whether C{number} is in the set, ``*`` standing for C{largest}."""
        for low, high in self.resolved(largest):
            if low <= number <= high:
                return True
        return False
