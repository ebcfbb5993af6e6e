"""The simulated `ClusterSource`: the dashboard on a deterministic `World` instead of processes.

Nothing here decides anything about the protocol. Every read and write is a `World.submit`
to the real core coordinator over the simulated network, and the chaos keys are the world's
crash, pause, resume and restart; this module only paces virtual time and turns the world's
state into the dashboard's views. A node's healing counters are its replica's snapshot,
as a live node reports them.

Time: virtual time follows the wall clock, `speed` times as fast. A background task catches
it up every TICK_S, and so does every call before it acts, so an action lands at the virtual
time its wall time maps to and the same calls at the same clock readings replay the same run.
One catch-up covers at most MAX_STEP_S of wall time and stops after `budget_s` of work:
when the loop stalled or the simulation can't keep up, virtual time runs slower instead of
jumping ahead, and the dashboard stays responsive. How far a budgeted catch-up gets depends
on the machine, so tests and scripts that compare runs pass `budget_s=None`.

Inspection reads each replica's durable store (`World.replica_records`) instead of asking
through the coordinator (`World.inspect`): it sends no message, draws no random number and
runs no virtual time, so watching a key leaves the run exactly as it would have been. A
replica on a node that is down, paused or cut off from the coordinator is shown unreachable,
as a real inspection sees it.

A partition cuts the link between the dashboard's coordinator (c1) and a node both ways.

Membership is the core's too: `a` and `X` are the world's `add_node` and `remove_node`,
carried out in steps by the committer on c1 (`World.membership`); they return once the
change is over in virtual time, and every snapshot shows the change as it goes, with each
node's health as c1's failure detector sees it, just as `/cluster` has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from functools import partial

from kvlab.core.membership import Change, MembershipError
from kvlab.core.messages import NOT_FOUND, Outcome
from kvlab.core.messages import OK as SUCCESS
from kvlab.sim.clock import US_PER_MS
from kvlab.sim.proxy import READ, WRITE
from kvlab.sim.world import World, WorldConfig
from kvlab.tui.source import (
    DOWN,
    MISSING,
    OK,
    PAUSED,
    UNREACHABLE,
    UP,
    ActionsByName,
    ClusterView,
    Healing,
    KeyView,
    MembershipView,
    NodeView,
    OpResult,
    ReplicaView,
    SourceError,
    TrafficSettings,
    TrafficStats,
)
from kvlab.tui.traffic import KEY_SPACE, MAX_IN_FLIGHT, TrafficGenerator

TICK_S = 0.05
MAX_STEP_S = 0.25  # wall time one catch-up turns into virtual time, at most
CPU_BUDGET_S = 0.02  # work one catch-up may do before it lets the dashboard run
CHUNK_US = 10 * US_PER_MS  # virtual time run between two looks at that budget
US_PER_S = 1_000_000


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _why(outcome: Outcome) -> str:
    """Why an operation failed: its status, and what each replica that failed said."""
    failed = "; ".join(f"{node}: {reason}" for node, reason in outcome.failed.items())
    return (f"{outcome.status}: {len(outcome.acked)} of {outcome.needed} replicas replied"
            + (f" ({failed})" if failed else ""))


class SimTraffic(TrafficGenerator):
    """The built-in workload as a client inside the simulation.

    Its operations are events on the virtual clock, `rate` per virtual second, submitted
    through the world, so a seed replays them too; no more than MAX_IN_FLIGHT are pending,
    the rest are dropped as in the live generator. The counting and the per-second series
    are the live generator's, in virtual seconds and virtual milliseconds.
    """

    def __init__(self, world: World) -> None:
        def virtual_s() -> float:
            return world.clock.now / US_PER_S

        # No client (kv=None): operations go through `world.submit`, never over a socket.
        super().__init__(None, virtual_s, seed=world.seed)  # type: ignore[arg-type]
        self._world = world
        self._run_id = 0  # bumped by start and stop: events of an older run do nothing
        self._on = False
        self._pending = 0

    @property
    def running(self) -> bool:
        return self._on

    def start(self, settings: TrafficSettings) -> None:
        """Start, or change the settings of the running workload (counters carry on)."""
        self.settings = settings
        if not self._on:
            self._reset()
            self._on, self._pending = True, 0
            self._run_id += 1
            self._world.clock.after(0, self._issue, self._run_id)

    async def stop(self) -> None:
        # Operations in flight finish inside the world but are no longer counted.
        self._on = False
        self._run_id += 1

    async def close(self) -> None:
        await self.stop()

    def _issue(self, run_id: int) -> None:
        if run_id != self._run_id:
            return
        settings = self.settings
        self._world.clock.after(round(US_PER_S / settings.rate), self._issue, run_id)
        if self._pending >= MAX_IN_FLIGHT:
            return  # dropped, not queued: the rate is an upper bound
        key = f"key-{self._rng.randrange(KEY_SPACE):03d}"
        if self._rng.random() < settings.read_fraction:
            f, value, quorum = READ, None, settings.r
        else:
            self._written += 1
            f, value, quorum = WRITE, f"v{self._written}".encode(), settings.w
        self._pending += 1
        self._world.submit(f, key, value, quorum=quorum,
                           callback=partial(self._done, run_id, self._clock()))

    def _done(self, run_id: int, started: float, outcome: Outcome) -> None:
        if run_id != self._run_id:
            return
        self._pending -= 1
        status = outcome.status
        if status == SUCCESS:
            self._ok += 1
        elif status == NOT_FOUND:
            self._not_found += 1  # a key never written: a correct answer
        else:
            self._errors[status] += 1  # "unavailable" or "timeout", as the live API says
        self._record(started, failed=status not in (SUCCESS, NOT_FOUND))


class SimSource(ActionsByName):
    """A `ClusterSource` over a `World(config, seed)` whose virtual time runs at `speed`."""

    def __init__(self, config: WorldConfig | None = None, seed: int = 7, speed: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 budget_s: float | None = CPU_BUDGET_S) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be greater than 0, got {speed}")
        self.world = World(config, seed)
        self.seed = seed
        self.speed = speed
        self._clock = clock
        self._budget_s = budget_s
        self._last = clock()  # the wall time already turned into virtual time
        self._pacer: asyncio.Task | None = None
        self._closed = False
        self._failure: str | None = None
        self._waiting: set[asyncio.Future] = set()
        # (condition, future): set once a catch-up finds the condition true
        self._watching: list[tuple[Callable[[], bool], asyncio.Future]] = []
        self._traffic = SimTraffic(self.world)
        # node -> (requests served, virtual µs) when last measured, and the rate measured
        self._served: dict[str, tuple[int, int]] = {}
        self._rates: dict[str, float] = {}

    # -- time ---------------------------------------------------------------------------

    def catch_up(self) -> None:
        """Run the world up to where the wall clock says virtual time should be."""
        if self._failure:
            raise SourceError(self._failure)
        now = self._clock()
        wall, self._last = min(now - self._last, MAX_STEP_S), now
        if wall <= 0:
            return
        clock = self.world.clock
        target = clock.now + round(wall * self.speed * US_PER_S)
        budget = self._budget_s
        deadline = None if budget is None else time.perf_counter() + budget
        try:
            while clock.now < target and (deadline is None or time.perf_counter() < deadline):
                clock.run_until(min(target, clock.now + CHUNK_US))
        except Exception as exc:  # a bug in a simulated component: stop and say so
            self._failure = f"the simulation stopped: {exc!r}"
            self._abandon(self._failure)
            raise SourceError(self._failure) from exc
        self._check_watches()

    def _check_watches(self) -> None:
        still = []
        for condition, future in self._watching:
            if future.done():
                continue
            if condition():
                future.set_result(None)
            else:
                still.append((condition, future))
        self._watching = still

    async def _until(self, condition: Callable[[], bool]) -> None:
        """Wait (as the pacer runs virtual time) until `condition()` holds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.add(future)
        self._watching.append((condition, future))
        try:
            await future
        finally:
            self._waiting.discard(future)

    def _abandon(self, why: str) -> None:
        """Fail every operation still waiting for virtual time that will not come."""
        for waiting in self._waiting:
            if not waiting.done():
                waiting.set_exception(SourceError(why))

    def time(self) -> float:
        """Virtual time in seconds since the Unix epoch, as the coordinator's clock reads
        it: the event log's clock, so its timestamps match the versions in the inspector."""
        return (self.world.config.epoch_ms + self.world.now_ms) / 1000

    def _sync(self) -> None:
        """Start the pacer on first use (it needs the running loop) and catch up."""
        if self._pacer is None and not self._closed:
            self._pacer = asyncio.get_running_loop().create_task(self._pace(), name="sim-pacer")
        self.catch_up()

    async def _pace(self) -> None:
        while True:
            try:
                self.catch_up()
            except SourceError:
                return  # the next snapshot shows why
            await asyncio.sleep(TICK_S)

    # -- reading ------------------------------------------------------------------------

    async def snapshot(self) -> ClusterView:
        self._sync()
        world, config = self.world, self.world.config
        now = world.clock.now
        membership = MembershipView.from_view(world.membership_view())
        nodes = []
        for node in world.nodes():
            up = node.state == UP
            health, phi = membership.health.get(node.name, (None, None))
            nodes.append(NodeView(
                health=health, phi=phi,
                partitioned=self._cut(node.name),
                name=node.name, port=None, pid=None, state=node.state,
                keys=node.keys if up else None,  # as live: only a running node is asked
                ops_per_s=self._rate(node.name, now) if up else None,
                p99_ms=None,  # the simulator does not time single replica round trips
                last_error=(f"{node.lost_writes} unacknowledged writes lost in crashes"
                            if node.lost_writes else None),
                # As live: the counters of the running process, from a node that answers.
                healing=Healing.from_snapshot(world.node(node.name).snapshot()) if up
                else None))
        return ClusterView(name=self.title(), n=config.replicas, r=config.r, w=config.w,
                           vnodes=config.vnodes, nodes=tuple(nodes), ring=world.ring,
                           change=membership.change, last_change=membership.last_change)

    def title(self) -> str:
        """The cluster's name in the header: a simulation, its seed and its virtual time."""
        speed = "" if self.speed == 1 else f" ×{self.speed:g}"
        return f"sim (seed {self.seed}) · virtual t={self.world.now_ms / 1000:.1f}s{speed}"

    def _rate(self, node: str, now: int) -> float:
        """Requests the node served per virtual second, measured over at least one virtual
        second (snapshots come every half second of wall time, whatever the speed)."""
        served = self.world.node(node).served
        before = self._served.get(node)
        if before is None or now - before[1] >= US_PER_S:
            if before is not None:
                self._rates[node] = (served - before[0]) * US_PER_S / (now - before[1])
            self._served[node] = (served, now)
        return self._rates.get(node, 0.0)

    async def inspect(self, key: str) -> KeyView:
        self._sync()
        world = self.world
        replicas = []
        for node, record in world.replica_records(key).items():
            state = world.node(node).state
            if state != UP:
                replicas.append(ReplicaView(node, UNREACHABLE, reason=f"node {state}"))
            elif self._cut(node):
                replicas.append(ReplicaView(node, UNREACHABLE, reason="partitioned"))
            elif record is None:
                replicas.append(ReplicaView(node, MISSING))
            else:
                replicas.append(ReplicaView(node, OK, str(record.version), _text(record.value),
                                            deleted=record.tombstone))
        return KeyView(key, tuple(replicas))

    async def _complete(self, f: str, key: str, value: bytes | None = None) -> Outcome:
        """Submit one operation and wait (as the pacer runs virtual time) for its outcome."""
        self._sync()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.add(future)

        def done(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        try:
            self.world.submit(f, key, value, callback=done)
            return await future
        finally:
            self._waiting.discard(future)

    async def read(self, key: str) -> OpResult:
        outcome = await self._complete(READ, key)
        if outcome.status == NOT_FOUND:
            return OpResult(True, f"read {key}: not found")
        if outcome.status != SUCCESS:
            return OpResult(False, f"read {key} failed: {_why(outcome)}")
        value = _text(outcome.record.value)  # type: ignore[union-attr]
        return OpResult(True, f"read {key} = {value!r} "
                              f"(replied: {', '.join(outcome.acked) or '-'})")

    async def write(self, key: str, value: str) -> OpResult:
        outcome = await self._complete(WRITE, key, value.encode())
        if outcome.status != SUCCESS:
            return OpResult(False, f"write {key} failed: {_why(outcome)}")
        return OpResult(True, f"write {key} = {value!r} "
                              f"(acked: {', '.join(outcome.acked) or '-'})")

    # -- chaos --------------------------------------------------------------------------

    def _check(self, node: str) -> None:
        if node not in self.world.node_names:
            raise SourceError(f"no node {node!r} in the simulation "
                              f"(nodes: {', '.join(self.world.node_names)})")

    @property
    def _coordinator(self) -> str:
        """The coordinator the dashboard's reads, writes and traffic go through."""
        return self.world.coordinator(0).name

    def _cut(self, node: str) -> bool:
        network, coordinator = self.world.network, self._coordinator
        return network.is_cut(coordinator, node) or network.is_cut(node, coordinator)

    async def partition(self, node: str, on: bool) -> None:
        self._sync()
        self._check(node)
        if on:
            self.world.partition(self._coordinator, node)
        else:
            self.world.heal(self._coordinator, node)

    async def add_node(self) -> str:
        self._sync()
        try:
            name = self.world.add_node()
        except MembershipError as exc:
            raise SourceError(str(exc)) from None
        await self._through(self.world.membership.change)
        return name

    async def remove_node(self, node: str) -> None:
        self._sync()
        try:
            self.world.remove_node(node)
        except MembershipError as exc:
            raise SourceError(str(exc)) from None
        await self._through(self.world.membership.change)

    async def _through(self, change: Change | None) -> None:
        """Until the change just begun is over (the committer moved on from it)."""
        membership = self.world.membership
        await self._until(lambda: membership.change is not change)

    async def act(self, action: str, node: str) -> None:
        self._sync()
        self._check(node)
        world = self.world
        state = world.node(node).state
        # The same refusals as the supervisor's, so both sources log alike.
        if action == "kill" and state == DOWN:
            raise SourceError(f"{node} is not running")
        if action == "pause" and state != UP:
            raise SourceError(f"{node} is not running (state: {state})")
        if action == "resume" and state != PAUSED:
            raise SourceError(f"{node} is not paused (state: {state})")
        if action in ("kill", "restart"):
            world.crash(node)  # a restart stops the process first, paused or not
        if action == "restart":
            world.restart(node)
        elif action == "pause":
            world.pause(node)
        elif action == "resume":
            world.resume(node)

    async def restart_proxy(self) -> None:
        self._sync()
        self.world.restart_coordinator(0)  # on its kept clock, as the real proxy's folder

    # -- traffic ------------------------------------------------------------------------

    async def start_traffic(self, settings: TrafficSettings) -> None:
        n = self.world.config.replicas
        for which, quorum in (("R", settings.r), ("W", settings.w)):
            if quorum is not None and not 1 <= quorum <= n:
                raise SourceError(f"{which}={quorum} is not between 1 and N={n}")
        if settings.rate < 1:
            raise SourceError(f"rate {settings.rate} is not a positive number of ops/s")
        self._sync()
        self._traffic.start(settings)

    async def stop_traffic(self) -> None:
        await self._traffic.stop()

    def traffic_stats(self) -> TrafficStats:
        return self._traffic.stats()

    async def close(self) -> None:
        """Stop the traffic and the pacer; the world stays as it was, for inspection."""
        self._closed = True
        await self._traffic.close()
        self._abandon("the simulation was closed")
        pacer, self._pacer = self._pacer, None
        if pacer is not None:
            pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pacer
