"""The deterministic simulator: the core protocol on a virtual clock and seeded network.

One seed replays one run exactly. Two levels:

- `World(config, seed)`: a cluster you can step and break.
  `advance(ms)` runs virtual time; `submit(f, key, value, coordinator=, quorum=,
  callback=)` starts a read, write or delete; `inspect(key)` asks each replica through the
  core; `replica_records(key)` reads the stores directly; `crash/restart/pause/resume(node)`,
  `partition(a, b, both=)`, `heal()`, `skew(coordinator, ms)`, `set_loss(p)` inject
  faults; `nodes()`, `coordinators()`, `recent_ops()`, `now_ms` describe it.
- `Simulation(options)`: a world plus a chaos workload and nemesis, recording a history:
  `run()` plays it out, `advance(ms)` steps it, `.world` is the world above.
"""

from kvlab.sim.network import Latency
from kvlab.sim.runner import SimOptions, SimResult, Simulation, run
from kvlab.sim.world import CoordinatorView, NodeView, OpView, World, WorldConfig

__all__ = ["CoordinatorView", "Latency", "NodeView", "OpView", "SimOptions", "SimResult",
           "Simulation", "World", "WorldConfig", "run"]
