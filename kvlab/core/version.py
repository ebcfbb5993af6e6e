"""Versions: hybrid logical clock timestamps with the coordinator's id as tie-breaker.

A `Version` orders field by field (physical ms, logical counter, coordinator id), which makes
it a total order across coordinators. The hybrid clock keeps versions monotonic even when the
wall clock steps back, and pulls forward past any version it observes.
"""

from __future__ import annotations

import msgspec


class Version(msgspec.Struct, frozen=True, order=True, array_like=True, gc=False):
    physical: int
    logical: int
    coordinator: str

    def __str__(self) -> str:
        return f"{self.physical}.{self.logical}@{self.coordinator}"

    @classmethod
    def parse(cls, text: str) -> Version:
        """Inverse of `str(version)`; raises ValueError on anything else."""
        stamp, sep, coordinator = text.partition("@")
        physical, dot, logical = stamp.partition(".")
        if not sep or not dot or not coordinator:
            raise ValueError(f"not a version: {text!r}")
        return cls(int(physical), int(logical), coordinator)


ZERO = Version(0, 0, "")


# How far ahead of a node's own clock a version may be before it is refused (replicas) or
# ignored (clocks): one bad clock must not drag the whole cluster into its future.
MAX_AHEAD_MS = 60_000


def too_far_ahead(version: Version, now_ms: int, max_ahead_ms: int) -> bool:
    return version.physical - now_ms > max_ahead_ms


class HybridClock:
    """A hybrid logical clock (Kulkarni et al.) for one coordinator. Time is passed in."""

    __slots__ = ("node", "max_ahead_ms", "_physical", "_logical")

    def __init__(self, node: str, max_ahead_ms: int = MAX_AHEAD_MS) -> None:
        self.node = node
        self.max_ahead_ms = max_ahead_ms
        self._physical = 0
        self._logical = 0

    @property
    def high_water_ms(self) -> int:
        """The physical part of the newest version issued or observed."""
        return self._physical

    def restore(self, high_water_ms: int) -> None:
        """Start above a high-water mark saved by an earlier run of this coordinator.

        Without it a restarted coordinator whose wall clock went back would stamp versions
        below its own earlier writes.
        """
        # The earlier run may have issued (high_water_ms, any counter): start past all of them.
        if high_water_ms + 1 > self._physical:
            self._physical, self._logical = high_water_ms + 1, 0

    def tick(self, now_ms: int) -> Version:
        """A fresh version, greater than every version this clock issued or observed."""
        if now_ms > self._physical:
            self._physical, self._logical = now_ms, 0
        else:
            self._logical += 1
        return Version(self._physical, self._logical, self.node)

    def observe(self, seen: Version, now_ms: int) -> None:
        """Move past a version seen from elsewhere, so later ticks order after it.

        A version more than `max_ahead_ms` ahead of `now_ms` comes from a broken clock: it
        is ignored, or it would pull this clock (and every later write) into its future.
        """
        physical = seen.physical  # compared field by field: this runs for every reply
        if physical - now_ms > self.max_ahead_ms:
            return
        if physical > self._physical or (
                physical == self._physical and seen.logical > self._logical):
            self._physical, self._logical = physical, seen.logical
