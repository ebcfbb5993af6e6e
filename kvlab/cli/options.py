"""Options and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from kvlab.cluster.spec import DEFAULT_NAME, DEFAULT_PORT, ClusterSpec


def add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=DEFAULT_NAME,
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
