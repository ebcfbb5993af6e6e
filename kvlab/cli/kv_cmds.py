"""`kvlab set|get|del`: use the store from the shell."""

from __future__ import annotations

import argparse
import json
import sys

from kvlab.cli import EXIT_NOT_FOUND, EXIT_OK, UsageError
from kvlab.cli.options import add_name, positive
from kvlab.client import KV, BadRequest, KeyNotFound, KVError, Result
from kvlab.client.client import DEFAULT_URL
from kvlab.cluster.supervisor import Cluster, ClusterError, NoCluster


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("set", help="store a value", description="Store VALUE under KEY "
                       "(VALUE '-' reads standard input). Prints OK once W replicas have it.")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    _common(p, "w", "write quorum for this request (default: the cluster's W)")
    _sloppy(p)
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("get", help="print a value",
                       description="Print KEY's value. Exit 1 if it does not exist, 3 if the "
                                   "cluster can't answer.")
    p.add_argument("key", metavar="KEY")
    _common(p, "r", "read quorum for this request (default: the cluster's R)")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("del", help="delete a key", description="Delete KEY (a versioned "
                       "tombstone, so a stale replica can't bring it back).")
    p.add_argument("key", metavar="KEY")
    _common(p, "w", "write quorum for this request (default: the cluster's W)")
    _sloppy(p)
    p.set_defaults(func=cmd_del)


def _common(p: argparse.ArgumentParser, quorum: str, text: str) -> None:
    p.add_argument("--url", help=f"the proxy's URL (default: the --name cluster's, "
                                 f"else {DEFAULT_URL})")
    add_name(p)
    p.add_argument(f"--{quorum}", type=positive, help=text)
    p.add_argument("--json", action="store_true",
                   help="print the result with its version and replicas as JSON")


def _sloppy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sloppy", action=argparse.BooleanOptionalAction, default=None,
                   help="count hints kept on fallback nodes toward W, so the write succeeds "
                        "with most of its replicas down (default: the cluster's setting)")


def _client(args: argparse.Namespace) -> KV:
    """A client of the --name cluster (with its secret, which --protect-data asks for),
    or of the proxy at --url (with the --name cluster's secret if it is that cluster's)."""
    try:
        cluster: Cluster | None = Cluster.load(args.name)
    except NoCluster:
        cluster = None
    except ClusterError as exc:  # a corrupt cluster.json: no matter if --url says where to go
        if not args.url:
            raise UsageError(str(exc)) from None
        cluster = None
    url = args.url or (cluster.url if cluster else DEFAULT_URL)
    secret = cluster.secret if cluster and cluster.url == url.rstrip("/") else None
    try:
        return KV(url, secret=secret)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _report(args: argparse.Namespace, result: Result, text: str) -> int:
    if args.json:
        print(json.dumps({"key": result.key, "value": result.text, "version": result.version,
                          "replicas": result.replicas, "acked": result.acked,
                          "hinted": result.hinted}))
    else:
        print(text)
    return EXIT_OK


def _call(fn, *a):
    # Unavailable propagates to kvlab.cli.main (exit 3); bad input is a usage error.
    try:
        return fn(*a)
    except BadRequest as exc:
        raise UsageError(str(exc)) from None
    except KVError as exc:
        if exc.status != 401:
            raise
        raise UsageError(f"the cluster asks for its secret (it runs with --protect-data): "
                         f"give --name of the cluster rather than --url ({exc})") from None


def cmd_set(args: argparse.Namespace) -> int:
    value = sys.stdin.buffer.read() if args.value == "-" else args.value
    with _client(args) as kv:
        result = _call(kv.set, args.key, value, args.w, args.sloppy)
    return _report(args, result, "OK")


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as kv:
        try:
            result = _call(kv.read, args.key, args.r)
        except KeyNotFound:
            print(f"kvlab: key not found: {args.key}", file=sys.stderr)
            return EXIT_NOT_FOUND
    if args.json:
        return _report(args, result, "")
    sys.stdout.buffer.write(result.value + b"\n")
    sys.stdout.flush()
    return EXIT_OK


def cmd_del(args: argparse.Namespace) -> int:
    with _client(args) as kv:
        result = _call(kv.delete, args.key, args.w, args.sloppy)
    return _report(args, result, "OK")
