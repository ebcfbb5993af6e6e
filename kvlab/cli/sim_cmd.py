"""`kvlab sim`: a chaos run on the deterministic simulator, checked for consistency."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from kvlab.chaos.checker import check as check_history
from kvlab.chaos.history import write_history
from kvlab.chaos.nemesis import KINDS, parse_kinds
from kvlab.cli import EXIT_OK, UsageError
from kvlab.sim.network import Latency
from kvlab.sim.runner import SimOptions, SimResult, run
from kvlab.sim.world import WorldConfig

COUNT_FIELDS = ("ops", "ok", "fail", "info")
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
                         help="mean time for a group commit to become durable; 40%% of it is "
                              "exponential jitter (default 0.5)")

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
            fsync=Latency(round(args.fsync_ms * 600), round(args.fsync_ms * 400)),
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
    run_summary = dict(result.summary)
    summary: dict[str, Any] = {name: run_summary.pop(name) for name in COUNT_FIELDS}
    summary.update(dict.fromkeys(CHECK_FIELDS))
    if check:
        verdict = check_history(result.events, time_limit=time_limit).to_json()
        summary.update({name: verdict[name] for name in CHECK_FIELDS})
        run_summary["unknown_keys"] = verdict.get("unknown_keys", [])
    summary.update(run_summary)
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
                         f"{_ms(op['invoke_time'])}..{_ms(op['complete_time'])} ms")
    if len(summary["violations"]) > 5:
        lines.append(f"  ... and {len(summary['violations']) - 5} more keys")
    return "\n".join(lines)


def _ms(time_ns: int | None) -> str:
    return "?" if time_ns is None else f"{time_ns / 1e6:.3f}"


# -- argument types (argparse turns their ArgumentTypeError into exit code 2) ---------------


def _ranged(convert: Callable[[str], Any], low: float, high: float | None = None,
            strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: `convert(text)`, then check low <= value (<) and value <= high."""
    if high is not None:
        rule = f"must be between {low:g} and {high:g}"
    else:
        rule = f"must be {'greater than' if strict else 'at least'} {low:g}"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ((value > low if strict else value >= low) and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    return parse


_positive = _ranged(int, 1)
_non_negative = _ranged(int, 0)
_non_negative_float = _ranged(float, 0)
_positive_float = _ranged(float, 0, strict=True)
_fraction = _ranged(float, 0, 1)


def _kinds(text: str) -> tuple[str, ...]:
    try:
        return parse_kinds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
