"""The dashboard's built-in workload: a steady, rate-limited mix of reads and writes.

It drives any object with AsyncKV's `read(key, r=)` and `set(key, value, w=)`, counts what
came back (a missing key is an answer, not an error) and keeps per-second throughput and p99
latency for the sparklines, so killing a node shows what clients see.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kvlab.client import KeyNotFound, KVError
from kvlab.tui.source import TrafficSettings, TrafficStats

KEY_SPACE = 200
MAX_IN_FLIGHT = 64
HISTORY_S = 60
TICK_S = 0.01


class KVLike(Protocol):
    async def read(self, key: str, r: int | None = None) -> object: ...

    async def set(self, key: str, value: str, w: int | None = None) -> object: ...

    async def close(self) -> None: ...


def error_kind(exc: BaseException) -> str | None:
    """How a failed operation is counted: None for not_found (a correct answer)."""
    if isinstance(exc, KeyNotFound):
        return None
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, KVError):
        return {0: "connection", 503: "unavailable", 504: "timeout"}.get(exc.status, "other")
    return "other"


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass
class _Second:
    """What completed within one wall-clock second."""

    at: int
    done: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)


class TrafficGenerator:
    """Issue `rate` operations a second against `kv` until stopped; never more than
    MAX_IN_FLIGHT at once (a slow cluster gets fewer requests, not a growing queue)."""

    def __init__(self, kv: KVLike, clock: Callable[[], float] = time.monotonic,
                 seed: int | None = None) -> None:
        self._kv = kv
        self._clock = clock
        self._rng = random.Random(seed)
        self.settings = TrafficSettings()
        self._task: asyncio.Task | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._reset()

    def _reset(self) -> None:
        self._ok = 0
        self._not_found = 0
        self._errors: Counter[str] = Counter()
        self._seconds: deque[_Second] = deque(maxlen=HISTORY_S + 1)
        self._written = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, settings: TrafficSettings) -> None:
        """Start, or change the settings of the running workload (counters carry on)."""
        self.settings = settings
        if not self.running:
            self._reset()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="traffic")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = list(self._in_flight)
        for op in pending:
            op.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        """Stop, and close the client (the generator owns it)."""
        await self.stop()
        await self._kv.close()

    async def _run(self) -> None:
        began = self._clock()
        issued = 0
        while True:
            due = int((self._clock() - began) * self.settings.rate) - issued
            if due > 0:
                room = MAX_IN_FLIGHT - len(self._in_flight)
                for _ in range(min(due, room)):
                    op = asyncio.get_running_loop().create_task(self._one())
                    self._in_flight.add(op)
                    op.add_done_callback(self._in_flight.discard)
                # Ops that found no room are dropped, not queued: the rate is an upper bound.
                issued += due
            await asyncio.sleep(TICK_S)

    async def _one(self) -> None:
        settings = self.settings
        key = f"key-{self._rng.randrange(KEY_SPACE):03d}"
        start = self._clock()
        kind: str | None = None
        try:
            if self._rng.random() < settings.read_fraction:
                await self._kv.read(key, r=settings.r)
            else:
                self._written += 1
                await self._kv.set(key, f"v{self._written}", w=settings.w)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is counted by kind, none stops the workload
            kind = error_kind(exc)
            if kind is None:
                self._not_found += 1
        else:
            self._ok += 1
        if kind is not None:
            self._errors[kind] += 1
        self._record(start, failed=kind is not None)

    def _record(self, start: float, failed: bool) -> None:
        now = self._clock()
        second = int(now)
        if not self._seconds or self._seconds[-1].at != second:
            self._seconds.append(_Second(second))
        bucket = self._seconds[-1]
        bucket.done += 1
        bucket.failed += failed
        bucket.latencies.append((now - start) * 1000)

    def stats(self) -> TrafficStats:
        """The counters, with per-second series up to the last complete second."""
        now = int(self._clock())
        by_second = {s.at: s for s in self._seconds}
        oldest = min(by_second, default=now)
        span = range(max(oldest, now - HISTORY_S), now)  # excludes the second in progress
        seconds = [by_second.get(t, _Second(t)) for t in span]
        last = seconds[-1] if seconds else _Second(now)
        return TrafficStats(
            running=self.running,
            settings=self.settings,
            ops_per_s=float(last.done),
            ok=self._ok,
            not_found=self._not_found,
            errors=dict(self._errors),
            p99_ms=p99(last.latencies),
            latency_ms=tuple(p99(s.latencies) or 0.0 for s in seconds),
            throughput=tuple(float(s.done) for s in seconds),
            error_rate=tuple(float(s.failed) for s in seconds),
        )
