"""Virtual time: an integer microsecond clock and the queue of events waiting for it.

Events that fall due at the same microsecond run in the order they were scheduled (the
heap is keyed by (time, sequence number)), so a run never depends on how Python compares
the callbacks, and one seed replays one run exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from itertools import count

US_PER_MS = 1000


class EventQueue:
    """A virtual clock (`now`, in microseconds) and the events scheduled on it."""

    __slots__ = ("now", "heap", "seq", "_halted")

    def __init__(self) -> None:
        self.now = 0
        self._halted = False
        # Entries are (time, sequence number, fn, args). Hot paths in this package may push
        # onto `heap` directly, with `next(seq)` and a time no earlier than `now`.
        self.heap: list[tuple[int, int, Callable[..., object], tuple]] = []
        self.seq = count()

    def at(self, when_us: int, fn: Callable[..., object], *args: object) -> None:
        """Call `fn(*args)` at virtual time `when_us` (never earlier than now)."""
        heappush(self.heap, (when_us if when_us > self.now else self.now, next(self.seq), fn,
                             args))

    def after(self, delay_us: int, fn: Callable[..., object], *args: object) -> None:
        """Call `fn(*args)` `delay_us` (>= 0) microseconds from now."""
        heappush(self.heap, (self.now + delay_us, next(self.seq), fn, args))

    def run_until(self, until_us: int) -> int:
        """Run every event due at or before `until_us`, then set the clock to `until_us`.

        If an event calls `halt()`, return right after it instead (the clock then stays at
        that event's time). Returns how many events ran.
        """
        heap = self.heap
        ran = 0
        self._halted = False
        while heap and heap[0][0] <= until_us:
            when, _, fn, args = heappop(heap)
            self.now = when
            fn(*args)
            ran += 1
            if self._halted:
                return ran
        if until_us > self.now:
            self.now = until_us
        return ran

    def halt(self) -> None:
        """Make the running `run_until` return after the current event."""
        self._halted = True

    def next_time(self) -> int | None:
        """When the next event is due, or None if nothing is scheduled."""
        return self.heap[0][0] if self.heap else None

    def __len__(self) -> int:
        return len(self.heap)


class LocalClock:
    """A simulated process's own clock: virtual time, plus the epoch, plus its skew.

    The base of the processes (nodes, coordinators): `now_ms()` is what their core is
    told. `clock` is the shared `EventQueue`; `_offset_us` is epoch + skew, added to it.
    """

    clock: EventQueue
    _epoch_us: int
    _offset_us: int

    def _set_clock(self, clock: EventQueue, epoch_ms: int, skew_us: int = 0) -> None:
        self.clock = clock
        self._epoch_us = epoch_ms * US_PER_MS
        self._offset_us = self._epoch_us + skew_us

    def now_ms(self) -> int:
        """This process's own idea of the time (epoch and skew included)."""
        return (self.clock.now + self._offset_us) // US_PER_MS

    @property
    def skew_us(self) -> int:
        """How far this process's clock runs ahead of true time (negative: behind)."""
        return self._offset_us - self._epoch_us

    @skew_us.setter
    def skew_us(self, skew: int) -> None:
        self._offset_us = self._epoch_us + skew
        self._skewed()

    def _skewed(self) -> None:
        """Called after the skew changed (a process with timers re-arms them)."""
