"""`kvlab ui` (and `kvlab` alone): the dashboard, on a running cluster or a fresh one."""

from __future__ import annotations

import argparse
import signal
import sys

from kvlab.cli import EXIT_OK, EXIT_UNAVAILABLE
from kvlab.cli.options import add_name, add_spec, spec_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui", help="open the dashboard (the default command)",
        description="Watch and break a cluster: the ring, every node, one key's replicas, "
                    "built-in traffic and an event log. Attaches to the cluster --name if "
                    "it runs (and leaves it running on quit); otherwise starts one from the "
                    "options below and stops it on quit.")
    add_name(p)
    add_spec(p)
    p.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    from kvlab.cluster.supervisor import ClusterError
    from kvlab.tui.app import make_app
    from kvlab.tui.live import LiveSource, attach_or_start

    spec = spec_from(args)
    try:
        with attach_or_start(spec, announce=lambda line: print(line, flush=True)):
            app = make_app(LiveSource(spec.name))
            # A closed terminal (SIGHUP) or `kill` (SIGTERM) quits like `q`, so the
            # cluster this command started is stopped on the way out.
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, lambda *_: app.call_later(app.action_quit))
            app.run()
    except ClusterError as exc:
        print(f"kvlab: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK
