"""The simulated source shows each node's healing counters, as the live one does."""

from __future__ import annotations

from kvlab.sim.world import WorldConfig
from kvlab.tui.sim_source import SimSource


async def test_nodes_carry_their_replicas_healing_counters() -> None:
    now = [0.0]
    source = SimSource(WorldConfig(nodes=5), seed=7, clock=lambda: now[0], budget_s=None)
    try:
        world = source.world
        victim = world.ring.preference_list("k", 3)[0]
        world.crash(victim)
        world.submit("write", "k", b"v")
        world.advance(5)
        view = await source.snapshot()
        by_name = {n.name: n for n in view.nodes}
        assert by_name[victim].healing is None  # a node that is down reports nothing
        assert sum(n.hints for n in view.nodes if n.name != victim) == 1
        holder = next(n for n in view.nodes if n.hints)
        assert holder.healing.hints_for(victim) == 1
        world.restart(victim)
        world.advance(6000)  # the hint is handed over; anti-entropy rounds run
        view = await source.snapshot()
        by_name = {n.name: n for n in view.nodes}
        assert by_name[victim].healing.repaired_by("hint") == 1
        assert all(n.hints == 0 and n.healing.ae_rounds > 0 for n in view.nodes)
    finally:
        await source.close()
