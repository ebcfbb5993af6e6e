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

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from kvlab.chaos.history import Operation

_NEVER = float("inf")  # the completion time of an unknown-outcome source


@dataclass(frozen=True, slots=True)
class Anomalies:
    """What one key's history shows.

    `evidence` is a handful of operations that on their own prove the key non-linearizable,
    or empty: the first stale read with its witness and the writes that could explain it, or
    a read of a value that nothing wrote.
    """

    stale_reads: int = 0
    lost_writes: int = 0
    evidence: tuple[Operation, ...] = ()


class _Latest:
    """Answers: of the operations invoked by time t, the latest completion?"""

    def __init__(self, spans: list[tuple[int, float]]) -> None:
        spans.sort()
        self.invokes = [invoke for invoke, _ in spans]
        self.latest: list[float] = []
        best = -_NEVER
        for _, complete in spans:
            best = max(best, complete)
            self.latest.append(best)

    def before(self, time: int) -> float:
        count = bisect_right(self.invokes, time)  # a tie is concurrent: it may come first
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
    # value -> the latest invoke of a read that returned it
    last_read_of = {read.value: read.invoke_time for read in sorted(reads, key=_invoked)}

    stale = 0
    evidence: tuple[Operation, ...] = ()
    displaced_at: dict[int, int] = {}  # write index -> earliest completion of a read it witnesses
    for read in reads:
        value_sources = sources.get(read.value)
        # An absent result can always come from the initial state, which settles at once.
        settled = value_sources.before(read.complete_time) if value_sources else -_NEVER
        if settled == -_NEVER and read.value is not None:
            evidence = evidence or (read,)  # nothing wrote this value in time: not stale
            continue
        earlier = bisect_left(write_completes, read.invoke_time)
        if not earlier or latest_invoke[earlier - 1] <= settled:
            continue
        stale += 1
        witnesses = [index for index in range(earlier) if writes[index].invoke_time > settled]
        for index in witnesses:
            seen = displaced_at.get(index, read.complete_time)
            displaced_at[index] = min(seen, read.complete_time)
        if len(evidence) < 2:
            evidence = (read, writes[witnesses[0]], *_sources(ops, read))

    lost = sum(
        last_read_of.get(writes[index].value, -_NEVER) <= time
        for index, time in displaced_at.items()
    )
    return Anomalies(stale, lost, evidence)


def _invoked(op: Operation) -> int:
    return op.invoke_time


def _sources(ops: Sequence[Operation], read: Operation) -> list[Operation]:
    """The writes or deletes that could have produced `read`'s value."""
    return [
        op
        for op in ops
        if op.f != "read"
        and op.status != "fail"
        and op.value == read.value
        and op.invoke_time <= read.complete_time
    ]
