"""Options and helpers shared by several subcommands."""

from __future__ import annotations

import argparse

from kvlab.cluster.spec import DEFAULT_NAME, DEFAULT_PORT, ClusterSpec


def add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help="which cluster (a folder under $KVLAB_HOME, default ~/.kvlab); "
                             "default: %(default)s")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_spec(parser: argparse.ArgumentParser) -> None:
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


def spec_from(args: argparse.Namespace) -> ClusterSpec:
    from kvlab.cli import UsageError

    try:
        return ClusterSpec(name=args.name, nodes=args.nodes, replicas=args.replicas,
                           write_quorum=args.write_quorum, read_quorum=args.read_quorum,
                           port=args.port, vnodes=args.vnodes, durability=args.durability)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
