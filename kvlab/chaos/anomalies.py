"""Stale reads and lost writes: named anomalies that real-time order alone proves.

Both rest on one observation. Call the *sources* of a read's result the operations that could
have produced it: the ok or unknown-outcome writes of that value, and for an absent result the
deletes and the initial (absent) state, leaving out any invoked after the read completed. If
some ok write or delete `W` of another value was invoked after every source had completed, and
completed before the read was invoked, then `W` falls between each source and the read in any
linearization, so the read cannot have returned that result. `W` *witnesses* the read.

- A **stale read** is an ok read with a witness: its value was certainly overwritten before
  the read began. An unknown-outcome source has no completion, so it is never certainly
  overwritten, and a read of a value nothing wrote has no sources; neither is counted (the
  linearizability search still catches the latter).
- A **lost write** is an ok write or delete that witnesses some read (a read that began after
  it was acknowledged returned something certainly older), and whose value no ok read invoked
  after the first such read completed returned: the acknowledged value, once displaced, never
  came back.

Both are sound whether or not write values are unique: each is a proof of non-linearizability.
Uniqueness only makes the "never came back" part of a lost write exact; with repeated values, a
later read may credit another write of the same value, which can only hide a lost write.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from kvlab.chaos.history import Operation

_NEVER = float("inf")  # the completion time of an unknown-outcome source


@dataclass(frozen=True, slots=True)
class Anomalies:
    """Counts for one key or a whole history."""

    stale_reads: int = 0
    lost_writes: int = 0

    def __add__(self, other: Anomalies) -> Anomalies:
        return Anomalies(
            self.stale_reads + other.stale_reads, self.lost_writes + other.lost_writes
        )


class _Latest:
    """Answers: of the operations invoked before time t, the latest completion?"""

    def __init__(self, spans: list[tuple[int, float]]) -> None:
        spans.sort()
        self.invokes = [invoke for invoke, _ in spans]
        self.latest: list[float] = []
        best = -_NEVER
        for _, complete in spans:
            best = max(best, complete)
            self.latest.append(best)

    def before(self, time: int) -> float:
        count = bisect_left(self.invokes, time)
        return self.latest[count - 1] if count else -_NEVER


def find_anomalies(ops: Sequence[Operation]) -> Anomalies:
    """Count stale reads and lost writes among one key's operations (see module docstring)."""
    spans_by_value: dict[str | None, list[tuple[int, float]]] = defaultdict(list)
    for op in ops:
        if op.f != "read" and op.status != "fail":
            complete = _NEVER if op.complete_time is None else op.complete_time
            spans_by_value[op.value].append((op.invoke_time, complete))
    sources = {value: _Latest(spans) for value, spans in spans_by_value.items()}

    # Ok writes and deletes by completion, with a running maximum of their invoke times: a
    # read has a witness iff some write completing before it began was invoked late enough.
    writes = sorted(
        (op for op in ops if op.f != "read" and op.status == "ok"),
        key=lambda op: op.complete_time,
    )
    write_completes = [op.complete_time for op in writes]
    latest_invoke: list[float] = []
    running = -_NEVER
    for op in writes:
        running = max(running, op.invoke_time)
        latest_invoke.append(running)

    reads = [op for op in ops if op.f == "read" and op.status == "ok"]
    last_read_of: dict[str | None, int] = {}
    for read in reads:
        last_read_of[read.value] = max(last_read_of.get(read.value, read.invoke_time), read.invoke_time)

    stale = 0
    displaced_at: dict[int, int] = {}  # write index -> earliest completion of a read it witnesses
    for read in reads:
        value_sources = sources.get(read.value)
        if value_sources is not None:
            settled = value_sources.before(read.complete_time)
        elif read.value is None:
            settled = -_NEVER  # only the initial state could explain it
        else:
            continue  # nothing wrote this value: not a stale read
        earlier = bisect_left(write_completes, read.invoke_time)
        if not earlier or latest_invoke[earlier - 1] <= settled:
            continue
        stale += 1
        for index in range(earlier):
            if writes[index].invoke_time > settled:
                seen = displaced_at.get(index, read.complete_time)
                displaced_at[index] = min(seen, read.complete_time)

    lost = sum(
        last_read_of.get(writes[index].value, -_NEVER) <= time
        for index, time in displaced_at.items()
    )
    return Anomalies(stale, lost)
