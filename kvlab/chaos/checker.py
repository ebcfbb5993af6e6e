"""Check a whole history: per-key linearizability within a budget, and the anomaly counts.

Linearizability is compositional (Herlihy & Wing): a history of independent registers is
linearizable iff each key's sub-history is. So each key is searched on its own, which keeps
every search small, and a failing key is then shrunk to a handful of operations to blame.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kvlab.chaos.anomalies import find_anomalies
from kvlab.chaos.history import Event, Operation, iter_operations
from kvlab.chaos.linearizability import Budget, blame, linearizable

DEFAULT_TIME_LIMIT = 10.0


@dataclass(slots=True)
class CheckResult:
    """What `check` found. Flat and JSON-friendly: `to_json()` is merged into run summaries.

    `linearizable` is True when every key passed, False when some key failed, and None when
    none failed but some ran out of budget (they are listed in `unknown_keys`). Each entry of
    `violations` is `{"key", "operations", "reason"}`, the operations as `Operation.to_json()`
    dicts in invoke order.
    """

    ops: int = 0
    ok: int = 0
    fail: int = 0
    info: int = 0
    lost_writes: int = 0
    stale_reads: int = 0
    linearizable: bool | None = True
    violations: list[dict[str, Any]] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A plain dict with the fields above."""
        return asdict(self)


def check(
    history: Iterable[Event] | Iterable[Operation],
    *,
    time_limit: float = DEFAULT_TIME_LIMIT,
    max_states: int | None = None,
) -> CheckResult:
    """Check a history (events, or operations already paired) for consistency.

    `time_limit` (seconds) bounds the whole check; `max_states` bounds the configurations
    one key's search may visit. A key that exceeds either is reported unknown, never hung on.
    """
    deadline = time.monotonic() + time_limit
    operations = _operations(history)
    result = CheckResult(ops=len(operations))
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in operations:
        if op.status == "ok":
            result.ok += 1
        elif op.status == "fail":
            result.fail += 1
        else:
            result.info += 1
        by_key[op.key].append(op)

    # Keys with evidence of an anomaly are settled without a search: that is where a search
    # is slowest, having to exhaust every order before it can say no.
    evidence: dict[str, tuple[Operation, ...]] = {}
    for key, ops in by_key.items():
        anomalies = find_anomalies(ops)
        result.stale_reads += anomalies.stale_reads
        result.lost_writes += anomalies.lost_writes
        if anomalies.evidence:
            evidence[key] = anomalies.evidence
    unsettled = {key: ops for key, ops in by_key.items() if key not in evidence}
    verdicts = _search_keys(unsettled, deadline, max_states)
    verdicts.update(dict.fromkeys(evidence, False))
    for key, verdict in sorted(verdicts.items()):
        if verdict is None:
            result.unknown_keys.append(key)
        elif not verdict:
            suspects = evidence.get(key, by_key[key])
            result.violations.append(_violation(key, suspects, Budget(deadline, max_states)))
    if result.violations:
        result.linearizable = False
    elif result.unknown_keys:
        result.linearizable = None
    return result


def _operations(history: Iterable[Event] | Iterable[Operation]) -> list[Operation]:
    items = list(history)
    if items and isinstance(items[0], Event):
        return list(iter_operations(items))  # type: ignore[arg-type]
    return items  # type: ignore[return-value]


def _search_keys(
    by_key: dict[str, list[Operation]], deadline: float, max_states: int | None
) -> dict[str, bool | None]:
    """Search every key, sharing the time so that one hard key cannot starve the rest.

    Small keys go first, each allowed an even share of what is left (time a key does not use
    rolls over); keys that ran out of time then split whatever remains.
    """
    verdicts: dict[str, bool | None] = {}
    timed_out: list[str] = []
    keys = sorted(by_key, key=lambda key: len(by_key[key]))
    for position, key in enumerate(keys):
        now = time.monotonic()
        share = now + (deadline - now) / (len(keys) - position)
        verdicts[key] = linearizable(by_key[key], Budget(share, max_states))
        if verdicts[key] is None and time.monotonic() >= share:
            timed_out.append(key)
    for position, key in enumerate(timed_out):
        now = time.monotonic()
        if now >= deadline:
            break
        share = now + (deadline - now) / (len(timed_out) - position)
        verdicts[key] = linearizable(by_key[key], Budget(share, max_states))
    return verdicts


def _violation(key: str, ops: Sequence[Operation], budget: Budget) -> dict[str, Any]:
    """Blame the fewest operations of a failing key that still cannot be ordered."""
    blamed = blame(ops, budget)
    blamed.sort(key=lambda op: op.invoke_time)
    if len(blamed) == 1 and blamed[0].f == "read":
        reason = f"read returned {blamed[0].value!r} before anything wrote it"
    else:
        reason = f"no order of these {len(blamed)} operations fits real time and one register"
    if budget.expired():
        reason += " (time ran out before the set was made minimal)"
    return {"key": key, "operations": [op.to_json() for op in blamed], "reason": reason}
