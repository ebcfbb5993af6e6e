"""The chaos workload and nemesis, played on a real local cluster in wall-clock time.

The same seeded `Workload` and nemesis `schedule` as the simulator, executed for real:
clients are asyncio tasks talking to the proxy over HTTP; kill, pause and restart are
signals from the supervisor; partitions cut the proxy's link to a node through the replica
channel's fault hook; a wipe kills a node and, at the end of the fault, deletes its
database and starts it again empty (`Cluster.wipe`), as in the simulator. Every operation
goes into a history for the checker.

Then comes a quiescence phase: every fault healed, no client traffic, for `quiesce_s`;
after it each key the workload wrote is inspected (`GET /cluster/keys/{key}`, each
replica's version) and counted under-replicated if fewer than N of its replicas hold the
newest version any of them holds. Hints are not visible there: a version only a hint holds
is not counted (the simulator, which sees every store, does count it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kvlab.chaos.history import Event, Recorder
from kvlab.chaos.nemesis import KILL, PARTITION, PAUSE, WIPE, Fault, schedule
from kvlab.chaos.outcomes import history_type
from kvlab.chaos.summary import sum_healing
from kvlab.chaos.workload import DELETE, READ, WRITE, Mix, Op
from kvlab.client import AsyncKV, BadRequest, KeyNotFound, KVError, Unavailable
from kvlab.cluster.supervisor import Cluster
from kvlab.core.messages import NOT_FOUND, OK, TIMEOUT, UNAVAILABLE
from kvlab.core.version import Version

LIVE_NEMESES = (KILL, PAUSE, PARTITION, WIPE)


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
    # After the clients: faults healed, no traffic, this long. Anti-entropy compares each
    # range with each peer every 5 s by default, from both sides.
    quiesce_s: float = 6.0


@dataclass
class ChaosRun:
    events: list[Event]
    faults: list[Fault] = field(default_factory=list)
    elapsed_s: float = 0.0  # the clients' run, without the quiescence phase
    written: dict[str, None] = field(default_factory=dict)  # keys written or deleted
    under_replicated: list[str] = field(default_factory=list)
    healing: dict = field(default_factory=dict)  # the nodes' counters, added up


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
    deadline = time.monotonic() + options.duration_s
    run = ChaosRun(recorder.events)

    def now_ns() -> int:
        return time.monotonic_ns() - began

    async with AsyncKV(cluster.url, timeout=5.0) as kv:
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
        nemesis = asyncio.create_task(
            _nemesis(cluster, kv, options, run, deadline, clients_done, progress))
        try:
            await asyncio.gather(*(client(p) for p in range(options.mix.clients)))
            # Let the nemesis end its fault itself rather than cancel it half-way through a
            # restart that `_heal` would then race.
            clients_done.set()
            await nemesis
        finally:
            if not nemesis.done():
                nemesis.cancel()
                await asyncio.gather(nemesis, return_exceptions=True)
            await _heal(cluster, kv, run.faults)
        run.elapsed_s = (time.monotonic_ns() - began) / 1e9
        if progress:
            progress(f"quiescence: {options.quiesce_s:g} s with no faults and no traffic")
        await asyncio.sleep(options.quiesce_s)
        run.under_replicated = await under_replicated(kv, list(run.written))
        run.healing = sum_healing(node["healing"] for node in (await kv.cluster())["nodes"]
                                  if isinstance(node.get("healing"), dict))
    return run


async def under_replicated(kv: AsyncKV, keys: list[str]) -> list[str]:
    """The keys among `keys` that fewer than N replicas hold in their newest version.

    The newest version is the newest any replica of the key reports (a replica that
    cannot be asked holds no current copy); a key no replica holds needs no copies.
    """
    short = []
    for key in keys:
        replicas = (await kv.inspect(key))["replicas"]
        versions = [Version.parse(r["version"]) for r in replicas
                    if r["state"] == "ok" and r["version"] is not None]
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


async def _nemesis(cluster: Cluster, kv: AsyncKV, options: ChaosOptions, run: ChaosRun,
                   deadline: float, stop: asyncio.Event,
                   progress: Callable[[str], None] | None) -> None:
    """Play the fault schedule until the deadline, or until `stop` (the clients are done)."""
    start = time.monotonic()
    names = [n.name for n in cluster.nodes]
    faults = schedule(options.nemesis, names, ["proxy"], options.seed,
                      first_ms=options.first_fault_ms, gap_ms=options.gap_ms,
                      duration_ms=options.fault_ms, nodes_per_fault=options.nemesis_nodes)
    for fault in faults:
        begin = start + fault.at_ms / 1000
        end = min(start + fault.end_ms / 1000, deadline)
        if begin >= deadline or await _stopped(stop, begin - time.monotonic()):
            return
        run.faults.append(fault)
        if progress:
            progress(f"nemesis: {fault.describe()}")
        await _start_fault(cluster, kv, fault)
        try:
            await _stopped(stop, end - time.monotonic())
        finally:
            await _end_fault(cluster, kv, fault)


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


async def _start_fault(cluster: Cluster, kv: AsyncKV, fault: Fault) -> None:
    await _toggle_fault(cluster, kv, fault, on=True)


async def _end_fault(cluster: Cluster, kv: AsyncKV, fault: Fault) -> None:
    await _toggle_fault(cluster, kv, fault, on=False)


async def _toggle_fault(cluster: Cluster, kv: AsyncKV, fault: Fault, on: bool) -> None:
    for node in fault.nodes:
        if fault.kind == PARTITION:
            await kv.partition(node, on, fault.direction)
        else:
            action = _SIGNALS[fault.kind][0 if on else 1]
            await asyncio.to_thread(getattr(cluster, action), node)


async def _heal(cluster: Cluster, kv: AsyncKV, faults: list[Fault]) -> None:
    """Leave the cluster whole whatever happened: every node up, every link healed (a
    node whose wipe was cut short comes back with its data)."""
    for member in cluster.nodes:
        state = await asyncio.to_thread(cluster.state, member)
        if state == "paused":
            await asyncio.to_thread(cluster.resume, member.name)
        elif state == "down":
            await asyncio.to_thread(cluster.restart, member.name)
    for fault in faults:
        if fault.kind == PARTITION:
            for node in fault.nodes:
                try:
                    await kv.partition(node, False)
                except Unavailable:
                    pass
