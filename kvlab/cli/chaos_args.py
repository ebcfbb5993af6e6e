"""Options shared by `kvlab sim` and `kvlab chaos`: the workload, the nemesis, the report."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from kvlab.chaos.history import Event, write_history
from kvlab.chaos.nemesis import parse_kinds
from kvlab.chaos.workload import Mix
from kvlab.cli import UsageError
from kvlab.cli.options import fraction, non_negative, non_negative_float, positive, positive_float


def add_workload(p: argparse.ArgumentParser, ops: int | None, think_ms: float) -> None:
    work = p.add_argument_group("workload")
    work.add_argument("--ops", type=non_negative, default=ops,
                      help="operations in all (default %(default)s)")
    work.add_argument("--clients", type=positive, default=10,
                      help="concurrent clients, one operation outstanding each (default 10)")
    work.add_argument("--keys", type=positive, default=20, help="key space k0..k{K-1} (default 20)")
    work.add_argument("--reads", type=fraction, default=0.5,
                      help="fraction of reads (default 0.5)")
    work.add_argument("--deletes", type=fraction, default=0.1,
                      help="fraction of deletes; the rest are writes (default 0.1)")
    work.add_argument("--think-ms", type=non_negative_float, default=think_ms,
                      help="mean client pause between operations (default %(default)s)")


def add_faults_and_output(p: argparse.ArgumentParser, kinds: Sequence[str]) -> None:
    def parse(text: str) -> tuple[str, ...]:
        try:
            chosen = parse_kinds(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        unsupported = [k for k in chosen if k not in kinds]
        if unsupported:
            raise argparse.ArgumentTypeError(
                f"{', '.join(unsupported)} not available here (choose from {', '.join(kinds)})")
        return chosen

    out = p.add_argument_group("faults and output")
    out.add_argument("--nemesis", type=parse, default=(), metavar="KINDS",
                     help=f"comma-separated faults to inject: {','.join(kinds)} "
                          "(default: none)")
    out.add_argument("--nemesis-nodes", type=positive, default=1, metavar="K",
                     help="nodes a kill, pause or wipe takes at once (default 1; 2 takes two "
                          "of a key's three replicas, what a sloppy quorum is for)")
    out.add_argument("--history", metavar="FILE", help="write the history as JSON lines to FILE")
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    out.add_argument("--no-check", action="store_true",
                     help="skip the consistency checker (its fields are null)")
    out.add_argument("--check-time-limit", type=positive_float, default=30.0, metavar="SECONDS",
                     help="wall-clock budget for the linearizability search (default 30); "
                          "keys it cannot settle in time are reported unknown")


def mix_from_args(args: argparse.Namespace) -> Mix:
    """The workload's shape from `add_workload`'s options; UsageError if they don't fit."""
    if args.reads + args.deletes > 1:
        raise UsageError("--reads and --deletes must add up to at most 1")
    return Mix(args.clients, args.keys, args.reads, args.deletes, args.think_ms)


def save_history(path: str | None, events: list[Event]) -> None:
    if not path:
        return
    try:
        with open(path, "wb") as file:
            write_history(events, file)
    except OSError as exc:
        raise UsageError(f"cannot write history to {path}: {exc.strerror}") from None
