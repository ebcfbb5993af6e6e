"""Options and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from kvlab.cluster.spec import DEFAULT_NAME, DEFAULT_PORT, ClusterSpec, check_name
from kvlab.net.args import on_off


def cluster_name(text: str) -> str:
    """An argparse type: a name `check_name` accepts."""
    try:
        return check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=DEFAULT_NAME, type=cluster_name,
                        help="which cluster (a folder under $KVLAB_HOME, default ~/.kvlab); "
                             "default: %(default)s")


def ranged(convert: Callable[[str], Any], low: float, high: float | None = None,
           strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: `convert(text)`, then check low <= value (<) and value <= high.

    argparse turns its ArgumentTypeError into a clear message and exit code 2.
    """
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


positive = ranged(int, 1)
non_negative = ranged(int, 0)
non_negative_float = ranged(float, 0)
positive_float = ranged(float, 0, strict=True)
fraction = ranged(float, 0, 1)


def anti_entropy(text: str) -> tuple[bool, float | None]:
    """`on`, `off`, or an interval in seconds (which means on): (enabled, interval or None)."""
    if text in ("on", "off"):
        return text == "on", None
    return True, positive_float(text)


def add_spec(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options that describe a new cluster (`up`, and the dashboard when it starts one)."""
    d = ClusterSpec()
    parser.add_argument("--nodes", type=positive, default=d.nodes,
                        help="data nodes n1..nN (default: %(default)s)")
    parser.add_argument("--replicas", type=positive, default=d.replicas,
                        help="N, copies of each key (default: %(default)s)")
    parser.add_argument("--write-quorum", type=positive, default=d.write_quorum,
                        help="W, acknowledgements a write waits for (default: %(default)s)")
    parser.add_argument("--read-quorum", type=positive, default=d.read_quorum,
                        help="R, replies a read waits for (default: %(default)s)")
    parser.add_argument("--port", type=positive, default=DEFAULT_PORT,
                        help="the proxy's port; nodes take the ports after it "
                             "(default: %(default)s)")
    parser.add_argument("--vnodes", type=positive, default=d.vnodes,
                        help="virtual nodes per node on the ring (default: %(default)s)")
    parser.add_argument("--durability", choices=("fsync", "none"), default=d.durability,
                        help="fsync: a write is acknowledged once on disk; none: skip fsync "
                             "(default: %(default)s)")
    parser.add_argument("--stream-rate", type=non_negative_float, default=d.stream_rate_mb_s,
                        metavar="MB/S",
                        help="during add-node, remove-node and replace-node, each source "
                             "node streams the ranges that move at most this fast, so a move "
                             "leaves room for traffic; 0: unthrottled (default: %(default)g)")
    parser.add_argument("--protect-data", action="store_true", default=d.protect_data,
                        help="the data API (/get, /set, /delete, /kv/*) and /cluster/keys/* "
                             "need the cluster's secret too, as the routes that change the "
                             "ring or break links always do (kvlab's own commands send it)")
    # A group of its own, unless the caller's options are a group already (argument
    # groups don't nest).
    heal = parser.add_argument_group(
        "healing", "how replicas that missed writes catch up without a client reading"
    ) if isinstance(parser, argparse.ArgumentParser) else parser
    heal.add_argument("--hints", type=on_off, default=d.hints, metavar="on|off",
                      help="hinted handoff: a write a replica missed is kept on the next node "
                           "clockwise past its replicas and handed over when it is back "
                           "(default: on)")
    heal.add_argument("--sloppy", action="store_true", default=d.sloppy,
                      help="sloppy quorum: those hints count toward W, so writes succeed "
                           "with most replicas down, at the price of R + W > N (a write may "
                           "then be invisible to reads until its hints are handed over); "
                           "per write: ?sloppy=1|0")
    heal.add_argument("--anti-entropy", type=anti_entropy, default=(d.anti_entropy, None),
                      metavar="on|off|SECONDS",
                      help="replicas of each range compare hash trees every SECONDS (on: "
                           f"every {d.anti_entropy_s:g}) and repair what differs, so even "
                           "a wiped node refills (default: on)")
    heal.add_argument("--tombstone-grace", type=non_negative_float, metavar="SECONDS",
                      default=d.tombstone_grace_s,
                      help="a delete's tombstone is purged this long after the delete (and no "
                           "sooner than the hint window plus the clock bound), once "
                           "anti-entropy has seen it on every replica, so even a replica down "
                           "for longer can't bring the key back (default: %(default)g, a day)")
    heal.add_argument("--hint-window", type=non_negative_float, metavar="SECONDS",
                      default=d.hint_window_s,
                      help="hints older than this are dropped, not handed over: a node down "
                           "longer is refilled by anti-entropy (default: %(default)g, 3 h)")
    heal.add_argument("--max-clock-ahead", type=non_negative_float, metavar="SECONDS",
                      default=d.max_clock_ahead_s,
                      help="nodes refuse writes stamped further ahead of their clock, and "
                           "the proxy doesn't follow such versions; tombstones wait this "
                           "long past the hint window too (default: %(default)g)")


def spec_from(args: argparse.Namespace) -> ClusterSpec:
    from kvlab.cli import UsageError

    anti_entropy_on, interval = args.anti_entropy
    try:
        return ClusterSpec(name=args.name, nodes=args.nodes, replicas=args.replicas,
                           write_quorum=args.write_quorum, read_quorum=args.read_quorum,
                           port=args.port, vnodes=args.vnodes, durability=args.durability,
                           hints=args.hints, sloppy=args.sloppy, anti_entropy=anti_entropy_on,
                           anti_entropy_s=interval or ClusterSpec.anti_entropy_s,
                           tombstone_grace_s=args.tombstone_grace,
                           hint_window_s=args.hint_window,
                           max_clock_ahead_s=args.max_clock_ahead,
                           stream_rate_mb_s=args.stream_rate,
                           protect_data=args.protect_data)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
