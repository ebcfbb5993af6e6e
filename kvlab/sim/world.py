"""A whole simulated cluster in one process: nodes, proxies, network and virtual clock.

`World` is the stepping interface: build it, start operations, inject faults, `advance` the
virtual clock, and read its state. The simulation runner drives it at full speed; a
dashboard can drive it at a watchable pace.

Every process is an endpoint of one `Network`, known by its name: coordinators talk to
nodes, and nodes to each other (anti-entropy, hint replay, purges). Each process keeps its
own clock: virtual time plus the world's epoch, plus its own skew.

Membership comes from the core: the first coordinator runs the committer (`Membership`,
driven by `kvlab.sim.committer`), which heartbeats every node, holds the failure
detector's verdicts (`health(node)`) and carries out ring changes in steps:
`add_node()`, `remove_node(name)`, `replace_node(old)` (each raises `MembershipError` when
refused). A node a change took out of the ring is stopped once it is done; names are never
reused.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kvlab.core.coordinator import Coordinator, Quorum
from kvlab.core.membership import Change, Membership, MembershipError
from kvlab.core.messages import Outcome
from kvlab.core.record import Record
from kvlab.core.replica import HOUR_MS, ReplicaConfig
from kvlab.core.ring import DEFAULT_VNODES, Ring
from kvlab.core.version import MAX_AHEAD_MS, Version
from kvlab.sim.clock import US_PER_MS, EventQueue
from kvlab.sim.committer import SimCommitter
from kvlab.sim.network import Latency, Network
from kvlab.sim.node import SimNode
from kvlab.sim.proxy import DELETE, INSPECT, WRITE, SimCoordinator


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
    # Where every process's clock starts (ms since the Unix epoch): versions look like
    # real ones, and a clock skewed behind the start doesn't go negative.
    epoch_ms: int = 1_700_000_000_000
    # Healing, as `ReplicaConfig` and the coordinators take it (the cluster's defaults).
    hints: bool = True  # hinted handoff: fallback nodes keep writes a primary missed
    sloppy: bool = False  # writes count hints toward W (a sloppy quorum)
    anti_entropy: bool = True  # replicas compare hash trees and repair what differs
    anti_entropy_ms: int = 5_000  # each (range, peer) pair compared this often, per side
    tombstone_grace_ms: int = 24 * HOUR_MS
    hint_window_ms: int = 3 * HOUR_MS  # hints older than this are dropped
    # Nodes refuse writes stamped further ahead of their clock; coordinators ignore such
    # versions.
    max_ahead_ms: int = MAX_AHEAD_MS

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if self.coordinators < 1:
            raise ValueError("a cluster needs at least one coordinator")
        if self.timeout_ms < 1:
            raise ValueError("the timeout must be at least 1 ms")
        Quorum(self.replicas, self.r, self.w)  # raises ValueError on a bad quorum
        self.replica_config()  # and on bad healing settings
        if self.sloppy and not self.hints:
            raise ValueError("a sloppy quorum counts hints toward W: it needs hints on")

    def replica_config(self) -> ReplicaConfig:
        """What each node's `Replica` is built with."""
        return ReplicaConfig(
            n=self.replicas, hints=self.hints, anti_entropy=self.anti_entropy,
            anti_entropy_ms=self.anti_entropy_ms, tombstone_grace_ms=self.tombstone_grace_ms,
            hint_window_ms=self.hint_window_ms, max_ahead_ms=self.max_ahead_ms)


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    state: str  # "up" | "down" | "paused"
    keys: int  # live keys in its store (tombstones not counted)
    pending_writes: int  # received, not yet durable
    queued: int  # messages waiting for a paused node
    lost_writes: int  # unpersisted writes lost to crashes so far
    hints_held: int = 0  # hints its current process keeps for other nodes
    # The replica's healing counters since the node was built (see `SimNode.healing`):
    # hints stored, replayed and expired, anti-entropy rounds, repairs by mechanism,
    # writes superseded and refused, tombstones purged and held.
    healing: dict = field(default_factory=dict)
    health: str = "up"  # the failure detector's verdict: "up" | "suspect" | "down"


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
        ring = Ring(names, config.vnodes)
        self._quorum = Quorum(config.replicas, config.r, config.w)
        self._replica_config = config.replica_config()
        self._fsync = fsync
        self._nodes: dict[str, SimNode] = {}
        self._retired: dict[str, SimNode] = {}  # removed or replaced: stopped, never reused
        self._proxies: dict[str, SimCoordinator] = {}
        for name in names:
            self._nodes[name] = self._node(name, ring)
        for i in range(1, config.coordinators + 1):
            self._proxies[f"c{i}"] = self._coordinator(f"c{i}", 0, ring)
        # The first coordinator is the committer of ring changes; the others follow it.
        first = self.coordinator(0)
        self.membership = Membership(first.core)
        for proxy in list(self._proxies.values())[1:]:
            self.membership.attach(proxy.core)
        self._committer = SimCommitter(self.membership, first, self.clock, config.epoch_ms,
                                       self._change_done)
        self._committer.perform([])  # its first heartbeat, now
        self._recent: deque[tuple] = deque(maxlen=recent)
        self._written: dict[str, None] = {}  # every key ever written or deleted, in order

    def _node(self, name: str, ring: Ring) -> SimNode:
        return SimNode(name, self.clock, self.network, ring, self._replica_config,
                       self._fsync, self.config.epoch_ms)

    def _coordinator(self, name: str, skew_us: int, ring: Ring) -> SimCoordinator:
        config = self.config
        core = Coordinator(name, ring, self._quorum, config.timeout_ms, hints=config.hints,
                           max_ahead_ms=config.max_ahead_ms)
        return SimCoordinator(core, self.clock, self.network, config.epoch_ms, skew_us,
                              sloppy=config.sloppy)

    @property
    def ring(self) -> Ring:
        """The ring reads are placed by (the one being left, during a change)."""
        return self.membership.topology.ring

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
               callback: Callable[[Outcome], object] | None = None,
               sloppy: bool | None = None) -> int:
        """Start `f` ("read", "write", "delete") on `key`; `callback(outcome)` when done.

        `quorum` overrides R (reads) or W (writes and deletes) for this operation only;
        `sloppy` asks a write for a sloppy quorum (by default, as `WorldConfig.sloppy`).
        """
        proxy = self.coordinator(coordinator)
        started = self.clock.now
        recent = self._recent
        if f in (WRITE, DELETE):
            self._written[key] = None

        def done(outcome: Outcome) -> None:
            # A plain tuple here; `recent_ops` builds the views only when someone looks.
            recent.append((proxy.name, f, key, value, started, self.clock.now, outcome))
            if callback is not None:
                callback(outcome)

        return proxy.start(f, key, value, done, quorum, sloppy)

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

    # -- membership ----------------------------------------------------------------------

    def add_node(self, name: str | None = None) -> str:
        """Start a new, empty node and begin its join; returns its name (by default the
        next never used `n{k}`). Raises `MembershipError` if the change is refused."""
        name = self._new_name(name)
        self._check_change()
        ring = self.ring.with_node(name)
        self._nodes[name] = self._node(name, ring)
        try:
            self._committer.perform(self.membership.add(name, self._committer.now_ms()))
        except MembershipError:
            self._discard(name)
            raise
        return name

    def remove_node(self, name: str) -> None:
        """Decommission `name`: its ranges stream to their new owners, then it is stopped.
        Raises `MembershipError` if refused (unknown node, below N, a change running)."""
        self._committer.perform(self.membership.remove(name, self._committer.now_ms()))

    def replace_node(self, old: str, new: str | None = None) -> str:
        """A new, empty node takes `old`'s place and ranges, streamed from the other
        replicas (`old` is taken as dead: it is stopped once the change is done)."""
        if old not in self.ring.nodes:
            raise MembershipError(f"no node {old} in the ring")
        new = self._new_name(new)
        self._check_change()
        self._nodes[new] = self._node(new, self.ring.replacing(old, new))
        try:
            self._committer.perform(self.membership.replace(old, new,
                                                            self._committer.now_ms()))
        except MembershipError:
            self._discard(new)
            raise
        return new

    def health(self, node: str) -> str:
        """The failure detector's verdict on `node`: "up", "suspect" or "down"."""
        return str(self.membership.health(node, self._committer.now_ms()))

    def membership_view(self) -> dict:
        """`Membership.view` now, on the committer's clock: what a real proxy's `/cluster`
        has as "membership" (each node's health and phi, the change in progress)."""
        return self.membership.view(self._committer.now_ms())

    def _new_name(self, name: str | None) -> str:
        if name is None:
            k = len(self._nodes) + len(self._retired) + 1
            while f"n{k}" in self._nodes or f"n{k}" in self._retired:
                k += 1
            return f"n{k}"
        if name in self._nodes or name in self._retired or name in self._proxies:
            raise MembershipError(f"the name {name} is taken (names are never reused)")
        return name

    def _check_change(self) -> None:
        """Refuse before a node is started for a change that can't begin."""
        change = self.membership.change
        if change is not None:
            raise MembershipError(f"a change is in progress ({change.kind} {change.node}, "
                                  f"{change.phase}): wait for it")

    def _discard(self, name: str) -> None:
        node = self._nodes.pop(name)
        node.crash()
        self._retired[name] = node

    def _change_done(self, change: Change) -> None:
        """A node the finished change took out of the ring is stopped (decommissioned)."""
        for name in change.leaving:
            if name in self._nodes and name not in self.ring.nodes:
                self._discard(name)

    # -- faults --------------------------------------------------------------------------

    def crash(self, node: str) -> int:
        """Kill a node process; returns how many unpersisted writes it lost."""
        return self._nodes[node].crash()

    def restart(self, node: str) -> None:
        self._nodes[node].restart()

    def wipe(self, node: str) -> int:
        """The node loses its disk: killed (if running), its store emptied, and started
        again at once as a replaced machine, empty, to be refilled by hinted handoff,
        anti-entropy and read repair. Returns the unpersisted writes the kill lost."""
        sim = self._nodes[node]
        lost = sim.crash()
        sim.wipe()
        sim.restart()
        return lost

    def restart_coordinator(self, name: int | str, skew_ms: float = 0,
                            keep_clock: bool = True) -> SimCoordinator:
        """Restart a proxy: a fresh `Coordinator` with no memory, whose clock is stepped by
        `skew_ms` from the old one's (negative: back). Operations in progress end unknown
        (a timeout); replies to them are lost with the old process's connections.

        `keep_clock`: it starts above its last run's clock high-water mark, as a real proxy
        does from its state folder; False models a proxy that lost that folder (its hybrid
        clock starts from nothing: only Superseded answers keep its writes from losing).
        Returns the new proxy."""
        old = self.coordinator(name)
        old.close()
        proxy = self._coordinator(old.name, old.skew_us + round(skew_ms * US_PER_MS),
                                  self.ring)
        if keep_clock:
            proxy.core.clock.restore(old.core.clock.high_water_ms)
        self._proxies[old.name] = proxy
        # It places keys by the membership in force (`attach` hands it the topology).
        self.membership.detach(old.core)
        self.membership.attach(proxy.core)
        if self._committer.proxy is old:
            self._committer.move_to(proxy)
        return proxy

    def pause(self, node: str) -> None:
        self._nodes[node].pause()

    def resume(self, node: str) -> None:
        self._nodes[node].resume()

    def partition(self, a: str, b: str, both: bool = True) -> None:
        """Cut a -> b (and b -> a when `both`). Endpoints are node or coordinator names:
        cutting a coordinator from a node leaves the node's links to other nodes alone,
        and two nodes can be cut from each other."""
        self.network.cut(a, b, both)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        self.network.heal(a, b)

    def skew(self, process: int | str, ms: float) -> None:
        """Set a coordinator's (by index or name) or a node's (by name) clock to run `ms`
        ahead (negative: behind) of true time."""
        skew_us = round(ms * US_PER_MS)
        if isinstance(process, str) and process in self._nodes:
            self._nodes[process].skew_us = skew_us
        else:
            self.coordinator(process).skew_us = skew_us

    def set_loss(self, loss: float) -> None:
        self.network.set_loss(loss)

    # -- views ---------------------------------------------------------------------------

    def nodes(self) -> list[NodeView]:
        views = []
        for n in self._nodes.values():
            healing = n.healing()
            views.append(NodeView(n.name, n.state, n.store.count(), n.pending_writes,
                                  n.queued, n.lost_writes,
                                  sum(healing["hints_held"].values()), healing,
                                  self.health(n.name)))
        return views

    def written_keys(self) -> list[str]:
        """Every key a client has written or deleted, in the order first written."""
        return list(self._written)

    def under_replicated(self) -> list[str]:
        """Keys ever written with fewer than N current copies on their preference list.

        Placed by the ring in force (during a change, by both rings: a key must have N
        current copies in each). A key's current version is the newest one its replicas'
        stores hold, or any node's store holds as a hint; a copy is current when a
        replica's store holds a record of exactly that version (tombstones count: a delete
        must reach all N too). A copy a node keeps outside its ranges (a stray, awaiting
        cleanup) is no replica's. A key no replica holds at all (its tombstone purged
        everywhere) needs no copies. Read from the stores directly: no message is sent,
        no time passes.
        """
        newest: dict[str, Version] = {}
        for node in self._nodes.values():
            for hint in node.store.hints():
                key, version = hint.record.key, hint.record.version
                if key not in newest or version > newest[key]:
                    newest[key] = version
        n = self.config.replicas
        topology = self.membership.topology
        rings = [topology.ring] + ([topology.pending] if topology.pending is not None else [])
        short = []
        for key in self._written:
            lists = {ring.preference_list(key, n) for ring in rings}
            held = {node: self._nodes[node].store.get(key)
                    for listed in lists for node in listed}
            current = newest.get(key)
            for record in held.values():
                if record is not None and (current is None or record.version > current):
                    current = record.version
            if current is None:
                continue
            if any(sum(1 for node in listed if (r := held[node]) is not None
                       and r.version == current) < n for listed in lists):
                short.append(key)
        return short

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
