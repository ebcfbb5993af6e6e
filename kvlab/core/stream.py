"""Streaming a range to its new owner: which keys, in what order, and how far it got.

A membership change tells a current replica (the source) to send a joining replica (the
target) every key it holds in some arcs of the ring. The source sends them in ring order,
in batches bounded by count and bytes, one batch in flight at a time and, if asked, no
faster than a byte rate; the target acknowledges each batch once it is durable. Progress
is the ring position of the last key acknowledged, so a stream cut short (the source or
the target restarted, a link broke) is resumed from there, not from the start: keys
already sent are not sent again, and any written since reach the target anyway, since
during a move every write goes to the new owners too.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

from kvlab.core.ring import RING_SIZE


class Arcs:
    """A set of ring arcs, each (start, end]: an arc with start >= end wraps past zero."""

    __slots__ = ("_starts", "_ends")

    def __init__(self, arcs: Iterable[tuple[int, int]]) -> None:
        spans: list[tuple[int, int]] = []  # [lo, hi] inclusive, not wrapping
        for start, end in arcs:
            if not (0 <= start < RING_SIZE and 0 <= end < RING_SIZE):
                raise ValueError(f"arc ({start}, {end}] is off the ring")
            if start < end:
                spans.append((start + 1, end))
            else:  # wraps: (start, top] and [0, end]
                if start + 1 < RING_SIZE:
                    spans.append((start + 1, RING_SIZE - 1))
                spans.append((0, end))
        spans.sort()
        self._starts = [lo for lo, _ in spans]
        self._ends = [hi for _, hi in spans]

    def covered(self, upto: int) -> float:
        """The share of these arcs at ring positions up to `upto`: how far a stream, which
        goes in ring order, has got (keys are spread evenly over the ring)."""
        total = sum(hi - lo + 1 for lo, hi in zip(self._starts, self._ends))
        if not total:
            return 1.0
        done = sum(max(0, min(hi, upto) - lo + 1) for lo, hi in zip(self._starts, self._ends))
        return done / total

    def __contains__(self, point: int) -> bool:
        i = bisect_right(self._starts, point) - 1
        return i >= 0 and point <= self._ends[i]


class OutboundStream:
    """One stream this replica is the source of."""

    __slots__ = ("xid", "attempt", "owner", "target", "_keys", "_pos", "keys", "bytes", "cursor",
                 "flight", "flight_keys", "flight_bytes", "flight_cursor", "deadline_ms",
                 "next_at_ms")

    def __init__(self, xid: int, owner: str, target: str,
                 keys: list[tuple[int, str]]) -> None:
        self.xid = xid  # the order's number, as the committer knows it
        self.attempt = 0  # which order of it this is (echoed in every report)
        self.owner = owner  # who ordered it, and hears its progress
        self.target = target
        self._keys = sorted(keys)  # (ring position, key)
        self._pos = 0
        self.keys = 0  # records the target made durable
        self.bytes = 0
        self.cursor = -1  # ring position of the last of them
        self.flight: int | None = None  # the local xid of the batch in flight
        self.flight_keys = 0
        self.flight_bytes = 0
        self.flight_cursor = -1
        self.deadline_ms = 0
        self.next_at_ms = 0  # the next batch not before (the byte rate)

    @property
    def done(self) -> bool:
        return self._pos >= len(self._keys) and self.flight is None

    def next_keys(self, limit: int) -> list[tuple[int, str]]:
        """The next `limit` keys to send, taken off the queue."""
        chunk = self._keys[self._pos:self._pos + limit]
        self._pos += len(chunk)
        return chunk

    def put_back(self, count: int) -> None:
        """The last `count` keys taken were not sent (a batch reached its byte bound)."""
        self._pos -= count

    def acknowledged(self) -> None:
        self.keys += self.flight_keys
        self.bytes += self.flight_bytes
        self.cursor = max(self.cursor, self.flight_cursor)
        self.flight = None
