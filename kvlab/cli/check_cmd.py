"""`kvlab check`: check a recorded history for linearizability and named anomalies."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from kvlab.chaos.checker import DEFAULT_TIME_LIMIT, CheckResult, check
from kvlab.chaos.history import HistoryError, read_history
from kvlab.cli import EXIT_OK, UsageError

# `kvlab check` gives exit codes 1 and 3 meanings of its own: a verdict, not a lookup.
EXIT_VIOLATION = 1
EXIT_UNKNOWN = 3
_SHOWN_UNKNOWN = 10  # unknown keys listed by name before "and N more"

_DESCRIPTION = """\
Check a history of client operations against a linearizable register per key.

FILE holds one JSON event per line, in real-time order:
  {"process": 3, "type": "invoke", "f": "write", "key": "k7", "value": "v12", "time": 1700}
type is invoke, ok, fail or info (outcome unknown); f is read, write or delete; time is in
nanoseconds. Each key is searched for an order of its operations that respects real time.
Also counted: stale reads (a read of a value certainly overwritten before it began) and lost
writes (an acknowledged write displaced by an older value, never seen again).
"""

_EPILOG = """\
exit status: 0 linearizable, 1 violation found, 3 unknown (time limit reached before a
verdict on some key), 2 usage error (missing or malformed FILE)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check a recorded history for consistency violations",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", metavar="FILE", help="history file (JSON lines); - for stdin")
    parser.add_argument(
        "--json", action="store_true", help="print the result as one JSON object"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        metavar="SECONDS",
        help=f"give up on keys still undecided after this long (default {DEFAULT_TIME_LIMIT:g})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.time_limit < 0:
        raise UsageError("--time-limit must not be negative")
    try:
        events = read_history(sys.stdin.buffer if args.file == "-" else args.file)
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror or exc}") from None
    except HistoryError as exc:
        raise UsageError(str(exc)) from None
    result = check(events, time_limit=args.time_limit)
    if args.json:
        sys.stdout.write(orjson.dumps(result.to_json()).decode() + "\n")
    else:
        sys.stdout.write(format_result(result))
    if result.linearizable is None:
        return EXIT_UNKNOWN
    return EXIT_OK if result.linearizable else EXIT_VIOLATION


def format_result(result: CheckResult) -> str:
    """The human summary: counts, the verdict, then each violation's operations."""
    verdict = {True: "linearizable", False: "NOT linearizable", None: "unknown"}
    lines = [
        f"operations: {result.ops} ({result.ok} ok, {result.fail} fail, {result.info} info)",
        f"lost writes: {result.lost_writes}",
        f"stale reads: {result.stale_reads}",
        f"verdict: {verdict[result.linearizable]}",
    ]
    if result.unknown_keys:
        shown = ", ".join(result.unknown_keys[:_SHOWN_UNKNOWN])
        more = len(result.unknown_keys) - _SHOWN_UNKNOWN
        lines.append(f"undecided keys: {shown}" + (f" and {more} more" if more > 0 else ""))
    for violation in result.violations:
        lines += ["", f"key {violation['key']}: {violation['reason']}"]
        lines += [_format_op(op) for op in violation["operations"]]
    return "\n".join(lines) + "\n"


def _format_op(op: dict[str, Any]) -> str:
    value = "absent" if op["value"] is None else repr(op["value"])
    if op["f"] == "read":
        action = f"read -> {value}" if op["status"] == "ok" else "read"
    elif op["f"] == "write":
        action = f"write {value}"
    else:
        action = "delete"
    end = "?" if op["complete_time"] is None else op["complete_time"]
    span = f"[{op['invoke_time']} .. {end}] ns"
    return f"  process {op['process']:<4} {action:<24} {op['status']:<4}  {span}"
