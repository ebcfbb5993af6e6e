"""`kvlab ui` (and `kvlab` alone): the dashboard, on a running cluster, a fresh one, or a
simulated one (`--sim`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from kvlab.cli import EXIT_OK, EXIT_UNAVAILABLE, UsageError
from kvlab.cli.options import add_name, add_spec, positive_float, spec_from
from kvlab.cli.signals import interrupt_on_termination, on_termination

if TYPE_CHECKING:
    from kvlab.tui.app import KvlabApp

DEFAULT_SEED = 7


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui", help="open the dashboard (the default command)",
        description="Watch and break a cluster: the ring, every node, one key's replicas, "
                    "built-in traffic and an event log. Attaches to the cluster --name if "
                    "it runs (and leaves it running on quit); otherwise starts one from the "
                    "options below and stops it on quit. With --sim it watches a simulated "
                    "cluster inside this process instead: nothing is started, the same "
                    "seed replays the same run, and virtual time runs at --speed.")
    add_name(p)
    add_spec(p)
    sim = p.add_argument_group("simulation (--nodes, --replicas, the quorums and --vnodes "
                               "shape the simulated cluster too)")
    sim.add_argument("--sim", action="store_true",
                     help="watch a deterministic simulated cluster: no processes, no ports")
    sim.add_argument("--seed", type=int, default=None,
                     help=f"the simulation's seed (default: {DEFAULT_SEED})")
    sim.add_argument("--speed", type=positive_float, default=None,
                     help="virtual seconds per wall-clock second, e.g. 0.1 to watch an "
                          "operation unfold (default: 1)")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    if args.sim:
        _run(sim_app(args))
        return EXIT_OK
    if args.seed is not None or args.speed is not None:
        raise UsageError("--seed and --speed shape a simulation: add --sim")

    from kvlab.cluster.supervisor import ClusterError
    from kvlab.tui.app import make_app
    from kvlab.tui.live import LiveSource, attach_or_start

    spec = spec_from(args)
    # Until the app runs, a termination signal unwinds through `attach_or_start`, which
    # stops whatever it had started.
    interrupt_on_termination()
    try:
        with attach_or_start(spec, announce=lambda line: print(line, flush=True)):
            _run(make_app(LiveSource(spec.name)))
    except ClusterError as exc:
        print(f"kvlab: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


def sim_app(args: argparse.Namespace, **options: Any) -> KvlabApp:
    """The dashboard on a simulated cluster shaped by `args` (the CLI and its tests use
    this); `options` go to `make_app`."""
    from kvlab.sim.world import WorldConfig
    from kvlab.tui.app import make_app
    from kvlab.tui.sim_source import SimSource

    spec = spec_from(args)  # the same checks as a real cluster's shape
    config = WorldConfig(nodes=spec.nodes, replicas=spec.replicas, r=spec.read_quorum,
                         w=spec.write_quorum, vnodes=spec.vnodes, timeout_ms=spec.timeout_ms)
    seed = DEFAULT_SEED if args.seed is None else args.seed
    source = SimSource(config, seed=seed, speed=1.0 if args.speed is None else args.speed)
    return make_app(source, clock=source.time, **options)


def _run(app: KvlabApp) -> None:
    # A closed terminal (SIGHUP) or `kill` (SIGTERM) quits like `q`, so a cluster this
    # command started is stopped on the way out.
    on_termination(lambda *_: app.call_later(app.action_quit))
    app.run()
