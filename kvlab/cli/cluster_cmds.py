"""`kvlab up|down|status|kill|pause|resume|restart|wipe`: run and break a local cluster."""

from __future__ import annotations

import argparse
import json
import sys
import time

from kvlab.cli import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from kvlab.cli.options import add_name, add_spec, spec_from
from kvlab.cluster import supervisor
from kvlab.cluster.supervisor import Cluster, ClusterError, NoCluster

ACTIONS = {
    "kill": ("SIGKILL a node: it dies at once (with fsync durability it keeps every write it acknowledged)", "killed"),
    "pause": ("SIGSTOP a node: it stays connected but answers nothing", "paused"),
    "resume": ("SIGCONT a paused node", "resumed"),
    "restart": ("stop a node (or the proxy) if it runs, then start it again on its data",
                "restarted"),
    "wipe": ("SIGKILL a node, delete its database and start it empty: what it held comes "
             "back from the other replicas (anti-entropy)", "wiped and restarted"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start a local cluster (returns when all are healthy)",
                       description="Start the proxy and N data nodes as background processes "
                                   "on 127.0.0.1 and wait until every one answers /health.")
    add_name(p)
    add_spec(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop every process of a cluster",
                       description="SIGTERM every process of the cluster, SIGKILL after a "
                                   "short grace. The data stays in its folder.")
    add_name(p)
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="show each process and its state",
                       description="Each process with its URL, PID and state: up, down, "
                                   "paused or starting.")
    add_name(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("add-node", help="start one more node and join it to the ring",
                       description="Start node n{k+1} on the port after the highest in use "
                                   "and add it to the proxy's ring. No data is moved: the "
                                   "keys it now owns reach it by read repair.")
    add_name(p)
    p.set_defaults(func=cmd_membership, action="add_node")

    p = sub.add_parser("remove-node", help="take a node out of the ring and stop it",
                       description="Remove NODE from the proxy's ring, stop it and forget "
                                   "it (its data folder stays). Refused if fewer than N "
                                   "nodes would remain.")
    p.add_argument("node", metavar="NODE", help="n1..nN")
    add_name(p)
    p.set_defaults(func=cmd_membership, action="remove_node")

    for action, (text, _) in ACTIONS.items():
        p = sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        if action == "restart":
            p.add_argument("node", metavar="NODE", help="n1..nN, or proxy")
            p.add_argument("--clock-offset-ms", type=int, default=0, metavar="N",
                           help="proxy only: run its clock N ms off the wall clock (negative: "
                                "behind), to watch versions stay monotonic across a restart "
                                "on a machine whose clock is wrong")
        else:
            p.add_argument("node", metavar="NODE", help="n1..nN")
        add_name(p)
        p.set_defaults(func=cmd_action, action=action)


def _fail(exc: ClusterError) -> int:
    print(f"kvlab: {exc}", file=sys.stderr)
    return EXIT_UNAVAILABLE if isinstance(exc, NoCluster) else EXIT_USAGE


def cmd_up(args: argparse.Namespace) -> int:
    spec = spec_from(args)
    began = time.monotonic()
    try:
        cluster = supervisor.up(spec)
    except ClusterError as exc:
        return _fail(exc)
    took = time.monotonic() - began
    note = supervisor.membership_note(spec, cluster)
    if note:
        print(note, file=sys.stderr)
    spec = cluster.spec
    first, last = cluster.nodes[0], cluster.nodes[-1]
    names = [n.name for n in cluster.nodes]
    nodes = (f"{first.name}..{last.name}" if names == spec.node_names()
             else ", ".join(names))  # nodes were added or removed since it first ran
    print(f"cluster {spec.name}: proxy {cluster.url}, nodes {nodes} "
          f"(ports {first.port}-{last.port}), N={spec.replicas} R={spec.read_quorum} "
          f"W={spec.write_quorum}, healthy in {took:.1f}s")
    print(f"  healing: {_healing_settings(spec.to_json())}")
    return EXIT_OK


def _healing_settings(spec: dict) -> str:
    hints = "off" if not spec["hints"] else "sloppy" if spec["sloppy"] else "strict"
    ae = f"every {spec['anti_entropy_s']:g}s" if spec["anti_entropy"] else "off"
    return (f"hints {hints} (window {spec['hint_window_s']:g}s), anti-entropy {ae}, "
            f"tombstone grace {spec['tombstone_grace_s']:g}s")


def _healing_line(healing: dict | None) -> str:
    """One node's healing counters, short: what it holds for others and what it repaired."""
    if not healing:
        return ""
    held = healing.get("hints_held") or {}
    holds = ", ".join(f"{n} for {t}" for t, n in sorted(held.items())) or "none"
    repaired = healing.get("repaired") or {}
    fixed = " ".join(f"{m}={c}" for m, c in repaired.items())
    return (f"  hints held {holds}, replayed {healing.get('hints_replayed', 0)}; "
            f"repaired {fixed}; anti-entropy rounds {healing.get('ae_rounds', 0)}")


def cmd_down(args: argparse.Namespace) -> int:
    try:
        cluster = Cluster.load(args.name)
    except ClusterError as exc:
        return _fail(exc)
    running = len(cluster.running())
    cluster.stop()
    print(f"cluster {args.name}: stopped {running} process{'es' if running != 1 else ''}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    try:
        status = Cluster.load(args.name).status()
    except ClusterError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    spec = status["spec"]
    print(f"cluster {status['name']}  N={spec['replicas']} R={spec['read_quorum']} "
          f"W={spec['write_quorum']}  vnodes {spec['vnodes']}  durability {spec['durability']}")
    print(f"  healing: {_healing_settings(spec)}")
    for m in [status["proxy"], *status["nodes"]]:
        pid = m["pid"] if m["pid"] else "-"
        print(f"  {m['name']:<6} {m['url']:<24} pid {pid!s:<8} {m['state']:<8}"
              f"{_healing_line(m.get('healing'))}")
    return EXIT_OK


def cmd_membership(args: argparse.Namespace) -> int:
    try:
        cluster = Cluster.load(args.name)
        if args.action == "add_node":
            member = cluster.add_node()
            print(f"{member.name} added on {member.url(cluster.spec.host)} "
                  f"(pid {member.proc.pid}); the ring has {len(cluster.nodes)} nodes")
        else:
            member = cluster.remove_node(args.node)
            print(f"{member.name} removed; the ring has {len(cluster.nodes)} nodes")
    except ClusterError as exc:
        return _fail(exc)
    return EXIT_OK


def cmd_action(args: argparse.Namespace) -> int:
    offset = getattr(args, "clock_offset_ms", 0)
    try:
        cluster = Cluster.load(args.name)
        if args.action == "restart" and args.node == "proxy":
            member = cluster.restart_proxy(offset)
        elif offset:
            return _fail(ClusterError("--clock-offset-ms is for the proxy's clock: "
                                      "`kvlab restart proxy --clock-offset-ms N`"))
        else:
            member = getattr(cluster, args.action)(args.node)
    except ClusterError as exc:
        return _fail(exc)
    pid = f" (pid {member.proc.pid})" if member.proc else ""
    print(f"{args.node} {ACTIONS[args.action][1]}{pid}")
    return EXIT_OK
