"""`kvlab sim`: a chaos run on the deterministic simulator, checked for consistency."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from kvlab.chaos.nemesis import KINDS
from kvlab.chaos.simulation import SimOptions, SimResult, run
from kvlab.chaos.summary import render_healing, render_outcome
from kvlab.chaos.summary import summarize as chaos_summary
from kvlab.cli import EXIT_OK, UsageError
from kvlab.cli.chaos_args import add_faults_and_output, add_workload, mix_from_args, save_history
from kvlab.cli.options import anti_entropy, fraction, non_negative_float, on_off, positive
from kvlab.sim.network import Latency
from kvlab.sim.world import WorldConfig

DESCRIPTION = """\
Run a whole cluster (nodes, coordinators, network, disks) inside one process on a virtual
clock, drive it with concurrent clients while a nemesis injects faults, record the history
and check it for lost writes, stale reads and linearizability. The same seed and options
always give the same history and summary, so a failing seed replays exactly.

Nemesis kinds: kill (crash a node, restart it later), pause (SIGSTOP a node, resume it),
partition (cut a coordinator from some nodes, one- or two-way), skew (offset a
coordinator's clock; pair with --coordinators 2), loss (drop a fraction of all messages),
wipe (kill a node and lose its disk: it comes back empty at the end of the fault),
membership (ring changes during traffic, one at a time on a track of their own while the
other faults go on: join a new node, remove one (never below N; it is stopped once its
ranges have moved), or kill one for good and replace it with a new, empty node).
The first coordinator runs the failure detector (heartbeats every 100 ms; nodes it holds
down are not asked) and commits the ring changes, as the real proxy does.

After the clients finish, the fault in progress ends, a ring change in progress is let
finish, and the cluster runs --quiesce more seconds with no traffic; the summary then
counts the keys with fewer than N current copies (under-replicated). --hints off and
--anti-entropy off switch the healing mechanisms off, to compare.

Exit status: 0 when the checker found the history linearizable (or could not decide in
--check-time-limit, or was skipped), 1 when it found a violation, 2 on bad options.
"""

EXIT_VIOLATION = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sim", help="run a seeded chaos test on the in-process simulator",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cluster = p.add_argument_group("cluster")
    cluster.add_argument("--seed", type=int, default=7, help="seed for every random choice (default 7)")
    cluster.add_argument("--nodes", type=positive, default=5, help="storage nodes (default 5)")
    cluster.add_argument("--replicas", type=positive, default=3, metavar="N",
                         help="replicas per key, N (default 3)")
    cluster.add_argument("--r", type=positive, default=2, help="read quorum R (default 2)")
    cluster.add_argument("--w", type=positive, default=2, help="write quorum W (default 2)")
    cluster.add_argument("--coordinators", type=positive, default=1,
                         help="proxies; clients spread over them (default 1)")
    cluster.add_argument("--timeout-ms", type=positive, default=1000,
                         help="coordinator deadline per operation (default 1000)")
    cluster.add_argument("--latency-ms", type=non_negative_float, default=0.2,
                         help="fixed one-way network delay (default 0.2)")
    cluster.add_argument("--jitter-ms", type=non_negative_float, default=0.1,
                         help="mean of the exponential jitter added to it (default 0.1)")
    cluster.add_argument("--loss", type=fraction, default=0.0,
                         help="fraction of messages lost at all times (default 0)")
    cluster.add_argument("--fsync-ms", type=non_negative_float, default=0.5,
                         help="mean time for a group commit to become durable; 40%% of it is "
                              "exponential jitter (default 0.5)")

    heal = p.add_argument_group("healing")
    heal.add_argument("--hints", type=on_off, default=True, metavar="on|off",
                      help="hinted handoff: a write a replica missed is kept on a fallback "
                           "node and handed over when it is back (default: on)")
    heal.add_argument("--sloppy", action="store_true",
                      help="sloppy quorum: those hints count toward W (needs --hints on)")
    heal.add_argument("--anti-entropy", type=anti_entropy, default=(True, None),
                      metavar="on|off|SECONDS",
                      help="replicas of each range compare hash trees every SECONDS (on: "
                           "every 5) and repair what differs (default: on)")
    heal.add_argument("--tombstone-grace", type=non_negative_float, default=86_400.0,
                      metavar="SECONDS",
                      help="a tombstone is purged this long after its delete, once every "
                           "replica holds it (default: a day)")
    heal.add_argument("--hint-window", type=non_negative_float, default=10_800.0,
                      metavar="SECONDS", help="hints older than this are dropped (default: 3 h)")
    heal.add_argument("--quiesce", type=non_negative_float, default=10.0, metavar="SECONDS",
                      help="virtual seconds with faults healed and no traffic after the "
                           "clients finish, before counting under-replicated keys "
                           "(default: 10)")

    add_workload(p, ops=3000, think_ms=5.0)
    add_faults_and_output(p, KINDS)
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
    save_history(args.history, result.events)
    summary = summarize(result, options, check=not args.no_check,
                        time_limit=args.check_time_limit)
    if args.json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(summary, options))
    return EXIT_VIOLATION if summary["linearizable"] is False else EXIT_OK


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """Options for the run; a bad combination raises `UsageError` (exit code 2)."""
    mix = mix_from_args(args)
    anti_entropy_on, interval_s = args.anti_entropy
    try:
        world = WorldConfig(
            nodes=args.nodes, replicas=args.replicas, r=args.r, w=args.w,
            coordinators=args.coordinators, timeout_ms=args.timeout_ms,
            latency=Latency(round(args.latency_ms * 1000), round(args.jitter_ms * 1000)),
            loss=args.loss,
            fsync=Latency(round(args.fsync_ms * 600), round(args.fsync_ms * 400)),
            hints=args.hints, sloppy=args.sloppy, anti_entropy=anti_entropy_on,
            anti_entropy_ms=(round(interval_s * 1000) if interval_s is not None
                             else WorldConfig.anti_entropy_ms),
            tombstone_grace_ms=round(args.tombstone_grace * 1000),
            hint_window_ms=round(args.hint_window * 1000),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.nemesis_nodes > args.nodes:
        raise UsageError(f"--nemesis-nodes {args.nemesis_nodes} is more than the "
                         f"{args.nodes} nodes")
    if args.replicas > args.nodes:
        raise UsageError(f"--replicas {args.replicas} needs at least that many --nodes "
                         f"(got {args.nodes})")
    return SimOptions(seed=args.seed, world=world, ops=args.ops, mix=mix,
                      nemesis=args.nemesis, nemesis_nodes=args.nemesis_nodes,
                      quiesce_ms=round(args.quiesce * 1000))


def summarize(result: SimResult, options: SimOptions, check: bool = True,
              time_limit: float = 30.0) -> dict[str, Any]:
    """The run's summary, with the checker's verdict (or nulls when not checked)."""
    world = options.world
    config = {
        "nodes": world.nodes, "replicas": world.replicas, "r": world.r, "w": world.w,
        "coordinators": world.coordinators, "clients": options.mix.clients, "keys": options.mix.keys,
        "nemesis": list(options.nemesis), "hints": world.hints, "sloppy": world.sloppy,
        "anti_entropy": world.anti_entropy, "anti_entropy_s": world.anti_entropy_ms / 1000,
    }
    return chaos_summary(result.events, result.summary, config, check, time_limit)


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
    if "membership" in c["nemesis"]:
        lines.append(f"ring at the end: {', '.join(summary['ring'])}"
                     + (" (a change never finished)" if summary["changing"] else ""))
    lines.append(f"healing: hints {'on' if c['hints'] else 'off'}"
                 f"{' (sloppy quorum)' if c['sloppy'] else ''}, anti-entropy "
                 + (f"every {c['anti_entropy_s']:g} s" if c["anti_entropy"] else "off"))
    return "\n".join(lines + render_outcome(summary) + render_healing(summary))
