"""Membership changes under traffic on a real cluster lose no acknowledged write.

A fresh 3-node cluster (N=3 R=2 W=2) in a temporary $KVLAB_HOME, started by the supervisor.
Clients write distinct keys (and now and then overwrite one) and read keys already written,
over HTTP to the proxy, while one change after another runs through the supervisor as
`kvlab add-node` / `remove-node` do: by default three nodes are added, then two of the
original nodes removed. Every operation goes into a history (kvlab.chaos.history).

At the end every key with an acknowledged write is read once at R=2 (the first try counts:
a 404 or an error is a miss), those reads join the history, and the linearizability checker
runs on it all. Prints, per move, how long it took and the keys and bytes streamed.

    python scripts/membership_acceptance.py [--keys 3000] [--adds 3] [--removes 2] [--json]

Exit 0 when there is no miss and the history is linearizable; 1 otherwise.
tests/integration/test_membership_cli.py runs a smaller version (marked slow).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

from kvlab.chaos.checker import check
from kvlab.chaos.history import Recorder
from kvlab.chaos.live import perform
from kvlab.chaos.outcomes import history_type
from kvlab.chaos.workload import READ, WRITE, Op
from kvlab.client import AsyncKV
from kvlab.cluster import supervisor
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.spec import ClusterSpec
from kvlab.core.messages import OK

ORIGINAL = 3
OP_TIMEOUT_S = 5.0


@dataclass
class Move:
    kind: str  # add or remove
    node: str
    seconds: float
    keys: int  # records streamed (a key streamed to two new owners counts twice)
    bytes: int
    streams: int


@dataclass
class Outcome:
    keys: int = 0  # distinct keys with an acknowledged write
    ops: int = 0
    ok: int = 0
    failed: int = 0  # certainly did not happen (a read that found no quorum)
    unknown: int = 0  # a write whose outcome is unknown (timeout, no quorum)
    misses: list[str] = field(default_factory=list)  # acknowledged, then not read back
    linearizable: bool | None = None
    violations: list[dict] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.misses and self.linearizable is True


def run(keys: int = 3000, adds: int = 3, removes: int = 2, clients: int = 8,
        reads: float = 0.3, overwrites: float = 0.1, value_bytes: int = 100,
        durability: str = "fsync", seed: int = 1, say=print) -> Outcome:
    """Start a cluster in the current $KVLAB_HOME, run the traffic and the moves, check."""
    if not 0 <= removes <= ORIGINAL:
        raise ValueError(f"can remove at most the {ORIGINAL} original nodes")
    spec = ClusterSpec(name="acceptance", nodes=ORIGINAL, port=free_port_block(
        ORIGINAL + adds + 1), durability=durability)
    with supervisor.running(spec) as cluster:
        say(f"cluster: proxy {cluster.url}, nodes n1..n{ORIGINAL}, N=3 R=2 W=2, "
            f"durability {durability}")
        return asyncio.run(_run(cluster, keys, adds, removes, clients, reads, overwrites,
                                value_bytes, seed, say))


async def _run(cluster: supervisor.Cluster, keys: int, adds: int, removes: int, clients: int,
               reads: float, overwrites: float, value_bytes: int, seed: int, say) -> Outcome:
    recorder = Recorder()
    began = time.monotonic_ns()
    outcome = Outcome()
    written: list[str] = []  # keys a write was started on, in order
    acked: set[str] = set()
    counter = iter(range(10**9))
    moves_done = asyncio.Event()
    first_moves = asyncio.Event()  # enough data in place to make the first move count

    def now() -> int:
        return time.monotonic_ns() - began

    def fresh_value() -> str:  # unique, so the checker can tell every write apart
        tag = f"v{next(counter)}-"
        return tag + "x" * max(0, value_bytes - len(tag))

    async def client(process: int, kv: AsyncKV) -> None:
        rng = random.Random(f"{seed}:{process}")
        while not (moves_done.is_set() and len(written) >= keys):
            roll = rng.random()
            if written and roll < reads:
                op = Op(process, READ, rng.choice(written), None)
            elif written and roll < reads + overwrites:
                op = Op(process, WRITE, rng.choice(written), fresh_value())
            else:
                key = f"key{len(written)}"
                written.append(key)
                op = Op(process, WRITE, key, fresh_value())
            recorder.invoke(process, op.f, op.key, op.value, now())
            status, value = await perform(kv, op)
            kind = history_type(op.f, status)
            recorder.complete(process, kind, value if kind == "ok" else None, now())
            if op.f == WRITE and kind == "ok":
                acked.add(op.key)
            if len(written) >= keys // 3:
                first_moves.set()
            await asyncio.sleep(rng.expovariate(1 / 0.002))

    async def mover() -> None:
        await first_moves.wait()
        plan = [("add", None)] * adds + [("remove", f"n{i}") for i in range(1, removes + 1)]
        try:
            for kind, node in plan:
                started = time.monotonic()
                views: list[dict] = []
                if kind == "add":
                    member = await asyncio.to_thread(cluster.add_node, True, views.append)
                else:
                    member = await asyncio.to_thread(cluster.remove_node, node, True,
                                                     views.append)
                last = views[-1]
                move = Move(kind, member.name, time.monotonic() - started, last["keys"],
                            last["bytes"], last["streams"])
                outcome.moves.append(move)
                say(f"{kind} {move.node}: {move.seconds:.1f} s, {move.keys:,} keys and "
                    f"{move.bytes:,} bytes streamed in {move.streams} streams "
                    f"({len(written):,} keys written so far)")
        finally:
            moves_done.set()

    async with AsyncKV(cluster.url, secret=cluster.secret, timeout=OP_TIMEOUT_S) as kv:
        moving = asyncio.create_task(mover())
        await asyncio.gather(*(client(p, kv) for p in range(clients)))
        await moving
        # Every acknowledged key once, at R=2, in the history too: a stale or lost value
        # fails the checker, a 404 or an error is a miss.
        final = clients
        for key in sorted(acked):
            recorder.invoke(final, READ, key, None, now())
            status, value = await perform(kv, Op(final, READ, key, None), r=2)
            kind = history_type(READ, status)
            recorder.complete(final, kind, value if kind == "ok" else None, now())
            if status != OK or value is None:
                outcome.misses.append(key)
    outcome.seconds = (time.monotonic_ns() - began) / 1e9
    result = check(recorder.events, time_limit=60.0)
    outcome.keys = len(acked)
    outcome.ops, outcome.ok = result.ops, result.ok
    outcome.failed, outcome.unknown = result.fail, result.info
    outcome.linearizable, outcome.violations = result.linearizable, result.violations[:5]
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=3000,
                        help="distinct keys to write, at least (default: %(default)s)")
    parser.add_argument("--adds", type=int, default=3, help="nodes to add (default: 3)")
    parser.add_argument("--removes", type=int, default=2,
                        help="original nodes to remove after the adds (default: 2)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--value-bytes", type=int, default=100, help="size of each value")
    parser.add_argument("--durability", choices=("fsync", "none"), default="fsync")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kvlab-acceptance-") as home:
        os.environ["KVLAB_HOME"] = home
        try:
            outcome = run(args.keys, args.adds, args.removes, args.clients,
                          value_bytes=args.value_bytes, durability=args.durability,
                          seed=args.seed)
        except (supervisor.ClusterError, ValueError) as exc:
            print(f"membership_acceptance: {exc}", file=sys.stderr)
            return 2
    print(f"{outcome.ops:,} operations in {outcome.seconds:.1f} s ({outcome.ok:,} ok, "
          f"{outcome.failed:,} failed, {outcome.unknown:,} unknown); {outcome.keys:,} keys "
          f"acknowledged; read back at R=2: {outcome.keys - len(outcome.misses):,} found, "
          f"{len(outcome.misses)} missed; linearizable: {outcome.linearizable}")
    for violation in outcome.violations:
        print(f"  violation on {violation['key']}: {violation['reason']}")
    if outcome.misses:
        print(f"  missed: {', '.join(outcome.misses[:20])}")
    if args.json:
        print(json.dumps({**asdict(outcome), "passed": outcome.passed}))
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
