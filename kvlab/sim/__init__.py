"""The deterministic simulator: the core protocol on a virtual clock and seeded network.

One seed replays one run exactly. `World(config, seed)` is a cluster you can step and break:
`advance(ms)` runs virtual time; `submit(f, key, value, coordinator=, quorum=, callback=)`
starts a read, write or delete; `inspect(key)` asks each replica through the core;
`replica_records(key)` reads the stores directly; `crash/restart/pause/resume(node)`,
`wipe(node)`, `restart_coordinator(name, skew_ms=, keep_clock=)`, `partition(a, b, both=)`, `heal()`,
`skew(process, ms)`, `set_loss(p)` inject faults; `nodes()`, `coordinators()`,
`recent_ops()`, `under_replicated()`, `now_ms` describe it.

Membership changes (`add_node()`, `remove_node(name)`, `replace_node(old)`) and node health
(`health(node)`) come from the core's committer; `kvlab.sim.world` says how.

Nodes run the core `Replica` (hinted handoff, anti-entropy, tombstone purges) and
coordinators the core `Coordinator`; `WorldConfig` switches the healing mechanisms.

A chaos run on a world (workload, nemesis, history) is `kvlab.chaos.simulation`: the
simulator is a driver and does not import the chaos lab that uses it.
"""

from kvlab.sim.network import Latency
from kvlab.sim.world import CoordinatorView, NodeView, OpView, World, WorldConfig

__all__ = ["CoordinatorView", "Latency", "NodeView", "OpView", "World", "WorldConfig"]
