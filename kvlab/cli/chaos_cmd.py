"""`kvlab chaos`: the chaos workload, nemesis and checker against a real local cluster."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from kvlab.chaos.live import LIVE_NEMESES, ChaosOptions, run_chaos
from kvlab.chaos.nemesis import MEMBERSHIP
from kvlab.chaos.summary import EXAMPLE_KEYS, render_healing, render_outcome, summarize
from kvlab.chaos.workload import key_names
from kvlab.client import KV, KVError, Unavailable
from kvlab.cli import EXIT_OK, UsageError
from kvlab.cli.chaos_args import add_faults_and_output, add_workload, mix_from_args, save_history
from kvlab.cli.options import (
    add_name, add_spec, non_negative_float, positive, positive_float, spec_from,
)
from kvlab.cli.signals import interrupt_on_termination
from kvlab.cluster import supervisor
from kvlab.cluster.supervisor import Cluster, ClusterError

_GAP = "-".join(f"{ms / 1000:g}" for ms in ChaosOptions.membership_gap_ms)
_LIMIT = f"{ChaosOptions.change_limit_s:g}"
DESCRIPTION = f"""\
Drive the --name cluster with concurrent clients for --duration seconds while a nemesis
breaks it (kill: SIGKILL a node and restart it later; pause: SIGSTOP it, then SIGCONT;
partition: cut the proxy's link to some nodes, then heal; wipe: kill a node and start it
again with an empty disk at the end of the fault), record every operation, and check the
history for lost writes, stale reads and linearizability. If no cluster of that name is
running, a fresh one is started (with --nodes, --replicas, --hints, --anti-entropy, ...)
and stopped after. The same workload and fault schedule as `kvlab sim`, in real time on
real processes.

membership changes the ring during the traffic, drawn as `kvlab sim --nemesis
membership` draws them (the seed's own stream, with real-time gaps): one change at a
time, the next {_GAP} s after the last one ended, each carried out as `kvlab add-node` (a
new, empty node joins and its ranges stream to it), `remove-node` (never below N nodes;
its ranges stream out, then it is stopped) or `replace-node` (the node is SIGKILLed and
a new, empty node takes its ranges), while the clients go on. It keeps off the other
faults' nodes: no removal or replacement of a node another fault holds (it waits for
that fault to end), no change beside a wipe, and no fault on a node joining, leaving or
replaced (or gone). The summary lists each change (seconds, keys and bytes streamed) and
the ring at the end; cluster.json holds the membership the run ended with.

After the clients finish, every fault is healed, a ring change in progress is let finish
(at most {_LIMIT} s), and the cluster runs --quiesce seconds with no traffic; then every key
the workload wrote is inspected through the proxy (placed on the ring the run ended
with), and the keys fewer than N replicas hold in their newest version are counted
under-replicated.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chaos", help="chaos test a real local cluster and check the history",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_name(p)
    p.add_argument("--duration", type=positive_float, default=60.0, metavar="SECONDS",
                   help="how long the clients run (default 60)")
    p.add_argument("--seed", type=int, default=7, help="seed for the workload and the nemesis")
    p.add_argument("--r", type=positive, help="read quorum per request (default: the cluster's)")
    p.add_argument("--w", type=positive, help="write quorum per request (default: the cluster's)")
    p.add_argument("--quiesce", type=non_negative_float, default=ChaosOptions.quiesce_s,
                   metavar="SECONDS",
                   help="seconds with every fault healed and no traffic after the run, "
                        "before counting under-replicated keys (default: %(default)g)")
    add_workload(p, ops=None, think_ms=10.0)
    add_faults_and_output(p, LIVE_NEMESES)
    new = p.add_argument_group("a cluster started for the run (when --name is not running)")
    add_spec(new)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    options = ChaosOptions(duration_s=args.duration, seed=args.seed, mix=mix_from_args(args),
                           r=args.r, w=args.w, nemesis=args.nemesis,
                           nemesis_nodes=args.nemesis_nodes, max_ops=args.ops,
                           quiesce_s=args.quiesce)
    interrupt_on_termination()  # so a cluster started here is stopped on SIGTERM too
    cluster, started = _attach_or_start(args)
    nodes = len(cluster.nodes)  # at the start: the membership nemesis may change them
    try:
        _refuse_old_data(cluster, args.keys)
        n = cluster.spec.replicas
        for name, value in (("--r", args.r), ("--w", args.w)):
            if value is not None and value > n:
                raise UsageError(f"{name} {value} exceeds the cluster's N={n}")
        if args.nemesis_nodes > len(cluster.nodes):
            raise UsageError(f"--nemesis-nodes {args.nemesis_nodes} is more than the "
                             f"cluster's {len(cluster.nodes)} nodes")
        print(f"chaos on cluster {cluster.spec.name} ({cluster.url}) for {args.duration:g}s, "
              f"nemesis: {','.join(args.nemesis) or 'none'}", file=sys.stderr)
        run = asyncio.run(run_chaos(cluster, options,
                                    progress=lambda line: print(line, file=sys.stderr)))
    finally:
        if started:
            cluster.refresh()  # the membership nemesis may have added nodes meanwhile
            cluster.stop()
    save_history(args.history, run.events)
    spec = cluster.spec
    config = {"cluster": spec.name, "nodes": nodes, "replicas": spec.replicas,
              "r": args.r or spec.read_quorum, "w": args.w or spec.write_quorum,
              "clients": args.clients, "keys": args.keys, "nemesis": list(args.nemesis),
              "duration_s": args.duration, "hints": spec.hints, "sloppy": spec.sloppy,
              "anti_entropy": spec.anti_entropy, "anti_entropy_s": spec.anti_entropy_s}
    extra: dict[str, Any] = {"seed": args.seed, "elapsed_s": round(run.elapsed_s, 3),
                             "faults": [f.describe() for f in run.faults],
                             "quiesce_s": args.quiesce,
                             "under_replicated": len(run.under_replicated),
                             "under_replicated_keys": run.under_replicated[:EXAMPLE_KEYS],
                             "healing": run.healing}
    if MEMBERSHIP in args.nemesis:
        extra.update(changes=run.changes, ring=run.ring, changing=run.changing)
    summary = summarize(run.events, extra, config, not args.no_check, args.check_time_limit)
    if args.json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        c = summary["config"]
        lines = [f"cluster {c['cluster']}: {c['nodes']} nodes, N={c['replicas']} R={c['r']} "
                 f"W={c['w']}, {c['clients']} clients on {c['keys']} keys, "
                 f"{summary['elapsed_s']:.1f} s",
                 f"faults ({', '.join(c['nemesis']) or 'none'}): {len(run.faults)}"]
        lines += [f"  {fault}" for fault in summary["faults"]]
        if MEMBERSHIP in c["nemesis"]:
            lines += _render_changes(summary)
        lines.append(f"healing: hints {'on' if c['hints'] else 'off'}"
                     f"{' (sloppy quorum)' if c['sloppy'] else ''}, anti-entropy "
                     + (f"every {c['anti_entropy_s']:g} s" if c["anti_entropy"] else "off"))
        print("\n".join(lines + render_outcome(summary) + render_healing(summary)))
    return EXIT_OK


def _render_changes(summary: dict[str, Any]) -> list[str]:
    """The membership changes made, with what moved, and the ring at the end."""
    changes = summary["changes"]
    lines = [f"membership changes: {len(changes)}"]
    for change in changes:
        what = (f"replace {change['replaced']} by {change['node']}"
                if change["kind"] == "replace" else f"{change['kind']} {change['node']}")
        if change.get("error"):
            outcome = f"refused: {change['error']}"
        elif not change["done"]:
            outcome = "never finished"
        else:
            outcome = (f"{change['seconds']:.1f} s, {change['keys']} keys, "
                       f"{_size(change['bytes'])} streamed")
        lines.append(f"  {change['at_s']:6.1f} s  {what}: {outcome}")
    lines.append(f"ring at the end: {', '.join(summary['ring'])}"
                 + (" (a change never finished)" if summary["changing"] else ""))
    return lines


def _size(count: int) -> str:
    return f"{count} B" if count < 1024 else f"{count / 1024:.1f} KiB"


def _refuse_old_data(cluster: Cluster, keys: int) -> None:
    """The checker knows only what this run wrote: a workload key that already holds a
    value (a cluster reused, or restarted on an earlier run's data) would read as a lost
    or stale write, and a correct run as not linearizable."""
    try:
        with KV(cluster.url, secret=cluster.secret) as kv:
            held = [key for key in key_names(keys) if kv.get(key) is not None]
    except Unavailable:
        raise  # a cluster down: exit 3, as for any command
    except KVError as exc:
        raise UsageError(f"could not check cluster {cluster.spec.name}'s keys before the "
                         f"run: {exc}") from None
    if held:
        raise UsageError(
            f"cluster {cluster.spec.name} already holds {len(held)} of the workload's keys "
            f"({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}), from an earlier run: "
            f"the checker would take them for lost or stale writes. Run on a fresh --name, "
            f"or stop this cluster and delete its folder")


def _attach_or_start(args: argparse.Namespace) -> tuple[Cluster, bool]:
    try:
        cluster = Cluster.load(args.name)
        if cluster.running():
            return cluster, False
    except ClusterError:
        pass
    spec = spec_from(args)
    print(f"starting cluster {spec.name} on port {spec.port} for the run", file=sys.stderr)
    try:
        return supervisor.up(spec), True
    except ClusterError as exc:
        raise UsageError(str(exc)) from None
