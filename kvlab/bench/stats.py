"""The pure half of `kvlab bench`: the read:write mix, latencies, outcome tallies and the report.

Nothing here does IO or reads a clock, so every number the report prints can be unit-tested.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

NOT_FOUND = "not_found"
TIMEOUT = "timeout"
CONNECTION = "connection"


@dataclass(frozen=True)
class Mix:
    """How many reads per how many writes, e.g. 9:1."""

    reads: int
    writes: int

    @classmethod
    def parse(cls, text: str) -> Mix:
        """Parse `READ:WRITE` (two non-negative integers, not both zero); ValueError otherwise."""
        parts = text.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"mix must be READ:WRITE with two whole numbers, got {text!r}")
        reads, writes = (int(p) for p in parts)
        if reads + writes == 0:
            raise ValueError("mix 0:0 has no operations")
        return cls(reads, writes)

    def pattern(self) -> tuple[bool, ...]:
        """One cycle of operations, True for a read, with the writes spread evenly.

        Operation i of a run is `pattern[i % len(pattern)]`, so a run of whole cycles has the
        exact split asked for, whichever worker happened to send which operation.
        """
        g = math.gcd(self.reads, self.writes)
        reads, total = self.reads // g, (self.reads + self.writes) // g
        return tuple((i + 1) * reads // total > i * reads // total for i in range(total))

    def __str__(self) -> str:
        return f"{self.reads}:{self.writes}"


def outcome(status: int, is_read: bool) -> str | None:
    """Classify one HTTP answer: None for success, NOT_FOUND for a read of a missing key, else
    the error kind `http_<status>`. A missing key is the store answering correctly, not a fault."""
    if 200 <= status < 300:
        return None
    if status == 404 and is_read:
        return NOT_FOUND
    return f"http_{status}"


def percentile(ordered: list[float], pct: float) -> float:
    """The nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = math.ceil(pct / 100 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


@dataclass(frozen=True)
class LatencySummary:
    """Latency percentiles in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: array | list[float]) -> LatencySummary:
        """Summarise raw latencies given in seconds."""
        ordered = sorted(seconds)
        return cls(
            *(round(percentile(ordered, p) * 1000, 3) for p in (50, 90, 99, 100)),
        )


@dataclass
class Tally:
    """What happened to the operations of one run.

    Latencies are kept exactly, one double each (8 bytes), and sorted once at the end: appending
    costs ~50 ns where an HDR histogram's Python `record_value` costs ~700 ns, and an hour at
    10,000 ops/s is under 300 MB. Only operations that got an HTTP answer have a latency.
    """

    reads: int = 0
    writes: int = 0
    not_found: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: array = field(default_factory=lambda: array("d"))

    @property
    def ops(self) -> int:
        return self.reads + self.writes

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def add(self, is_read: bool, kind: str | None, seconds: float | None) -> None:
        """Count one finished operation; `kind` is None, NOT_FOUND or an error kind."""
        if is_read:
            self.reads += 1
        else:
            self.writes += 1
        if seconds is not None:
            self.latencies.append(seconds)
        if kind is None:
            return
        if kind == NOT_FOUND:
            self.not_found += 1
        else:
            self.errors[kind] += 1


@dataclass(frozen=True)
class Report:
    """The result of one run, as printed by `kvlab bench` and `kvlab bench --json`."""

    url: str
    api: str
    concurrency: int
    mix: str
    duration_s: float
    ops: int
    reads: int
    writes: int
    not_found: int
    errors: dict[str, int]
    latency: LatencySummary
    settings: dict[str, Any] = field(default_factory=dict)
    preload: dict[str, Any] | None = None

    @classmethod
    def of(
        cls, tally: Tally, duration_s: float, *, url: str, api: str, concurrency: int, mix: Mix,
        settings: dict[str, Any] | None = None, preload: dict[str, Any] | None = None,
    ) -> Report:
        return cls(
            url=url, api=api, concurrency=concurrency, mix=str(mix), duration_s=duration_s,
            ops=tally.ops, reads=tally.reads, writes=tally.writes, not_found=tally.not_found,
            errors=dict(sorted(tally.errors.items())), latency=LatencySummary.of(tally.latencies),
            settings=dict(settings or {}), preload=preload,
        )

    @property
    def ops_per_sec(self) -> float:
        return self.ops / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object: flat numbers first, then the run's settings."""
        out: dict[str, Any] = {
            "ops_per_sec": round(self.ops_per_sec, 1),
            "p50_ms": self.latency.p50_ms,
            "p90_ms": self.latency.p90_ms,
            "p99_ms": self.latency.p99_ms,
            "max_ms": self.latency.max_ms,
            "errors": self.errors,
            "error_count": sum(self.errors.values()),
            "ops": self.ops,
            "reads": self.reads,
            "writes": self.writes,
            "not_found": self.not_found,
            "duration_s": round(self.duration_s, 3),
            "concurrency": self.concurrency,
            "url": self.url,
            "api": self.api,
            "mix": self.mix,
        }
        out.update(self.settings)
        if self.preload is not None:
            out["preload"] = self.preload
        return out

    def render(self) -> str:
        """The human report."""
        lat = self.latency
        lines = [
            f"target       {self.url} ({self.api} API), concurrency {self.concurrency},"
            f" mix {self.mix}",
        ]
        if self.preload is not None:
            lines.append(
                f"preload      {self.preload['keys']:,} keys in {self.preload['duration_s']:.2f}s"
                f", {self.preload['errors']:,} errors"
            )
        if self.ops == 0 and self.preload is not None:
            return "\n".join(lines)  # a preload-only run measured nothing more
        lines += [
            f"operations   {self.ops:,} in {self.duration_s:.2f}s"
            f" ({self.reads:,} reads, {self.writes:,} writes)",
            f"throughput   {self.ops_per_sec:,.0f} ops/s",
            f"latency ms   p50 {lat.p50_ms:.2f}  p90 {lat.p90_ms:.2f}  p99 {lat.p99_ms:.2f}"
            f"  max {lat.max_ms:.2f}",
            f"not found    {self.not_found:,} reads of missing keys (not errors)",
        ]
        if self.errors:
            kinds = ", ".join(f"{kind} {count:,}" for kind, count in self.errors.items())
            lines.append(f"errors       {sum(self.errors.values()):,}: {kinds}")
        else:
            lines.append("errors       none")
        return "\n".join(lines)


def progress_line(
    label: str, elapsed: float, done: int, errors: int, fraction: float | None
) -> str:
    """One status line for stderr: elapsed time, rate so far, errors, and how far along."""
    rate = done / elapsed if elapsed > 0 else 0.0
    line = f"{label} {elapsed:6.1f}s  {done:>10,} ops  {rate:>9,.0f} ops/s  {errors:,} errors"
    if fraction is not None:
        line += f"  {min(fraction, 1.0):4.0%}"
    return line
