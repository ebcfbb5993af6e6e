"""`kvlab up|down|status|kill|pause|resume|restart|wipe`: run and break a local cluster;
`kvlab add-node|remove-node|replace-node`: change its membership, moving the data first;
`kvlab abort-move`: give one up before reads have moved."""

from __future__ import annotations

import argparse
import json
import sys
import time

from kvlab.cli import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from kvlab.cli.options import add_name, add_spec, spec_from
from kvlab.cli.signals import interrupt_on_termination
from kvlab.cluster import supervisor
from kvlab.cluster.supervisor import (
    Cluster,
    ClusterError,
    NoCluster,
    ProxyUnreachable,
    recover_hint,
)

EXIT_INTERRUPTED = 130
# A waiting membership command on a pipe prints a line when the move reaches a new phase or
# finishes a stream, and otherwise at most this often.
PLAIN_EVERY_S = 2.0

ACTIONS = {
    "kill": ("SIGKILL a node: it dies at once (with fsync durability it keeps every write "
             "it acknowledged)", "killed"),
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

    p = sub.add_parser("status", help="show each process, its health, and a move in progress",
                       description="Each process with its URL, PID and state (up, down, "
                                   "paused or starting); for each node the proxy's failure "
                                   "detector's verdict (up, suspect after ~0.7 s without a "
                                   "heartbeat, down after ~1.85 s) and its phi; and the "
                                   "membership change in progress, if any: phase, streams, "
                                   "keys and bytes moved, rate and ETA. A node whose removal "
                                   "has finished streaming is stopped here (after a "
                                   "--no-wait removal).")
    add_name(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "add-node", help="start one more node; its ranges stream to it before it serves reads",
        description="Start an empty node (the next name never used here, on the port after "
                    "the highest in use) and join it to the ring. The data moves first: it "
                    "joins the write set at once, the ranges it takes over stream to it from "
                    "their current replicas, and only then do reads go to it and the old "
                    "owners drop what they no longer hold. Shows the move's progress and "
                    "returns when it is done (or at once with --no-wait). `kvlab plan add` "
                    "shows what would move.")
    add_name(p)
    _no_wait(p)
    p.set_defaults(func=cmd_membership, action="add_node")

    p = sub.add_parser(
        "remove-node", help="stream a node's ranges out to the others, then stop it",
        description="Decommission NODE: its ranges stream to the nodes that take them over "
                    "(reads keep going to it until they have arrived), then it is stopped "
                    "and forgotten (its data folder stays). Refused if fewer than N nodes "
                    "would remain. Shows the move's progress and returns when it is done (or "
                    "at once with --no-wait: NODE keeps running until its ranges are out, "
                    "and the next `kvlab status` after that stops it). `kvlab plan remove "
                    "NODE` shows what would move.")
    p.add_argument("node", metavar="NODE", help="the node to remove (n1..nN)")
    add_name(p)
    _no_wait(p)
    p.set_defaults(func=cmd_membership, action="remove_node")

    p = sub.add_parser(
        "replace-node", help="put a new, empty node in a dead node's place and refill it",
        description="Start an empty node and give it NODE's place in the ring, on NODE's "
                    "tokens, so that exactly NODE's ranges move, each streamed from its "
                    "other replicas (and from NODE too while it still runs). Meant for a "
                    "node that died with its disk; then NODE is stopped if it still runs and "
                    "forgotten. Shows the move's progress and returns when it is done (or at "
                    "once with --no-wait).")
    p.add_argument("node", metavar="NODE", help="the node to replace (n1..nN)")
    add_name(p)
    _no_wait(p)
    p.set_defaults(func=cmd_membership, action="replace_node")

    p = sub.add_parser(
        "abort-move", help="give up a membership change whose reads have not moved yet",
        description="Give up the membership change in progress, as long as reads are still "
                    "on the old ring (a node that was joining never came up, say): the ring "
                    "goes back to what it was, a joining node is stopped (its folder stays) "
                    "and a leaving one stays a member. No acknowledged write is lost: during "
                    "a move every write is on W of the old replicas too. Refused once reads "
                    "have moved (the change then only has its cleanup left).")
    add_name(p)
    p.set_defaults(func=cmd_abort)

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


def _no_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", action="store_true",
                   help="return once the proxy has accepted the change, without waiting for "
                        "the data to move (`kvlab status` shows how far it got)")


def _fail(exc: ClusterError) -> int:
    print(f"kvlab: {exc}", file=sys.stderr)
    return EXIT_UNAVAILABLE if isinstance(exc, (NoCluster, ProxyUnreachable)) else EXIT_USAGE


def cmd_abort(args: argparse.Namespace) -> int:
    try:
        view = Cluster.load(args.name).abort_change()
    except ClusterError as exc:
        return _fail(exc)
    print(f"aborted: {view['kind']} {view['node']} ({view['phase']}); the ring is "
          f"{', '.join(view['nodes_before'])} again")
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    spec = spec_from(args)
    interrupt_on_termination()  # so that SIGTERM, too, stops what was started so far
    began = time.monotonic()
    try:
        cluster = supervisor.up(spec)
    except ClusterError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        print(f"kvlab: interrupted; what had started of cluster {spec.name} was stopped",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    took = time.monotonic() - began
    note = supervisor.membership_note(spec, cluster)
    if note:
        print(note, file=sys.stderr)
    spec = cluster.spec
    first, last = cluster.nodes[0], cluster.nodes[-1]
    names = [n.name for n in cluster.nodes]
    nodes = (f"{first.name}..{last.name}" if names == spec.node_names()
             else ", ".join(names))  # nodes were added or removed since it first ran
    ports = sorted(n.port for n in cluster.nodes)
    print(f"cluster {spec.name}: proxy {cluster.url}, nodes {nodes} "
          f"(ports {ports[0]}-{ports[-1]}), N={spec.replicas} R={spec.read_quorum} "
          f"W={spec.write_quorum}, healthy in {took:.1f}s")
    print(f"  healing: {_healing_settings(spec.to_json())}")
    guarded = "membership, faults and data" if spec.protect_data else "membership and faults"
    print(f"  {guarded} need the secret in {cluster.dir / 'cluster.json'}")
    for member in cluster.failed():
        print(f"kvlab: {member.name} failed: {cluster.failure(member)['reason']}; the cluster "
              f"runs without it ({recover_hint(member.name, spec.name)})", file=sys.stderr)
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
    version = status["ring_version"]
    print(f"  ring version {version if version is not None else '? (no answer from the proxy)'}"
          "; health is the proxy's failure detector's verdict (phi: its suspicion)")
    for m in [status["proxy"], *status["nodes"]]:
        pid = m["pid"] if m["pid"] else "-"
        health = ""
        if m is not status["proxy"]:
            health = (f"{m['health'] or '?':<8}phi {m['phi']:<5g}" if m["health"] is not None
                      else f"{'?':<8}{'':9}")
            health += " leaving" if m["leaving"] else ""
            health += f" (in {m['seat']}'s place)" if m.get("seat") else ""
        print(f"  {m['name']:<6} {m['url']:<24} pid {pid!s:<8} {m['state']:<9}{health}"
              f"{_healing_line(m.get('healing'))}")
        if m.get("failed"):
            print(f"         {m['failed']['reason']}; {recover_hint(m['name'], status['name'])}")
    if status["change"] is not None:
        print(f"  change: {_change_title(status['change'])}: {_progress(status['change'])}")
    elif status["last_change"] is not None:
        print(f"  last change: {_change_title(status['last_change'])}, "
              f"{_summary(status['last_change'])}")
    return EXIT_OK


# -- membership changes and their progress -------------------------------------------------


def _change_title(view: dict) -> str:
    if view["kind"] == "replace":
        return f"{view['node']} replacing {view['replaced']}"
    verb = {"add": "adding", "remove": "removing"}.get(view["kind"], view["kind"])
    return f"{verb} {view['node']}"


def _bytes(count: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def _progress(view: dict) -> str:
    """One line: phase, streams done of all, keys, bytes, fraction, rate and ETA."""
    eta = view["eta_ms"]
    return (f"{view['phase']:<9} streams {view['streams_done']}/{view['streams']}  "
            f"{view['keys']:,} keys  {_bytes(view['bytes'])}  {view['fraction']:.0%}  "
            f"{_bytes(view['rate_bytes_s'])}/s  "
            f"ETA {'-' if eta is None else f'{eta / 1000:.1f}s'}")


def _summary(view: dict) -> str:
    aborted = " (aborted: the ring is as it was before)" if view["phase"] == "aborted" else ""
    return (f"{view['keys']:,} keys ({_bytes(view['bytes'])}) moved in "
            f"{view['streams']} streams, {view['elapsed_ms'] / 1000:.1f}s{aborted}")


class ProgressPrinter:
    """Shows a move as it goes: one line rewritten in place on a terminal, else a plain
    line per new phase or finished stream (and at most every PLAIN_EVERY_S otherwise)."""

    def __init__(self, out=None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.last: tuple[str, int] | None = None
        self.printed_at = 0.0
        self.open_line = False

    def __call__(self, view: dict) -> None:
        line = f"{_change_title(view)}: {_progress(view)}"
        if self.tty:
            self.out.write(f"\r\x1b[K{line}")
            self.open_line = True
        else:
            mark = (view["phase"], view["streams_done"])
            now = time.monotonic()
            if mark == self.last and now - self.printed_at < PLAIN_EVERY_S:
                return
            self.last, self.printed_at = mark, now
            self.out.write(line + "\n")
        self.out.flush()

    def end(self) -> None:
        if self.open_line:
            self.out.write("\n")
            self.open_line = False


def _pid(cluster: Cluster, member) -> int | None:
    """`member`'s PID as cluster.json has it now (it may have restarted during the move)."""
    cluster.refresh()
    current = next((m for m in cluster.nodes if m.name == member.name), member)
    return current.proc.pid if current.proc else None


def cmd_membership(args: argparse.Namespace) -> int:
    wait = not args.no_wait
    printer = ProgressPrinter()
    final: list[dict] = []

    def progress(view: dict) -> None:
        final[:] = [view]
        printer(view)

    try:
        cluster = Cluster.load(args.name)
        if args.action == "add_node":
            member = cluster.add_node(wait, progress)
            what = (f"{member.name} (on {member.url(cluster.spec.host)}, pid "
                    f"{_pid(cluster, member)})")
            done = f"{what} added"
        elif args.action == "remove_node":
            member = cluster.remove_node(args.node, wait, progress)
            done = f"{member.name} removed and stopped"
            what = member.name
        else:
            member = cluster.replace_node(args.node, wait, progress)
            what = (f"{member.name} (on {member.url(cluster.spec.host)}, pid "
                    f"{_pid(cluster, member)}) in {args.node}'s place")
            done = f"{args.node} replaced by {what}"
    except ClusterError as exc:
        printer.end()
        return _fail(exc)
    except KeyboardInterrupt:
        printer.end()
        if final:  # the proxy had accepted the change: it goes on without us
            print(f"kvlab: stopped waiting; the move goes on in the proxy (`kvlab status "
                  f"--name {args.name}` shows it)", file=sys.stderr)
        else:
            print(f"kvlab: interrupted before the proxy answered; `kvlab status --name "
                  f"{args.name}` shows whether it took the change", file=sys.stderr)
        return EXIT_INTERRUPTED
    printer.end()
    nodes = f"the ring has {len(cluster.nodes)} nodes"
    if not wait:
        print(f"change accepted: {what}; the data is moving (`kvlab status --name "
              f"{args.name}` shows how far); {nodes}")
    else:
        summary = f": {_summary(final[-1])}" if final else ""
        print(f"{done}{summary}; {nodes}")
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
