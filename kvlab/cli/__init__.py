"""The `kvlab` command line.

Each module in `COMMANDS` owns a group of subcommands: its `register(subparsers)` adds them,
and every subcommand sets `func(args) -> exit code`. Exit codes are a contract:
0 success, 1 key not found, 2 usage error, 3 cluster unavailable.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

COMMANDS = (
    "kvlab.cli.cluster_cmds",
    "kvlab.cli.kv_cmds",
    "kvlab.cli.bench_cmd",
    "kvlab.cli.sim_cmd",
    "kvlab.cli.chaos_cmd",
    "kvlab.cli.ui_cmd",
    "kvlab.cli.check_cmd",
    "kvlab.cli.plan_cmd",
)


class UsageError(Exception):
    """Bad input from the user: printed as `kvlab: error: ...`, exit code 2."""


class Unavailable(Exception):
    """The cluster could not serve the request: printed, exit code 3."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvlab",
        description="A Dynamo-style replicated key-value store you can watch and break.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


DEFAULT_COMMAND = "ui"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    # `kvlab` alone, or with only options (`kvlab --name demo`), opens the dashboard.
    if DEFAULT_COMMAND in commands and (not argv or (
            argv[0].startswith("-") and argv[0] not in ("-h", "--help"))):
        argv = [DEFAULT_COMMAND, *argv]
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    from kvlab.client import KVError
    from kvlab.client import Unavailable as ClientUnavailable
    from kvlab.cluster.supervisor import ClusterError, NoCluster

    try:
        return func(args)
    except UsageError as exc:
        print(f"kvlab: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NoCluster as exc:
        print(f"kvlab: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ClusterError as exc:  # a command that does not say it better itself
        print(f"kvlab: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (Unavailable, ClientUnavailable) as exc:
        print(f"kvlab: unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KVError as exc:  # an answer the command did not expect (--url not a proxy's?)
        text = str(exc)
        detail = f": {text}" if len(text) <= 200 and "\n" not in text else ""  # not a page
        print(f"kvlab: the server answered HTTP {exc.status}{detail}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Its reader left (`kvlab status | head -1`): nothing more to say. Stdout goes to
        # /dev/null, or the flush at exit would fail, and print, again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process killed by SIGPIPE, which Python ignores
