"""One scripted scenario on the simulator and on a real cluster: clients see the same thing.

Both drivers run the same `kvlab.core`, so the same operations and faults (kill, pause,
restart, partition) must give the same client-visible outcomes, value for value.
"""

from __future__ import annotations

import asyncio

from kvlab.chaos.live import perform
from kvlab.chaos.workload import Op
from kvlab.client import AsyncKV
from kvlab.core.messages import OK, Outcome
from kvlab.core.ring import Ring
from kvlab.sim.world import World, WorldConfig
from tests.cluster_helpers import real_cluster

NODES = tuple(f"n{i}" for i in range(1, 6))
RING = Ring(NODES, 64)


def replica(key: str, index: int) -> str:
    return RING.preference_list(key, 3)[index]


# (action, key, value-or-replica-index)
SCENARIO = [
    ("write", "k", "a"), ("read", "k", None),
    ("kill", "k", 0), ("write", "k", "b"), ("read", "k", None),
    ("pause", "k", 1), ("read", "k", None), ("write", "k", "c"),
    ("resume", "k", 1), ("restart", "k", 0), ("read", "k", None),
    ("delete", "k", None), ("read", "k", None), ("read", "never-written", None),
    ("kill", "z", 0), ("kill", "z", 1), ("read", "z", None), ("write", "z", "x"),
    ("restart", "z", 0), ("restart", "z", 1),
    ("partition", "p", 0), ("partition", "p", 1), ("read", "p", None),
    ("heal", "p", 0), ("heal", "p", 1), ("write", "p", "y"), ("read", "p", None),
]
OPS = ("read", "write", "delete")


def run_on_simulator() -> list[tuple[str, str | None]]:
    world = World(WorldConfig(nodes=5, replicas=3, r=2, w=2, vnodes=64), seed=1)
    results = []
    for action, key, arg in SCENARIO:
        if action in OPS:
            box: list[Outcome] = []
            value = arg.encode() if action == "write" else None
            world.submit(action, key, value, callback=box.append)
            while not box:
                world.advance(5)
            out = box[0]
            read = (out.record.value.decode() if action == "read" and out.status == OK
                    else None)
            results.append((out.status, read))
            world.advance(50)  # let late replies and repairs land, as real time would
            continue
        node = replica(key, arg)
        if action == "partition":
            world.partition("c1", node)
        elif action == "heal":
            world.heal("c1", node)
        else:
            {"kill": world.crash, "pause": world.pause, "resume": world.resume,
             "restart": world.restart}[action](node)
        world.advance(50)
    return results


async def run_on_real_cluster(cluster) -> list[tuple[str, str | None]]:
    results = []
    async with AsyncKV(cluster.url, secret=cluster.secret) as kv:
        for action, key, arg in SCENARIO:
            if action in OPS:
                results.append(await perform(kv, Op(0, action, key, arg)))
                await asyncio.sleep(0.05)  # as the simulator: late replies and repairs land
                continue
            node = replica(key, arg)
            if action in ("partition", "heal"):
                await kv.partition(node, action == "partition")
            else:
                await asyncio.to_thread(getattr(cluster, action), node)
    return results


async def test_simulator_and_real_cluster_agree(module_home):
    simulated = run_on_simulator()
    with real_cluster(nodes=5) as cluster:
        real = await run_on_real_cluster(cluster)
    steps = [s for s in SCENARIO if s[0] in OPS]
    for step, sim, live in zip(steps, simulated, real):
        assert sim == live, f"{step}: simulator {sim}, real cluster {live}"
    # The scenario really exercised every kind of outcome.
    assert {status for status, _ in real} == {"ok", "not_found", "unavailable", "timeout"}
