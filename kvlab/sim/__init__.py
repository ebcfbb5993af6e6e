"""The deterministic simulator: the core protocol on a virtual clock and seeded network.

`World` is a cluster you can step and break; `Simulation` adds a chaos workload and
nemesis and records a history. One seed replays one run exactly.
"""

from kvlab.sim.network import Latency
from kvlab.sim.runner import SimOptions, SimResult, Simulation, run
from kvlab.sim.world import NodeView, OpView, World, WorldConfig

__all__ = ["Latency", "NodeView", "OpView", "SimOptions", "SimResult", "Simulation", "World",
           "WorldConfig", "run"]
