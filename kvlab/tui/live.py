"""The live `ClusterSource`: a real local cluster of processes.

It reads the cluster the way any other terminal would: `cluster.json` through the supervisor
(re-read on every snapshot, so `kvlab kill n3` elsewhere shows up), process states from /proc,
the coordinator's `/cluster`, and each node's `/stats`. Blocking supervisor calls run in a
thread; HTTP goes through the client (`AsyncKV`, which types and checks every answer): one
for the proxy's operations, and one per process polled.

Each node's healing counters come from the coordinator's `/cluster` (its "healing" field,
null for a node it can't reach), or failing that from the node's own `/stats`; a proxy or
node too old to report them leaves them unknown.

Membership has two records that can briefly disagree while a node is added or removed:
cluster.json (the processes) and the coordinator's membership (who gets replicas). The ring
is drawn from the coordinator's (`/cluster`'s "membership": the ring reads are placed by,
with its seats), since that is where keys go; the rows are cluster.json's nodes plus any
node the coordinator watches that cluster.json does not record (joined through the API by
hand). Each node's health and phi, and the change in progress, come from there too.

Adding and removing a node block until its ranges have moved (the supervisor follows the
move), so they run in a thread under a lock of their own: the chaos keys still work during
a move, and the snapshots show it as it goes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import msgspec

from kvlab.client import AsyncKV, KeyNotFound, KVError
from kvlab.client.protocol import ClusterInfo, NodeInfo, NodeStats
from kvlab.cluster import supervisor
from kvlab.cluster.spec import ClusterSpec
from kvlab.cluster.supervisor import Cluster, ClusterError, Member
from kvlab.core.ring import Ring
from kvlab.tui.source import (
    ActionsByName,
    DOWN,
    FAILED,
    Healing,
    MembershipView,
    STARTING,
    UP,
    ClusterView,
    KeyView,
    NodeView,
    OpResult,
    ReplicaView,
    SourceError,
    TrafficSettings,
    TrafficStats,
)
from kvlab.tui.traffic import TrafficGenerator

POLL_TIMEOUT_S = 1.0
OP_TIMEOUT_S = 3.0


class LiveSource(ActionsByName):
    """A `ClusterSource` over the cluster named `name` in the current $KVLAB_HOME."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._polls: dict[str, AsyncKV] = {}  # url -> the client polling it
        self._kv: AsyncKV | None = None
        self._acting = asyncio.Lock()
        self._changing = asyncio.Lock()  # membership changes: one at a time, long
        self._traffic: TrafficGenerator | None = None
        self._ring: Ring | None = None
        # node -> (pid, reads + writes, when): the previous /stats, for ops per second
        self._counts: dict[str, tuple[int, int, float]] = {}
        # node -> link error count when first seen: errors from before the dashboard opened
        # (startup races) are not news; later ones are shown until a newer one replaces them.
        self._link_errors: dict[str, int] = {}
        self._last_error: dict[str, str] = {}

    # -- plumbing -----------------------------------------------------------------------

    async def _cluster(self) -> Cluster:
        try:
            return await asyncio.to_thread(Cluster.load, self.name)
        except ClusterError as exc:
            raise SourceError(str(exc)) from None

    def _poller(self, url: str, secret: str | None) -> AsyncKV:
        """The client that polls the process at `url` (a node's /stats needs the secret)."""
        kv = self._polls.get(url)
        if kv is None or kv.secret != secret:
            if kv is not None:
                asyncio.get_running_loop().create_task(kv.close())
            kv = self._polls[url] = AsyncKV(url, timeout=POLL_TIMEOUT_S, secret=secret)
        return kv

    def _client(self, cluster: Cluster) -> AsyncKV:
        """The client of `cluster`'s proxy, with its secret (faults, --protect-data)."""
        url = cluster.url
        if self._kv is None or (self._kv.url, self._kv.secret) != (url, cluster.secret):
            if self._kv is not None:  # the cluster moved: don't leak the old session
                asyncio.get_running_loop().create_task(self._kv.close())
            self._kv = AsyncKV(url, timeout=OP_TIMEOUT_S, secret=cluster.secret)
        return self._kv

    async def _cluster_info(self, cluster: Cluster) -> ClusterInfo | None:
        try:
            return await self._poller(cluster.url, cluster.secret).cluster()
        except KVError:  # not answering (yet), or not a kvlab proxy there
            return None

    async def _stats(self, url: str, secret: str | None) -> NodeStats | None:
        try:
            return await self._poller(url, secret).stats()
        except KVError:
            return None

    # -- reading ------------------------------------------------------------------------

    async def snapshot(self) -> ClusterView:
        cluster = await self._cluster()
        host = cluster.spec.host
        members = cluster.members()
        procs, failures = await asyncio.to_thread(_proc_states, cluster, members)
        # A node being removed runs on (its ranges stream out) until the move is over.
        rows = [*cluster.nodes, *cluster.leaving]
        for url in set(self._polls) - {cluster.url, *(m.url(host) for m in rows)}:
            asyncio.get_running_loop().create_task(self._polls.pop(url).close())  # it left
        coordinator: ClusterInfo | None
        coordinator, *stats = await asyncio.gather(
            self._cluster_info(cluster) if procs["proxy"] == UP else _none(),
            *(self._stats(m.url(host), cluster.secret) if procs[m.name] == UP else _none()
              for m in rows))
        links = {n.name: n for n in coordinator.nodes} if coordinator is not None else {}
        if coordinator is not None:
            self._forget(set(links) | {m.name for m in rows})
        now = self._clock()
        nodes = tuple(self._node_view(m, procs[m.name], s, links.get(m.name), now,
                                      failures.get(m.name))
                      for m, s in zip(rows, stats))
        recorded = {m.name for m in rows}
        # Watched by the coordinator but not in cluster.json: joined through its API by hand.
        nodes += tuple(NodeView(name, None, None, STARTING,
                                partitioned=link.partitioned is not None)
                       for name, link in links.items() if name not in recorded)
        spec = cluster.spec
        # The dashboard's own view of it, parsed as the simulated source's is.
        membership = MembershipView.from_view(
            None if coordinator is None else msgspec.to_builtins(coordinator.membership))
        if membership.health:
            nodes = tuple(replace(n, health=membership.health[n.name][0],
                                  phi=membership.health[n.name][1])
                          if n.name in membership.health else n for n in nodes)
        vnodes = spec.vnodes if coordinator is None else coordinator.vnodes
        ring = membership.ring
        if ring is None:  # a coordinator that does not report it: its nodes, by name
            ring = Ring(tuple(links) or tuple(m.name for m in cluster.nodes), vnodes)
        if ring != self._ring:  # the same ring object while it lasts: its drawing is cached
            self._ring = ring
        proxy_state = procs["proxy"]
        if proxy_state == UP and coordinator is None:
            proxy_state = STARTING
        known = coordinator is not None
        return ClusterView(
            name=spec.name,
            n=coordinator.n if known else spec.replicas,
            r=coordinator.r if known else spec.read_quorum,
            w=coordinator.w if known else spec.write_quorum,
            vnodes=vnodes, nodes=nodes, ring=self._ring,
            proxy_state=proxy_state, proxy_url=cluster.url,
            hints_sent=coordinator.proxy.hints_sent if known else None,
            restamped=coordinator.proxy.restamped if known else None,
            change=membership.change, last_change=membership.last_change,
        )

    def _node_view(self, member: Member, proc_state: str, stats: NodeStats | None,
                   link: NodeInfo | None, now: float, failure: str | None) -> NodeView:
        state = proc_state
        if state == UP and stats is None:
            state = STARTING  # alive but not answering (yet)
        ops = None
        if stats is not None:
            count = stats.reads + stats.writes
            previous = self._counts.get(member.name)
            if previous and previous[0] == stats.pid and now > previous[2]:
                ops = max(0.0, (count - previous[1]) / (now - previous[2]))
            elif previous:
                self._last_error.pop(member.name, None)  # a new process: old errors are history
            self._counts[member.name] = (stats.pid, count, now)
        return NodeView(
            name=member.name, port=member.port,
            pid=member.proc.pid if member.proc and state not in (DOWN, FAILED) else None,
            state=state,
            keys=stats.keys if stats else None,
            ops_per_s=ops,
            p99_ms=link.p99_ms if link else None,
            last_error=(stats.last_error if stats else None)
            or self._link_error(member.name, link) or failure,
            partitioned=link is not None and link.partitioned is not None,
            healing=_healing(state, link, stats),
        )

    def _forget(self, members: set[str]) -> None:
        """Drop the counters of nodes that left: one added later under the same name has a
        new link whose error count starts again at 0."""
        for memory in (self._counts, self._link_errors, self._last_error):
            for name in set(memory) - members:
                del memory[name]

    def _link_error(self, node: str, link: NodeInfo | None) -> str | None:
        if link is None:
            return self._last_error.get(node)
        errors = link.errors
        baseline = self._link_errors.setdefault(node, errors)
        if errors > baseline and link.last_error:
            self._link_errors[node] = errors
            self._last_error[node] = link.last_error
        return self._last_error.get(node)

    async def inspect(self, key: str) -> KeyView:
        cluster = await self._cluster()
        try:
            data = await self._client(cluster).inspect(key)
        except KVError as exc:
            return KeyView(key, error=str(exc))
        return KeyView(key, tuple(
            ReplicaView(node=r.node, state=r.state, version=r.version, value=r.value,
                        deleted=r.deleted, reason=r.reason)
            for r in data.replicas))

    async def read(self, key: str) -> OpResult:
        cluster = await self._cluster()
        try:
            result = await self._client(cluster).read(key)
        except KeyNotFound:
            return OpResult(True, f"read {key}: not found")
        except KVError as exc:
            return OpResult(False, f"read {key} failed: {exc}")
        return OpResult(True, f"read {key} = {result.text!r} "
                              f"(replied: {', '.join(result.acked) or '-'})")

    async def write(self, key: str, value: str) -> OpResult:
        cluster = await self._cluster()
        try:
            result = await self._client(cluster).set(key, value)
        except KVError as exc:
            return OpResult(False, f"write {key} failed: {exc}")
        return OpResult(True, f"write {key} = {value!r} "
                              f"(acked: {', '.join(result.acked) or '-'})")

    # -- chaos --------------------------------------------------------------------------

    async def act(self, action: str, node: str) -> None:
        await self._supervise(lambda cluster: getattr(cluster, action)(node))

    async def restart_proxy(self) -> None:
        await self._supervise(lambda cluster: cluster.restart_proxy())

    async def add_node(self) -> str:
        # The supervisor spawns n{k+1}, records it in cluster.json, has the coordinator
        # begin its join and follows the move until its ranges have arrived.
        member = await self._supervise(lambda cluster: cluster.add_node(), self._changing)
        return member.name

    async def remove_node(self, node: str) -> None:
        # Its ranges stream out first; the supervisor stops it once they have.
        await self._supervise(lambda cluster: cluster.remove_node(node), self._changing)

    async def _supervise(self, call: Callable[[Cluster], Member],
                         lock: asyncio.Lock | None = None) -> Member:
        """Run a blocking supervisor call on a fresh `Cluster.load` in a thread, under
        `lock` (by default the chaos actions', one at a time in key-press order)."""
        try:
            async with lock or self._acting:
                return await asyncio.to_thread(lambda: call(Cluster.load(self.name)))
        except ClusterError as exc:
            raise SourceError(str(exc)) from None

    async def partition(self, node: str, on: bool) -> None:
        cluster = await self._cluster()
        try:
            async with self._acting:
                await self._client(cluster).partition(node, on, "both")
        except KVError as exc:
            raise SourceError(str(exc)) from None

    # -- traffic ------------------------------------------------------------------------

    async def start_traffic(self, settings: TrafficSettings) -> None:
        cluster = await self._cluster()
        if self._traffic is None:
            # Its own client: a slow workload must not delay the dashboard's inspections.
            self._traffic = TrafficGenerator(AsyncKV(cluster.url, timeout=OP_TIMEOUT_S,
                                                     secret=cluster.secret))
        self._traffic.start(settings)

    async def stop_traffic(self) -> None:
        if self._traffic is not None:
            await self._traffic.stop()

    def traffic_stats(self) -> TrafficStats:
        return self._traffic.stats() if self._traffic else TrafficStats()

    async def close(self) -> None:
        await self.stop_traffic()
        if self._traffic is not None:
            await self._traffic.close()
        for kv in [self._kv, *self._polls.values()]:
            if kv is not None:
                await kv.close()
        self._traffic = self._kv = None
        self._polls = {}


def _proc_states(cluster: Cluster, members: list[Member]
                 ) -> tuple[dict[str, str], dict[str, str]]:
    """Each member's process state, FAILED for a node that stopped itself on a damaged
    database, and why those did (the way back is to wipe it)."""
    states: dict[str, str] = {}
    failures: dict[str, str] = {}
    for member in members:
        states[member.name] = member.proc.state() if member.proc else DOWN
        failure = cluster.failure(member) if states[member.name] == DOWN else None
        if failure is not None:
            states[member.name] = FAILED
            hint = supervisor.recover_hint(member.name, cluster.spec.name)
            failures[member.name] = f"{failure['reason']}; {hint}"
    return states, failures


async def _none() -> None:
    return None


def _healing(state: str, link: NodeInfo | None, stats: NodeStats | None) -> Healing | None:
    """The node's healing counters: the coordinator's view of them first, its own `/stats`
    next; none for a node not running (a coordinator's figures would be out of date)."""
    if state != UP:
        return None
    for report in (link, stats):
        if report is not None and report.healing is not None:
            return Healing.from_snapshot(msgspec.to_builtins(report.healing))
    return None


# -- attaching to a cluster, or starting one ---------------------------------------------


@contextmanager
def attach_or_start(spec: ClusterSpec, announce: Callable[[str], object] = print
                    ) -> Iterator[tuple[Cluster, bool]]:
    """The cluster `spec.name` for the dashboard's lifetime: `(cluster, started)`.

    A cluster already running is attached to and left running afterwards; otherwise a fresh
    one is started from `spec` and stopped when the block exits, however it exits.
    """
    try:
        existing: Cluster | None = Cluster.load(spec.name)
    except ClusterError:
        existing = None
    if existing is not None and existing.running():
        yield existing, False
        return
    announce(f"starting cluster {spec.name!r}: {spec.nodes} nodes, proxy on port {spec.port} "
             f"(N={spec.replicas} R={spec.read_quorum} W={spec.write_quorum}) ...")
    cluster = supervisor.up(spec)
    try:
        yield cluster, True
    finally:
        # Re-read it: a node restarted meanwhile (from the dashboard or another terminal)
        # has a new PID that only cluster.json knows.
        try:
            current = Cluster.load(spec.name)
        except ClusterError:
            current = cluster
        current.stop()
        cluster.stop()  # harmless for processes already gone: PIDs are checked with start times
