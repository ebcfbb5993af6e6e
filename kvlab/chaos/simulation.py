"""A full simulated chaos run: a workload of clients and a nemesis, on a `World`.

The simulator's counterpart of `kvlab.chaos.live`; it lives in the chaos lab because it
uses the lab (workload, nemesis, history), and the simulator itself must not.

Clients are closed-loop processes: each has one operation outstanding, records its invoke
and completion in a `Recorder` history, thinks, and goes again until the workload's
operations are used up. The nemesis schedule is played alongside. Then comes a quiescence
phase: the fault in progress is ended, and the cluster runs with no client traffic for
`quiesce_ms`, so healing (hinted handoff, anti-entropy) can finish; the summary then says
how many keys are still under-replicated (`World.under_replicated`). Everything runs on
the virtual clock from one seed, so the same options give the same history, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from kvlab.chaos.history import Event, Recorder
from kvlab.chaos.outcomes import history_type
from kvlab.chaos.summary import EXAMPLE_KEYS, sum_healing
from kvlab.chaos.nemesis import (
    ADD, BOTH, FROM_NODES, KILL, LOSS, MEMBERSHIP, PARTITION, PAUSE, REMOVE, SKEW, WIPE,
    Fault, MembershipNemesis, schedule,
)
from kvlab.chaos.workload import READ, Mix
from kvlab.core.messages import OK, Outcome
from kvlab.sim.clock import US_PER_MS
from kvlab.sim.world import World, WorldConfig

NS_PER_US = 1000


@dataclass(frozen=True)
class SimOptions:
    seed: int = 7
    world: WorldConfig = field(default_factory=WorldConfig)
    ops: int = 3000
    mix: Mix = Mix()
    nemesis: tuple[str, ...] = ()
    nemesis_gap_ms: tuple[int, int] = (100, 500)
    fault_ms: tuple[int, int] = (200, 1000)
    nemesis_nodes: int = 1  # nodes a kill, pause or wipe takes at once
    membership_gap_ms: tuple[int, int] = (200, 1500)  # between membership changes
    # After the clients finish: faults healed, no traffic, for this long (virtual).
    quiesce_ms: int = 10_000
    # A membership change still running then is waited for first, at most this long.
    change_limit_ms: int = 120_000
    # A run whose clients are stuck past this much virtual time is cut short (a guard).
    max_virtual_ms: int = 24 * 3600 * 1000


@dataclass
class SimResult:
    events: list[Event]
    summary: dict[str, Any]
    faults: list[Fault]


class Simulation:
    """A world, a workload and a nemesis. `run()` plays it out; `advance(ms)` steps it."""

    def __init__(self, options: SimOptions | None = None) -> None:
        self.options = options = options or SimOptions()
        self.world = world = World(options.world, options.seed)
        self.workload = options.mix.workload(options.seed, options.ops)
        self.recorder = Recorder()
        self.faults: list[Fault] = []  # started so far
        self.finished = False  # the clients are done
        self.quiesced = False  # and the quiescence phase has run
        self._fault: Fault | None = None  # the fault in progress
        self._active = clients = options.mix.clients
        self._coordinators = world.coordinator_names
        self._quorum = {"read": options.world.r, "write": options.world.w,
                        "delete": options.world.w}
        self._done = [partial(self._complete, p) for p in range(clients)]
        self._pending: list[str] = [""] * clients  # each client's current f
        clock = world.clock
        for process in range(clients):
            clock.after(self._think_us(process), self._invoke, process)
        self._dead: set[str] = set()  # killed for good, to be replaced: no fault revives it
        self._schedule = schedule(options.nemesis, self._targets, self._coordinators,
                                  options.seed, gap_ms=options.nemesis_gap_ms,
                                  duration_ms=options.fault_ms,
                                  nodes_per_fault=options.nemesis_nodes)
        self._next_fault()
        self._changes: MembershipNemesis | None = None
        if MEMBERSHIP in options.nemesis:
            self._changes = MembershipNemesis(options.seed, options.world.replicas,
                                              options.world.nodes, options.membership_gap_ms)
            self._next_change()

    def _targets(self) -> list[str]:
        """The nodes faults may hit now: the cluster's, but for one killed for good."""
        return [n for n in self.world.node_names if n not in self._dead]

    # -- stepping ------------------------------------------------------------------------

    def advance(self, ms: float) -> int:
        """Run `ms` of virtual time (stopping early if the workload finishes)."""
        return self.world.advance(ms)

    def run(self) -> SimResult:
        """Run until every client has finished its operations, then quiesce."""
        clock = self.world.clock
        limit = self.options.max_virtual_ms * US_PER_MS
        while not self.finished and clock.now < limit and clock.next_time() is not None:
            clock.run_until(limit)
        self.quiesce()
        return self.result()

    def quiesce(self) -> None:
        """End the fault in progress, let a membership change in progress finish, and run
        `quiesce_ms` with no clients and no faults."""
        if self.quiesced:
            return
        self.quiesced = True
        self.finished = True  # no more faults or changes start, no client goes again
        if self._fault is not None:
            self._end_fault(self._fault)
        world = self.world
        waited = 0
        while world.membership.change is not None and waited < self.options.change_limit_ms:
            world.advance(100)
            waited += 100
        world.advance(self.options.quiesce_ms)

    def result(self) -> SimResult:
        events = self.recorder.events
        counts = {"ok": 0, "fail": 0, "info": 0}
        for event in events:
            if event.type != "invoke":
                counts[event.type] += 1
        world = self.world
        short = world.under_replicated()
        summary: dict[str, Any] = {
            "seed": self.options.seed,
            "ops": sum(1 for e in events if e.type == "invoke"),
            **counts,
            "virtual_ms": world.clock.now // US_PER_MS,
            "faults": [f.describe() for f in self.faults],
            "messages": world.network.sent,
            "messages_dropped": world.network.dropped,
            "unpersisted_writes_lost": sum(n.lost_writes for n in world.nodes()),
            "quiesce_s": self.options.quiesce_ms / 1000 if self.quiesced else None,
            "under_replicated": len(short),
            "under_replicated_keys": short[:EXAMPLE_KEYS],
            "ring": list(world.ring.nodes),
            "changing": world.membership.change is not None,  # a change never finished
            "healing": sum_healing(n.healing for n in world.nodes()),
        }
        return SimResult(list(events), summary, list(self.faults))

    # -- clients -------------------------------------------------------------------------

    def _think_us(self, process: int) -> int:
        return int(self.workload.think_ms(process) * US_PER_MS)

    def _invoke(self, process: int) -> None:
        op = self.workload.next_op(process)
        world = self.world
        if op is None:
            self._active -= 1
            if self._active == 0:
                self.finished = True
                world.clock.halt()
            return
        self.recorder.invoke(process, op.f, op.key, op.value, world.clock.now * NS_PER_US)
        self._pending[process] = op.f
        value = op.value.encode() if op.value is not None else None
        world.submit(op.f, op.key, value,
                     coordinator=self._coordinators[process % len(self._coordinators)],
                     quorum=self._quorum[op.f], callback=self._done[process])

    def _complete(self, process: int, outcome: Outcome) -> None:
        f = self._pending[process]
        kind = history_type(f, outcome.status)
        value = None
        if kind == "ok" and f == READ and outcome.status == OK:
            value = outcome.record.value.decode()  # type: ignore[union-attr]
        clock = self.world.clock
        self.recorder.complete(process, kind, value, clock.now * NS_PER_US)  # type: ignore[arg-type]
        clock.after(self._think_us(process), self._invoke, process)

    # -- nemesis -------------------------------------------------------------------------

    def _next_fault(self) -> None:
        fault = next(self._schedule, None)
        if fault is not None:
            self.world.clock.at(fault.at_ms * US_PER_MS, self._start_fault, fault)

    def _start_fault(self, fault: Fault) -> None:
        if self.finished:
            return
        if fault.nodes:
            # Drawn a while ago: a node the membership nemesis took out since is spared.
            targets = self._targets()
            nodes = tuple(n for n in fault.nodes if n in targets)
            if not nodes:
                self._next_fault()
                return
            fault = replace(fault, nodes=nodes)
        self.faults.append(fault)
        self._fault = fault
        start_fault(self.world, fault)
        self.world.clock.at(fault.end_ms * US_PER_MS, self._end_fault, fault)

    def _end_fault(self, fault: Fault) -> None:
        if fault is not self._fault:
            return  # already ended, by the quiescence phase
        self._fault = None
        # A node removed or replaced meanwhile is stopped for good: nothing to restart.
        live = self._targets()
        end_fault(self.world, replace(fault, nodes=tuple(n for n in fault.nodes if n in live)))
        self._next_fault()

    # -- membership nemesis --------------------------------------------------------------

    def _next_change(self) -> None:
        assert self._changes is not None
        self.world.clock.after(self._changes.gap() * US_PER_MS, self._start_change)

    def _start_change(self) -> None:
        assert self._changes is not None
        if self.finished:
            return
        world = self.world
        spared = self._fault.nodes if self._fault is not None else ()
        kind, node = self._changes.next(world.ring.nodes, spared)
        # The nemesis keeps to the rules (one change at a time, never below N), so a
        # `MembershipError` here is a bug, and is raised.
        if kind == ADD:
            nodes = (world.add_node(),)
        elif kind == REMOVE:
            assert node is not None
            world.remove_node(node)
            nodes = (node,)
        else:
            assert node is not None
            self._dead.add(node)
            world.crash(node)
            nodes = (node, world.replace_node(node))
        change = Fault(world.clock.now // US_PER_MS, MEMBERSHIP, 0, nodes=nodes, change=kind)
        self.faults.append(change)
        world.clock.after(100 * US_PER_MS, self._watch_change, change)

    def _watch_change(self, change: Fault) -> None:
        world = self.world
        if world.membership.change is not None:
            world.clock.after(100 * US_PER_MS, self._watch_change, change)
            return
        # Done: its entry says how long it took.
        took = world.clock.now // US_PER_MS - change.at_ms
        self.faults[self.faults.index(change)] = replace(change, duration_ms=took)
        self._dead &= set(world.node_names)  # a replaced node has left the cluster
        self._next_change()


def start_fault(world: World, fault: Fault) -> None:
    """Begin a nemesis fault on the simulated cluster."""
    kind = fault.kind
    if kind in (KILL, WIPE):  # a wiped node is a dead one until its replacement starts
        for node in fault.nodes:
            world.crash(node)
    elif kind == PAUSE:
        for node in fault.nodes:
            world.pause(node)
    elif kind == PARTITION:
        assert fault.coordinator is not None
        for node in fault.nodes:
            if fault.direction == FROM_NODES:
                world.partition(node, fault.coordinator, both=False)
            else:
                world.partition(fault.coordinator, node, both=fault.direction == BOTH)
    elif kind == SKEW:
        assert fault.coordinator is not None
        world.skew(fault.coordinator, fault.skew_ms)
    elif kind == LOSS:
        world.set_loss(fault.loss)
    else:
        raise ValueError(f"unknown fault {kind!r}")


def end_fault(world: World, fault: Fault) -> None:
    """Undo `fault`: restart (empty, after a wipe), resume, heal, unskew, stop losing."""
    kind = fault.kind
    for node in fault.nodes:
        if kind == KILL:
            world.restart(node)
        elif kind == WIPE:
            world.wipe(node)
        elif kind == PAUSE:
            world.resume(node)
        elif kind == PARTITION:
            world.heal(fault.coordinator, node)
    if kind == SKEW:
        assert fault.coordinator is not None
        world.skew(fault.coordinator, 0)
    elif kind == LOSS:
        world.set_loss(world.config.loss)


def run(options: SimOptions | None = None) -> SimResult:
    """Build and run a simulation."""
    return Simulation(options).run()
