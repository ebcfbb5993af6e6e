"""The summary of a chaos run (simulated or real) and the checker's verdict on it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kvlab.chaos.checker import check as check_history
from kvlab.chaos.history import Event

COUNT_FIELDS = ("ops", "ok", "fail", "info")
# Under-replicated keys named in a summary, at most (the count is always there).
EXAMPLE_KEYS = 5
CHECK_FIELDS = ("lost_writes", "stale_reads", "linearizable", "violations")


def counts(events: Iterable[Event]) -> dict[str, int]:
    tally = {"ops": 0, "ok": 0, "fail": 0, "info": 0}
    for event in events:
        tally["ops" if event.type == "invoke" else event.type] += 1
    return tally


def summarize(events: list[Event], run: dict[str, Any], config: dict[str, Any],
              check: bool = True, time_limit: float = 30.0) -> dict[str, Any]:
    """Counts, the checker's fields (null when not checked), then the run's own fields."""
    summary: dict[str, Any] = counts(events)
    summary.update(dict.fromkeys(CHECK_FIELDS))
    extra = {name: value for name, value in run.items() if name not in COUNT_FIELDS}
    if check:
        verdict = check_history(events, time_limit=time_limit).to_json()
        summary.update({name: verdict[name] for name in CHECK_FIELDS})
        extra["unknown_keys"] = verdict.get("unknown_keys", [])
    summary.update(extra)
    summary["config"] = config
    return summary


def render_outcome(summary: dict[str, Any]) -> list[str]:
    """The operation counts and the verdict, for people."""
    lines = [f"ops {summary['ops']}  ok {summary['ok']}  fail {summary['fail']}  "
             f"info {summary['info']}"]
    if summary["linearizable"] is None and summary["violations"] is None:
        lines.append("checker: skipped (--no-check)")
        return lines
    verdict = {True: "yes", False: "NO", None: "unknown (time ran out)"}[summary["linearizable"]]
    lines.append(f"linearizable {verdict}  lost writes {summary['lost_writes']}  "
                 f"stale reads {summary['stale_reads']}")
    for violation in summary["violations"][:5]:
        lines.append(f"  {violation['key']}: {violation['reason']}")
        for op in violation["operations"]:
            lines.append(f"    process {op['process']} {op['f']} {op['value']!r} {op['status']} "
                         f"{_ms(op['invoke_time'])}..{_ms(op['complete_time'])} ms")
    if len(summary["violations"]) > 5:
        lines.append(f"  ... and {len(summary['violations']) - 5} more keys")
    return lines


def _ms(time_ns: int | None) -> str:
    return "?" if time_ns is None else f"{time_ns / 1e6:.3f}"


def sum_healing(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Nodes' healing counters (`Replica.snapshot`) added up: numbers summed, and maps of
    numbers (repairs by mechanism, hints held by target) summed key by key. Anything else
    (the last exchange with each peer) says nothing about the cluster as a whole."""
    total: dict[str, Any] = {}
    for snapshot in snapshots:
        for name, value in snapshot.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                total[name] = total.get(name, 0) + value
            elif isinstance(value, Mapping) and all(isinstance(v, int | float)
                                                    for v in value.values()):
                into = total.setdefault(name, {})
                for key, count in value.items():
                    into[key] = into.get(key, 0) + count
    return total


def render_healing(summary: dict[str, Any]) -> list[str]:
    """Quiescence, what is still under-replicated after it, and what healing did."""
    lines = []
    if summary.get("quiesce_s") is not None:
        count = summary["under_replicated"]
        line = (f"after {summary['quiesce_s']:g} s of quiescence: {count} under-replicated "
                f"key{'' if count == 1 else 's'}")
        examples = summary.get("under_replicated_keys") or []
        if examples:
            more = f", ... ({count - len(examples)} more)" if count > len(examples) else ""
            line += f" ({', '.join(examples)}{more})"
        lines.append(line)
    healing = summary.get("healing")
    if healing:
        repaired = healing.get("repaired", {})
        lines.append(
            f"healing: hints stored {healing.get('hints_stored', 0)}, replayed "
            f"{healing.get('hints_replayed', 0)}, expired {healing.get('hints_expired', 0)}; "
            f"anti-entropy rounds {healing.get('ae_rounds', 0)}; repaired by read repair "
            f"{repaired.get('read_repair', 0)}, hints {repaired.get('hint', 0)}, "
            f"anti-entropy {repaired.get('anti_entropy', 0)}")
    return lines
