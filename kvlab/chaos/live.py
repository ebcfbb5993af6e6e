"""The chaos workload and nemesis, played on a real local cluster in wall-clock time.

The same seeded `Workload` and nemesis `schedule` as the simulator, executed for real:
clients are asyncio tasks talking to the proxy over HTTP; kill, pause and restart are
signals from the supervisor; partitions cut the proxy's link to a node through the replica
channel's fault hook; a wipe kills a node and, at the end of the fault, deletes its
database and starts it again empty (`Cluster.wipe`), as in the simulator. Every operation
goes into a history for the checker.

The membership nemesis draws its changes from the simulator's `MembershipNemesis` and has
the supervisor carry them out (add-node, remove-node, replace-node after a SIGKILL of the
node replaced), one at a time, on a track of its own beside the faults. The supervisor's
calls block, so they run in worker threads, each on its own fresh `Cluster.load` (as does
every fault action: membership in memory is never shared between threads, cluster.json
under its lock is the truth). The two tracks keep off each other's nodes (`_Holds`): a
fault never starts on a node that a change in progress removes or brings in, or on a node
no longer in the ring; a change never removes or replaces a node a fault holds, and never
runs beside a wipe (a wiped node streams an empty disk as if it were its ranges).

Then comes a quiescence phase: every fault healed, the change in progress finished (at
most `change_limit_s`), no client traffic, for `quiesce_s`; after it each key the workload
wrote is inspected (`GET /cluster/keys/{key}`, each replica's version) and counted
under-replicated if fewer than N of its replicas hold the newest version any of them
holds. The proxy places an inspection by the ring it reads from, so after a change this
is the membership the run ended with. Hints are not visible there: a version only a hint
holds is not counted (the simulator, which sees every store, does count it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import msgspec

from kvlab.chaos.history import Event, Recorder
from kvlab.chaos.nemesis import (
    ADD, KILL, MEMBERSHIP, PARTITION, PAUSE, REMOVE, REPLACE, WIPE, Fault, MembershipNemesis,
    schedule,
)
from kvlab.chaos.outcomes import history_type
from kvlab.chaos.summary import sum_healing
from kvlab.chaos.workload import DELETE, READ, WRITE, Mix, Op
from kvlab.client import AsyncKV, BadRequest, KeyNotFound, KVError, Unavailable
from kvlab.client.protocol import ChangeInfo
from kvlab.cluster.supervisor import Cluster, ClusterError
from kvlab.core.messages import NOT_FOUND, OK, TIMEOUT, UNAVAILABLE
from kvlab.core.version import Version

LIVE_NEMESES = (KILL, PAUSE, PARTITION, WIPE, MEMBERSHIP)
# How often a membership change in progress is asked after (GET /cluster).
CHANGE_POLL_S = 0.25


@dataclass(frozen=True)
class ChaosOptions:
    duration_s: float = 60.0
    seed: int = 7
    mix: Mix = Mix(think_ms=10.0)
    r: int | None = None
    w: int | None = None
    max_ops: int | None = None  # stop early after this many operations
    nemesis: tuple[str, ...] = ()
    # Real processes need longer faults than the simulator to show anything.
    first_fault_ms: int = 1000
    gap_ms: tuple[int, int] = (1000, 3000)
    fault_ms: tuple[int, int] = (1000, 4000)
    nemesis_nodes: int = 1  # nodes a kill, pause or wipe takes at once
    # Between membership changes. A change on a real cluster takes a second or two (a
    # node to start, its ranges to stream), so a change is drawn about every 3-5 s.
    membership_gap_ms: tuple[int, int] = (1000, 3000)
    # After the clients: a change in progress is waited for at most this long; then
    # faults healed, no traffic, `quiesce_s`. Anti-entropy compares each range with each
    # peer every 5 s by default, from both sides.
    change_limit_s: float = 60.0
    quiesce_s: float = 6.0


@dataclass
class ChaosRun:
    events: list[Event]
    faults: list[Fault] = field(default_factory=list)
    elapsed_s: float = 0.0  # the clients' run, without the quiescence phase
    written: dict[str, None] = field(default_factory=dict)  # keys written or deleted
    under_replicated: list[str] = field(default_factory=list)
    healing: dict = field(default_factory=dict)  # the nodes' counters, added up
    # Each membership change: kind, node (the one joining, leaving, or taking another's
    # place), replaced, at_s, and once over seconds, streams, keys, bytes (the proxy's
    # figures); done False if it never finished, error if the supervisor refused it.
    changes: list[dict] = field(default_factory=list)
    ring: list[str] = field(default_factory=list)  # the proxy's read ring at the end
    changing: bool = False  # a change was still in progress at the end


@dataclass
class _Holds:
    """What the fault track and the membership track have in hand, so that neither acts
    on a node the other holds. Both run on one event loop: each sets its hold before its
    first await, and the other sees it at once."""

    ring: list[str]  # the nodes of the ring, as the last change accepted left it
    fault: Fault | None = None  # the fault in progress
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # set when it ends
    # While a change runs: the nodes it leaves alone, which faults may hit (not the node
    # joining, leaving or replaced). None when no change runs.
    spared: frozenset[str] | None = None

    def targets(self) -> list[str]:
        """The nodes a fault may hit now."""
        return [n for n in self.ring if self.spared is None or n in self.spared]


async def run_chaos(cluster: Cluster, options: ChaosOptions,
                    progress: Callable[[str], None] | None = None) -> ChaosRun:
    unsupported = [k for k in options.nemesis if k not in LIVE_NEMESES]
    if unsupported:
        raise ValueError(f"nemesis {', '.join(unsupported)} runs only in the simulator "
                         f"(a real cluster supports {', '.join(LIVE_NEMESES)})")
    # Unless capped, a workload the clients can't exhaust in time: the deadline ends the run.
    workload = options.mix.workload(
        options.seed, options.max_ops if options.max_ops is not None else 10**12)
    recorder = Recorder()
    began = time.monotonic_ns()
    start = time.monotonic()
    deadline = start + options.duration_s
    run = ChaosRun(recorder.events)
    name = cluster.spec.name
    holds = _Holds([n.name for n in cluster.nodes])

    def now_ns() -> int:
        return time.monotonic_ns() - began

    async with AsyncKV(cluster.url, secret=cluster.secret, timeout=5.0) as kv:
        async def client(process: int) -> None:
            while time.monotonic() < deadline:
                op = workload.next_op(process)
                if op is None:
                    return
                recorder.invoke(process, op.f, op.key, op.value, now_ns())
                if op.f in (WRITE, DELETE):
                    run.written[op.key] = None
                status, value = await perform(kv, op, options.r, options.w)
                kind = history_type(op.f, status)
                recorder.complete(process, kind, value if kind == "ok" else None, now_ns())
                await asyncio.sleep(workload.think_ms(process) / 1000)

        clients_done = asyncio.Event()
        tracks = [asyncio.create_task(
            _nemesis(name, kv, options, run, holds, start, deadline, clients_done, progress))]
        if MEMBERSHIP in options.nemesis:
            tracks.append(asyncio.create_task(_membership(
                name, kv, options, run, holds, start, deadline, clients_done, progress)))
        try:
            await asyncio.gather(*(client(p) for p in range(options.mix.clients)))
            # Let the nemesis end its fault itself rather than cancel it half-way through a
            # restart that `_heal` would then race; and let a ring change finish.
            clients_done.set()
            await tracks[0]
            if len(tracks) > 1:
                await _finish_change(tracks[1], holds, options.change_limit_s, progress)
        finally:
            for track in tracks:
                if not track.done():
                    track.cancel()
            await asyncio.gather(*tracks, return_exceptions=True)
            await _heal(name, kv, holds.ring, run.faults)
        run.faults.sort(key=lambda fault: fault.at_ms)  # the two tracks', interleaved
        run.elapsed_s = (time.monotonic_ns() - began) / 1e9
        if progress:
            progress(f"quiescence: {options.quiesce_s:g} s with no faults and no traffic")
        await asyncio.sleep(options.quiesce_s)
        run.under_replicated = await under_replicated(kv, list(run.written))
        state = await kv.cluster()
        run.healing = sum_healing(msgspec.to_builtins(node.healing) for node in state.nodes
                                  if node.healing is not None)
        run.ring = state.membership.ring.nodes
        run.changing = state.membership.change is not None
    return run


async def under_replicated(kv: AsyncKV, keys: list[str]) -> list[str]:
    """The keys among `keys` that fewer than N replicas hold in their newest version.

    The newest version is the newest any replica of the key reports (a replica that
    cannot be asked holds no current copy); a key no replica holds needs no copies.
    """
    short = []
    for key in keys:
        replicas = (await kv.inspect(key)).replicas
        versions = [Version.parse(r.version) for r in replicas
                    if r.state == "ok" and r.version is not None]
        if versions and versions.count(max(versions)) < len(replicas):
            short.append(key)
    return short


async def perform(kv: AsyncKV, op: Op, r: int | None = None, w: int | None = None
                  ) -> tuple[str, str | None]:
    """Run one operation; the core's outcome status it amounts to, and the value read."""
    try:
        if op.f == READ:
            result = await kv.read(op.key, r)
            return OK, result.text
        if op.f == DELETE:
            await kv.delete(op.key, w)
        else:
            await kv.set(op.key, op.value or "", w)
        return OK, None
    except KeyNotFound:
        return NOT_FOUND, None
    except Unavailable as exc:
        # 503: quorum unreachable. 504 or no answer at all: the outcome is unknown.
        return (UNAVAILABLE if exc.status == 503 else TIMEOUT), None
    except BadRequest:
        return UNAVAILABLE, None
    except KVError:  # any other error (a 500, say): whether it happened is unknown
        return TIMEOUT, None


async def _nemesis(name: str, kv: AsyncKV, options: ChaosOptions, run: ChaosRun,
                   holds: _Holds, start: float, deadline: float, stop: asyncio.Event,
                   progress: Callable[[str], None] | None) -> None:
    """Play the fault schedule until the deadline, or until `stop` (the clients are done)."""
    faults = schedule(options.nemesis, holds.targets, ["proxy"], options.seed,
                      first_ms=options.first_fault_ms, gap_ms=options.gap_ms,
                      duration_ms=options.fault_ms, nodes_per_fault=options.nemesis_nodes)
    for fault in faults:
        begin = start + fault.at_ms / 1000
        end = min(start + fault.end_ms / 1000, deadline)
        if begin >= deadline or await _stopped(stop, begin - time.monotonic()):
            return
        # Drawn at the end of the last fault: a change may have begun or ended since.
        targets = holds.targets()
        nodes = tuple(n for n in fault.nodes if n in targets)
        if not nodes or (fault.kind == WIPE and holds.spared is not None):
            if progress:
                progress(f"nemesis: {fault.describe()} skipped (its node left the ring or "
                         f"a ring change holds it)")
            continue
        fault = replace(fault, nodes=nodes)
        holds.fault = fault
        holds.ended.clear()
        run.faults.append(fault)
        if progress:
            progress(f"nemesis: {fault.describe()}")
        try:
            await _toggle_fault(name, kv, fault, on=True)
            await _stopped(stop, end - time.monotonic())
        finally:
            await _toggle_fault(name, kv, fault, on=False)
            holds.fault = None
            holds.ended.set()


async def _finish_change(track: asyncio.Task, holds: _Holds, limit_s: float,
                         progress: Callable[[str], None] | None) -> None:
    """Let the membership track end: at once if no change runs, else once it is over,
    or at `limit_s` (the summary then says it never finished)."""
    if progress and holds.spared is not None:
        progress(f"waiting for the membership change in progress (at most {limit_s:g} s)")
    try:
        await asyncio.wait_for(track, limit_s)
    except TimeoutError:
        if progress:
            progress(f"the membership change did not finish in {limit_s:g} s")


async def _membership(name: str, kv: AsyncKV, options: ChaosOptions, run: ChaosRun,
                      holds: _Holds, start: float, deadline: float, stop: asyncio.Event,
                      progress: Callable[[str], None] | None) -> None:
    """Make the membership nemesis's changes one after another until the deadline or
    `stop`; a change begun is followed to its end whatever `stop` says (the caller bounds
    the wait)."""
    cluster = await asyncio.to_thread(Cluster.load, name)
    changes = MembershipNemesis(options.seed, cluster.spec.replicas, len(cluster.nodes),
                                options.membership_gap_ms)
    while True:
        wake = time.monotonic() + changes.gap() / 1000
        if wake >= deadline or await _stopped(stop, wake - time.monotonic()):
            return
        fault = holds.fault
        kind, node = changes.next(holds.ring, fault.nodes if fault else ())
        # A node under a fault is not taken out (a kill's restart or a partition's heal
        # would then act on a node that left), and no change runs beside a wipe: the
        # change waits for the fault to end.
        while (held := holds.fault) is not None and (held.kind == WIPE or node in held.nodes):
            if await _ended_or_stopped(holds.ended, stop):
                return
        holds.spared = frozenset(n for n in holds.ring if n != node)
        try:
            await _change(name, kv, kind, node, run, holds, start, progress)
        finally:
            holds.spared = None


async def _change(name: str, kv: AsyncKV, kind: str, node: str | None, run: ChaosRun,
                  holds: _Holds, start: float, progress: Callable[[str], None] | None
                  ) -> None:
    """One change through the supervisor, without its wait (followed here instead, so a
    change that never ends can be given up at the caller's deadline), then the node that
    left stopped and forgotten (`Cluster.settle`)."""
    at = time.monotonic()

    def begin() -> tuple[str, list[str]]:
        cluster = Cluster.load(name)
        if kind == ADD:
            joined = cluster.add_node(wait=False).name
        elif kind == REMOVE:
            assert node is not None
            joined = cluster.remove_node(node, wait=False).name
        else:
            assert node is not None
            cluster.kill(node)  # replaced because it died
            joined = cluster.replace_node(node, wait=False).name
        return joined, [n.name for n in cluster.nodes]

    entry: dict = {"kind": kind, "node": node, "replaced": None,
                   "at_s": round(at - start, 3), "done": False}
    run.changes.append(entry)
    if progress:
        progress("membership: " + {ADD: "add a node", REMOVE: f"remove {node}",
                                   REPLACE: f"kill {node} and replace it"}[kind])
    try:
        joined, holds.ring = await asyncio.to_thread(begin)
    except ClusterError as exc:
        # The nemesis keeps to the rules (one change at a time, never below N), so this
        # is a bug or the cluster failing; the run goes on, and the summary says so.
        entry["error"] = str(exc)
        if progress:
            progress(f"membership: {kind} {node or 'a node'} refused: {exc}")
        return
    entry["node"] = joined
    if kind == REPLACE:
        entry["replaced"] = node
    nodes = (node, joined) if kind == REPLACE else (joined,)
    fault = Fault(round((at - start) * 1000), MEMBERSHIP, 0, nodes=nodes, change=kind)
    run.faults.append(fault)
    view = await _follow(kv, kind, joined)
    entry.update(done=True, seconds=view.elapsed_ms / 1000, streams=view.streams,
                 keys=view.keys, bytes=view.bytes)
    run.faults[run.faults.index(fault)] = replace(fault, duration_ms=view.elapsed_ms)
    if kind != ADD:
        await asyncio.to_thread(lambda: Cluster.load(name).settle())
    if progress:
        what = f"replace {node} by {joined}" if kind == REPLACE else f"{kind} {joined}"
        progress(f"membership: {what} done in {view.elapsed_ms / 1000:.1f} s "
                 f"({view.keys} keys, {view.bytes} bytes streamed)")


async def _follow(kv: AsyncKV, kind: str, node: str) -> ChangeInfo:
    """Ask the proxy until the change (`kind`, `node`) is over; its final view."""
    while True:
        await asyncio.sleep(CHANGE_POLL_S)
        try:
            membership = (await kv.cluster()).membership
        except KVError:  # a busy proxy's slow answer: ask again
            continue
        last = membership.last_change
        if membership.change is None and last is not None \
                and (last.kind, last.node) == (kind, node):
            return last


async def _ended_or_stopped(ended: asyncio.Event, stop: asyncio.Event) -> bool:
    """Wait for `ended` or `stop`; True if `stop` is set."""
    waits = [asyncio.ensure_future(ended.wait()), asyncio.ensure_future(stop.wait())]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()
    return stop.is_set()


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`; True at once if `stop` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    except TimeoutError:
        return False
    return True


# How the supervisor starts and ends each process fault. A wiped node is a dead one until
# its replacement starts, empty.
_SIGNALS = {KILL: ("kill", "restart"), PAUSE: ("pause", "resume"), WIPE: ("kill", "wipe")}


async def _toggle_fault(name: str, kv: AsyncKV, fault: Fault, on: bool) -> None:
    for node in fault.nodes:
        if fault.kind == PARTITION:
            await kv.partition(node, on, fault.direction)
        else:
            action = _SIGNALS[fault.kind][0 if on else 1]
            await asyncio.to_thread(lambda: getattr(Cluster.load(name), action)(node))


async def _heal(name: str, kv: AsyncKV, ring: list[str], faults: list[Fault]) -> None:
    """Leave the cluster whole whatever happened: every node of the ring up, every link
    healed (a node whose wipe was cut short comes back with its data). A node leaving the
    ring is left as it is: one replaced was killed for good."""
    cluster = await asyncio.to_thread(Cluster.load, name)
    for member in cluster.nodes:
        state = await asyncio.to_thread(cluster.state, member)
        if state == "paused":
            await asyncio.to_thread(cluster.resume, member.name)
        elif state == "down":
            await asyncio.to_thread(cluster.restart, member.name)
    for fault in faults:
        if fault.kind == PARTITION:
            for node in fault.nodes:
                if node not in ring:
                    continue
                try:
                    await kv.partition(node, False)
                except Unavailable:
                    pass
