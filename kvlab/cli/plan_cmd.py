"""`kvlab plan add|remove`: what a membership change would move, before anything moves."""

from __future__ import annotations

import argparse
import json

from kvlab.cli import Unavailable, UsageError
from kvlab.cli.options import add_name
from kvlab.cluster.supervisor import Cluster, ClusterError, NoCluster
from kvlab.core.plan import Plan, plan
from kvlab.core.ring import Ring

FLOWS_SHOWN = 12


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="show what adding or removing a node would move",
        description="Plan a membership change without making it: the share of the keys each "
                    "node holds before and after, how much of the key space changes "
                    "replicas, and which node would send which keys to which. Reads the "
                    "cluster's membership from cluster.json; the cluster need not run.")
    p.add_argument("change", choices=("add", "remove"), help="add a node, or remove NODE")
    p.add_argument("node", nargs="?", metavar="NODE", help="the node to remove (n1..nN)")
    add_name(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        cluster = Cluster.load(args.name)
    except NoCluster as exc:
        raise Unavailable(str(exc)) from None
    except ClusterError as exc:
        raise UsageError(str(exc)) from None
    spec = cluster.spec
    names = tuple(n.name for n in cluster.nodes)
    if args.change == "add":
        if args.node is not None:
            raise UsageError("kvlab plan add takes no NODE: the new node's name is chosen "
                             "as add-node would")
        changed = cluster.next_member().name
        after = names + (changed,)
    else:
        if args.node is None:
            raise UsageError("kvlab plan remove needs the NODE to remove")
        if args.node not in names:
            raise UsageError(f"no node {args.node!r} in cluster {spec.name!r} "
                             f"(nodes: {', '.join(names)})")
        if len(names) - 1 < spec.replicas:
            raise UsageError(f"removing {args.node} would leave {len(names) - 1} nodes, "
                             f"fewer than N={spec.replicas} replicas")
        changed = args.node
        after = tuple(n for n in names if n != changed)
    result = plan(Ring(names, spec.vnodes), Ring(after, spec.vnodes), spec.replicas)
    if args.json:
        print(json.dumps(_as_json(args.change, changed, result)))
    else:
        print(_as_text(args.change, changed, names, spec.replicas, result))
    return 0


def _as_json(change: str, node: str, result: Plan) -> dict:
    return {
        "change": change, "node": node, "changed": round(result.changed, 6),
        "before": {n: round(s, 6) for n, s in result.before.items()},
        "after": {n: round(s, 6) for n, s in result.after.items()},
        "flows": [{"from": src, "to": dst, "share": round(share, 6)}
                  for (src, dst), share in result.flows().items()],
        "ranges": len(result.moves),
    }


def _as_text(change: str, node: str, names: tuple[str, ...], n: int, result: Plan) -> str:
    verb = "adding" if change == "add" else "removing"
    lines = [f"{verb} {node} ({len(names)} nodes now, N={n}): "
             f"{result.changed:.1%} of the key space changes replicas, in "
             f"{len(result.moves)} ranges",
             "", "  node   holds now   after"]
    for name in sorted(set(result.before) | set(result.after), key=lambda x: int(x[1:])):
        now, then = result.before.get(name), result.after.get(name)
        lines.append(f"  {name:<6} {_pct(now):>9}   {_pct(then):>5}")
    flows = list(result.flows().items())
    lines += ["", "  moves (share of all keys)"]
    lines += [f"  {src} -> {dst}  {share:.1%}" for (src, dst), share in flows[:FLOWS_SHOWN]]
    if len(flows) > FLOWS_SHOWN:
        lines.append(f"  ... and {len(flows) - FLOWS_SHOWN} more")
    lines += ["", "Nothing has moved. (Today `kvlab add-node` / `remove-node` change the ring "
                  "at once; the data follows by read repair, and by anti-entropy once the "
                  "running nodes restart and learn of the change.)"]
    return "\n".join(lines)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"
