"""`kvlab sim`: a chaos run on the deterministic simulator, checked for consistency."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from kvlab.chaos.history import write_history
from kvlab.chaos.nemesis import KINDS, parse_kinds
from kvlab.cli import EXIT_OK, UsageError
from kvlab.sim.network import Latency
from kvlab.sim.runner import SimOptions, SimResult, run
from kvlab.sim.world import WorldConfig

CHECK_FIELDS = ("lost_writes", "stale_reads", "linearizable", "violations")

DESCRIPTION = """\
Run a whole cluster (nodes, coordinators, network, disks) inside one process on a virtual
clock, drive it with concurrent clients while a nemesis injects faults, record the history
and check it for lost writes, stale reads and linearizability. The same seed and options
always give the same history and summary, so a failing seed replays exactly.

Nemesis kinds: kill (crash a node, restart it later), pause (SIGSTOP a node, resume it),
partition (cut a coordinator from some nodes, one- or two-way), skew (offset a
coordinator's clock; pair with --coordinators 2), loss (drop a fraction of all messages).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sim", help="run a seeded chaos test on the in-process simulator",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cluster = p.add_argument_group("cluster")
    cluster.add_argument("--seed", type=int, default=7, help="seed for every random choice (default 7)")
    cluster.add_argument("--nodes", type=_positive, default=5, help="storage nodes (default 5)")
    cluster.add_argument("--replicas", type=_positive, default=3, metavar="N",
                         help="replicas per key, N (default 3)")
    cluster.add_argument("--r", type=_positive, default=2, help="read quorum R (default 2)")
    cluster.add_argument("--w", type=_positive, default=2, help="write quorum W (default 2)")
    cluster.add_argument("--coordinators", type=_positive, default=1,
                         help="proxies; clients spread over them (default 1)")
    cluster.add_argument("--timeout-ms", type=_positive, default=1000,
                         help="coordinator deadline per operation (default 1000)")
    cluster.add_argument("--latency-ms", type=_non_negative_float, default=0.2,
                         help="fixed one-way network delay (default 0.2)")
    cluster.add_argument("--jitter-ms", type=_non_negative_float, default=0.1,
                         help="mean of the exponential jitter added to it (default 0.1)")
    cluster.add_argument("--loss", type=_fraction, default=0.0,
                         help="fraction of messages lost at all times (default 0)")
    cluster.add_argument("--fsync-ms", type=_non_negative_float, default=0.5,
                         help="time for a group commit to become durable (default 0.5)")

    work = p.add_argument_group("workload")
    work.add_argument("--ops", type=_non_negative, default=3000,
                      help="operations in all (default 3000)")
    work.add_argument("--clients", type=_positive, default=10,
                      help="concurrent clients, one operation outstanding each (default 10)")
    work.add_argument("--keys", type=_positive, default=20, help="key space k0..k{K-1} (default 20)")
    work.add_argument("--reads", type=_fraction, default=0.5,
                      help="fraction of reads (default 0.5)")
    work.add_argument("--deletes", type=_fraction, default=0.1,
                      help="fraction of deletes; the rest are writes (default 0.1)")
    work.add_argument("--think-ms", type=_non_negative_float, default=5.0,
                      help="mean client pause between operations (default 5)")

    chaos = p.add_argument_group("faults and output")
    chaos.add_argument("--nemesis", type=_kinds, default=(), metavar="KINDS",
                       help=f"comma-separated faults to inject: {','.join(KINDS)} "
                            "(default: none)")
    chaos.add_argument("--history", metavar="FILE",
                       help="write the history as JSON lines to FILE")
    chaos.add_argument("--json", action="store_true", help="print the summary as JSON")
    chaos.add_argument("--no-check", action="store_true",
                       help="skip the consistency checker (its fields are null)")
    chaos.add_argument("--check-time-limit", type=_positive_float, default=30.0,
                       metavar="SECONDS",
                       help="wall-clock budget for the linearizability search (default 30); "
                            "keys it cannot settle in time are reported unknown")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    started = time.perf_counter()
    result = run(options)
    elapsed = time.perf_counter() - started
    ops = result.summary["ops"]
    # Wall-clock figures vary from run to run: stderr only, so stdout stays reproducible.
    print(f"simulated {ops} ops in {elapsed:.2f} s wall clock "
          f"({ops / elapsed if elapsed else 0:,.0f} ops/s)", file=sys.stderr)
    if args.history:
        try:
            with open(args.history, "wb") as file:
                write_history(result.events, file)
        except OSError as exc:
            raise UsageError(f"cannot write history to {args.history}: {exc.strerror}") from None
    summary = summarize(result, options, check=not args.no_check,
                        time_limit=args.check_time_limit)
    if args.json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(summary, options))
    return EXIT_OK


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """Options for the run; a bad combination raises `UsageError` (exit code 2)."""
    if args.reads + args.deletes > 1:
        raise UsageError("--reads and --deletes must add up to at most 1")
    try:
        world = WorldConfig(
            nodes=args.nodes, replicas=args.replicas, r=args.r, w=args.w,
            coordinators=args.coordinators, timeout_ms=args.timeout_ms,
            latency=Latency(round(args.latency_ms * 1000), round(args.jitter_ms * 1000)),
            loss=args.loss,
            fsync=Latency(round(args.fsync_ms * 1000), round(args.fsync_ms * 400)),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.replicas > args.nodes:
        raise UsageError(f"--replicas {args.replicas} needs at least that many --nodes "
                         f"(got {args.nodes})")
    return SimOptions(seed=args.seed, world=world, ops=args.ops, clients=args.clients,
                      keys=args.keys, reads=args.reads, deletes=args.deletes,
                      think_ms=args.think_ms, nemesis=args.nemesis)


def summarize(result: SimResult, options: SimOptions, check: bool = True,
              time_limit: float = 30.0) -> dict[str, Any]:
    """The run's summary, with the checker's verdict (or nulls when not checked)."""
    summary = dict(result.summary)
    for name in CHECK_FIELDS:
        summary[name] = None
    if check:
        from kvlab.chaos.checker import check as check_history

        verdict = check_history(result.events, time_limit=time_limit).to_json()
        summary.update({name: verdict[name] for name in CHECK_FIELDS})
        summary["unknown_keys"] = verdict.get("unknown_keys", [])
    world = options.world
    summary["config"] = {
        "nodes": world.nodes, "replicas": world.replicas, "r": world.r, "w": world.w,
        "coordinators": world.coordinators, "clients": options.clients, "keys": options.keys,
        "nemesis": list(options.nemesis),
    }
    return summary


def render(summary: dict[str, Any], options: SimOptions) -> str:
    """The summary for people."""
    c = summary["config"]
    lines = [
        f"seed {summary['seed']}: {c['nodes']} nodes, N={c['replicas']} R={c['r']} W={c['w']}, "
        f"{c['coordinators']} coordinator(s), {c['clients']} clients on {c['keys']} keys",
        f"virtual time {summary['virtual_ms'] / 1000:.3f} s, {summary['messages']} messages "
        f"({summary['messages_dropped']} dropped), "
        f"{summary['unpersisted_writes_lost']} unacknowledged writes lost in crashes",
    ]
    faults = summary["faults"]
    lines.append(f"faults ({', '.join(c['nemesis']) or 'none'}): {len(faults)}")
    lines += [f"  {fault}" for fault in faults]
    lines.append(f"ops {summary['ops']}  ok {summary['ok']}  fail {summary['fail']}  "
                 f"info {summary['info']}")
    if summary["linearizable"] is None and summary["violations"] is None:
        lines.append("checker: skipped (--no-check)")
        return "\n".join(lines)
    verdict = {True: "yes", False: "NO", None: "unknown (time ran out)"}[summary["linearizable"]]
    lines.append(f"linearizable {verdict}  lost writes {summary['lost_writes']}  "
                 f"stale reads {summary['stale_reads']}")
    for violation in summary["violations"][:5]:
        lines.append(f"  {violation['key']}: {violation['reason']}")
        for op in violation["operations"]:
            lines.append(f"    process {op['process']} {op['f']} {op['value']!r} {op['status']} "
                         f"[{op['invoke_time']}, {op['complete_time']}] ns")
    if len(summary["violations"]) > 5:
        lines.append(f"  ... and {len(summary['violations']) - 5} more keys")
    return "\n".join(lines)


# -- argument types (argparse turns their ValueError/ArgumentTypeError into exit code 2) ---


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _kinds(text: str) -> tuple[str, ...]:
    try:
        return parse_kinds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
