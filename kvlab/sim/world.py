"""A whole simulated cluster in one process: nodes, proxies, network and virtual clock.

`World` is the stepping interface: build it, start operations, inject faults, `advance` the
virtual clock, and read its state. The simulation runner drives it at full speed; a
dashboard can drive it at a watchable pace.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kvlab.core.coordinator import Coordinator, Quorum
from kvlab.core.messages import Outcome
from kvlab.core.record import Record
from kvlab.core.ring import DEFAULT_VNODES, Ring
from kvlab.sim.clock import US_PER_MS, EventQueue
from kvlab.sim.network import Latency, Network
from kvlab.sim.node import SimNode
from kvlab.sim.proxy import INSPECT, SimCoordinator


@dataclass(frozen=True)
class WorldConfig:
    """The shape of a simulated cluster and its hardware."""

    nodes: int = 5
    replicas: int = 3
    r: int = 2
    w: int = 2
    coordinators: int = 1
    timeout_ms: int = 1000
    vnodes: int = DEFAULT_VNODES
    latency: Latency = field(default_factory=Latency)
    loss: float = 0.0
    fsync: Latency = field(default_factory=lambda: Latency(base_us=300, jitter_us=200))
    # Where the coordinators' clocks start (ms since the Unix epoch): versions look like
    # real ones, and a clock skewed behind the start doesn't go negative.
    epoch_ms: int = 1_700_000_000_000

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if self.coordinators < 1:
            raise ValueError("a cluster needs at least one coordinator")
        if self.timeout_ms < 1:
            raise ValueError("the timeout must be at least 1 ms")
        Quorum(self.replicas, self.r, self.w)  # raises ValueError on a bad quorum


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    state: str  # "up" | "down" | "paused"
    keys: int  # live keys in its store (tombstones not counted)
    pending_writes: int  # received, not yet durable
    queued: int  # requests waiting for a paused node
    lost_writes: int  # unpersisted writes lost to crashes so far


@dataclass(frozen=True, slots=True)
class CoordinatorView:
    name: str
    skew_ms: float  # how far its clock runs ahead of true time (negative: behind)
    pending: int  # client operations in progress


@dataclass(frozen=True, slots=True)
class OpView:
    """A finished client operation, for a "recent operations" panel."""

    coordinator: str
    f: str
    key: str
    value: bytes | None  # written, or read
    started_ms: int  # virtual time (unskewed)
    finished_ms: int
    outcome: Outcome


class World:
    """A cluster of `SimNode`s behind `SimCoordinator`s, on one seeded network."""

    def __init__(self, config: WorldConfig | None = None, seed: int = 0,
                 recent: int = 100) -> None:
        self.config = config = config or WorldConfig()
        self.seed = seed
        self.clock = EventQueue()
        # Separate streams, so that (say) adding disk jitter doesn't reshuffle the network.
        self.network = Network(self.clock, random.Random(f"{seed}:network"), config.latency,
                               config.loss)
        fsync = config.fsync.sampler(random.Random(f"{seed}:disk"))
        names = tuple(f"n{i}" for i in range(1, config.nodes + 1))
        self.ring = Ring(names, config.vnodes)
        quorum = Quorum(config.replicas, config.r, config.w)
        self._nodes: dict[str, SimNode] = {}
        self._proxies: dict[str, SimCoordinator] = {}
        for name in names:
            self._nodes[name] = SimNode(name, self.clock, self.network, self._proxies, fsync)
        for i in range(1, config.coordinators + 1):
            core = Coordinator(f"c{i}", self.ring, quorum, config.timeout_ms)
            self._proxies[core.name] = SimCoordinator(core, self.clock, self.network,
                                                      self._nodes, config.epoch_ms)
        self._recent: deque[tuple] = deque(maxlen=recent)

    # -- time ----------------------------------------------------------------------------

    @property
    def now_ms(self) -> float:
        """Virtual time since the world began (the unskewed, true time)."""
        return self.clock.now / US_PER_MS

    def advance(self, ms: float) -> int:
        """Run the world for `ms` of virtual time; returns how many events ran."""
        return self.clock.run_until(self.clock.now + round(ms * US_PER_MS))

    # -- operations ----------------------------------------------------------------------

    @property
    def coordinator_names(self) -> list[str]:
        return list(self._proxies)

    @property
    def node_names(self) -> list[str]:
        return list(self._nodes)

    def coordinator(self, which: int | str = 0) -> SimCoordinator:
        """A proxy by index or name."""
        return self._proxies[which if isinstance(which, str) else f"c{which + 1}"]

    def submit(self, f: str, key: str, value: bytes | None = None, *,
               coordinator: int | str = 0, quorum: int | None = None,
               callback: Callable[[Outcome], object] | None = None) -> int:
        """Start `f` ("read", "write", "delete") on `key`; `callback(outcome)` when done.

        `quorum` overrides R (reads) or W (writes and deletes) for this operation only.
        """
        proxy = self.coordinator(coordinator)
        started = self.clock.now
        recent = self._recent

        def done(outcome: Outcome) -> None:
            # A plain tuple here; `recent_ops` builds the views only when someone looks.
            recent.append((proxy.name, f, key, value, started, self.clock.now, outcome))
            if callback is not None:
                callback(outcome)

        return proxy.start(f, key, value, done, quorum)

    def inspect(self, key: str, coordinator: int | str = 0) -> Outcome:
        """Each replica's own record of `key`, asked through the core's `inspect`.

        This sends real (simulated) messages, so the world runs on until every replica has
        answered or the deadline passed, and the run's later randomness shifts.
        """
        result: list[Outcome] = []

        def done(outcome: Outcome) -> None:
            result.append(outcome)
            self.clock.halt()

        self.coordinator(coordinator).start(INSPECT, key, None, done)
        deadline = self.clock.now + (self.config.timeout_ms + 1) * US_PER_MS
        while not result and self.clock.now < deadline:
            self.clock.run_until(deadline)
        return result[0]

    def replica_records(self, key: str) -> dict[str, Record | None]:
        """What each replica of `key` holds durably, read straight from the stores."""
        return {n: self._nodes[n].store.get(key)
                for n in self.ring.preference_list(key, self.config.replicas)}

    # -- faults --------------------------------------------------------------------------

    def crash(self, node: str) -> int:
        """Kill a node process; returns how many unpersisted writes it lost."""
        return self._nodes[node].crash()

    def restart(self, node: str) -> None:
        self._nodes[node].restart()

    def pause(self, node: str) -> None:
        self._nodes[node].pause()

    def resume(self, node: str) -> None:
        self._nodes[node].resume()

    def partition(self, a: str, b: str, both: bool = True) -> None:
        """Cut a -> b (and b -> a when `both`); endpoints are node or coordinator names."""
        self.network.cut(a, b, both)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        self.network.heal(a, b)

    def skew(self, coordinator: int | str, ms: float) -> None:
        """Set a coordinator's clock to run `ms` ahead (negative: behind) of true time."""
        self.coordinator(coordinator).skew_us = round(ms * US_PER_MS)

    def set_loss(self, loss: float) -> None:
        self.network.set_loss(loss)

    # -- views ---------------------------------------------------------------------------

    def nodes(self) -> list[NodeView]:
        return [NodeView(n.name, n.state, n.store.count(), n.pending_writes, n.queued,
                         n.lost_writes) for n in self._nodes.values()]

    def coordinators(self) -> list[CoordinatorView]:
        return [CoordinatorView(p.name, p.skew_us / US_PER_MS, p.pending)
                for p in self._proxies.values()]

    def node(self, name: str) -> SimNode:
        return self._nodes[name]

    def recent_ops(self) -> list[OpView]:
        """The last finished client operations, oldest first."""
        views = []
        for proxy, f, key, value, started, finished, outcome in self._recent:
            if f == "read":
                record = outcome.record
                value = record.value if record is not None else None
            views.append(OpView(proxy, f, key, value, started // US_PER_MS,
                                finished // US_PER_MS, outcome))
        return views
