"""What the dashboard reads and does, independent of where the cluster runs.

The screens never talk HTTP or touch processes: they hold a `ClusterSource` and call it from
workers. `kvlab.tui.live.LiveSource` implements it over a real local cluster (proxy API, node
`/stats`, the supervisor); a simulated source can feed the very same screens.

Everything a source returns is a plain frozen dataclass, so a test can build one by hand.

Contract for implementers:

- Every method may be awaited from the app's event loop; none may block it (run blocking
  calls in a thread). Calls can overlap: a poll, an inspection and a chaos action at once.
- `snapshot()` is called about twice a second and must reflect changes made from outside the
  dashboard (another terminal killing a node).
- Actions that can't be done raise `SourceError` with a message fit for the event log.
- `traffic_stats()` is synchronous and cheap (it reads counters, no IO).
- A node's `healing` is what its replica core reports (`Replica.snapshot(now)`), parsed with
  `Healing.from_snapshot`; None when the node is not answering or does not report it.
- A node's `health` and `phi` are the coordinator's failure detector's verdict on it, and the
  cluster's `change` the membership change in progress, both from `Membership.view(now)`
  (`/cluster`'s "membership"), the change parsed with `ChangeView.from_view`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kvlab.core.ring import Ring

# Node states, as the supervisor names them (failed: stopped for good on a damaged database).
UP, DOWN, PAUSED, STARTING, FAILED = "up", "down", "paused", "starting", "failed"
# Replica states in a `KeyView`, as `GET /cluster/keys/{key}` names them.
OK, MISSING, UNREACHABLE = "ok", "missing", "unreachable"
# Node health, as the failure detector names it (kvlab.core.detector.Health): UP and DOWN
# are spelt as the process states are, but say what the coordinator believes, not /proc.
SUSPECT = "suspect"
HEALTHS = (UP, SUSPECT, DOWN)

ACTIONS = ("kill", "pause", "resume", "restart")
# What repaired a key, as `Replica.snapshot` counts them (kvlab.core.messages.Mechanism).
READ_REPAIR, HINT, ANTI_ENTROPY = "read_repair", "hint", "anti_entropy"


class SourceError(Exception):
    """An action the source could not carry out; the message says why."""


def _count(value: object) -> int:
    """A counter from JSON: anything but a non-negative int (absent, null, junk) is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else 0


def _counts(value: object) -> dict[str, int]:
    return {str(k): _count(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class Exchange:
    """The last anti-entropy exchange a node started with one peer, and finished.

    `keys_in` were repaired on the node that started it, `keys_out` sent to the peer.
    `at_ms` is on that node's clock: compare it only with its own earlier values.
    """

    at_ms: int
    range: str = ""
    keys_in: int = 0
    keys_out: int = 0
    ms: int = 0  # how long it took
    ago_ms: int | None = None  # how long before the snapshot it finished

    @classmethod
    def from_snapshot(cls, data: object) -> Exchange | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("at_ms"), int):
            return None
        ago = data.get("ago_ms")
        return cls(at_ms=data["at_ms"], range=str(data.get("range", "")),
                   keys_in=_count(data.get("keys_in")), keys_out=_count(data.get("keys_out")),
                   ms=_count(data.get("ms")), ago_ms=ago if isinstance(ago, int) else None)


@dataclass(frozen=True)
class Healing:
    """One node's self-healing counters since its process started (`Replica.snapshot`)."""

    # target node -> hints this node holds for it, not yet handed over
    hints_held: dict[str, int] = field(default_factory=dict, hash=False)
    hints_stored: int = 0
    hints_replayed: int = 0  # handed over to their target (acknowledged)
    hints_expired: int = 0  # dropped after the hint window
    ae_rounds: int = 0  # anti-entropy exchanges this node started and finished
    ae_in_sync: int = 0  # of which found nothing to repair
    # mechanism (READ_REPAIR, HINT, ANTI_ENTROPY) -> keys repaired on this node
    repaired: dict[str, int] = field(default_factory=dict, hash=False)
    repair_bytes: int = 0
    superseded: int = 0  # writes answered "a newer version is held"
    refused: int = 0  # writes refused: stamped too far ahead of the node's clock
    purged: int = 0  # tombstones dropped
    tombstones: int = 0  # tombstones held now
    # peer -> the last exchange this node started with it
    exchanges: dict[str, Exchange] = field(default_factory=dict, hash=False)

    @property
    def hints_pending(self) -> int:
        """Hints held for every target together."""
        return sum(self.hints_held.values())

    def hints_for(self, target: str) -> int:
        return self.hints_held.get(target, 0)

    def repaired_by(self, mechanism: str) -> int:
        return self.repaired.get(mechanism, 0)

    @classmethod
    def from_snapshot(cls, data: object) -> Healing | None:
        """Parse `Replica.snapshot(now)` as JSON has it; None if there is none (an older
        node, or one not answering). Missing or malformed counters read as 0."""
        if not isinstance(data, Mapping):
            return None
        exchanges = data.get("exchanges")
        parsed = {str(peer): Exchange.from_snapshot(e) for peer, e in exchanges.items()} \
            if isinstance(exchanges, Mapping) else {}
        counters: dict[str, Any] = {
            name: _count(data.get(name))
            for name in ("hints_stored", "hints_replayed", "hints_expired", "ae_rounds",
                         "ae_in_sync", "repair_bytes", "superseded", "refused", "purged",
                         "tombstones")}
        return cls(hints_held={t: c for t, c in _counts(data.get("hints_held")).items() if c},
                   repaired=_counts(data.get("repaired")),
                   exchanges={p: e for p, e in parsed.items() if e is not None}, **counters)


def _share(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else 0.0


def _names(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


@dataclass(frozen=True)
class StreamView:
    """One stream of a membership change: `arcs` of the ring, each `(start, end]`, sent
    from `source` to `target` (a "moving" entry of `Membership.view`)."""

    source: str
    target: str
    arcs: tuple[tuple[int, int], ...] = ()
    share: float = 0.0  # of the key space
    keys: int = 0
    bytes: int = 0
    done: bool = False
    error: str = ""

    @classmethod
    def from_view(cls, data: object) -> StreamView | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("source"), str) \
                or not isinstance(data.get("target"), str):
            return None
        arcs = data.get("arcs")
        return cls(data["source"], data["target"],
                   tuple((a[0], a[1]) for a in arcs if isinstance(a, (list, tuple))
                         and len(a) == 2 and all(isinstance(x, int) for x in a))
                   if isinstance(arcs, list) else (),
                   share=_share(data.get("share")), keys=_count(data.get("keys")),
                   bytes=_count(data.get("bytes")), done=data.get("done") is True,
                   error=str(data.get("error") or ""))


@dataclass(frozen=True)
class ChangeView:
    """A membership change and how far it got (a "change" of `Membership.view`)."""

    kind: str  # "add", "remove", "replace" (or "resume": one a restarted committer found)
    node: str  # the node joining (add, replace) or leaving (remove)
    phase: str  # joining, streaming, settling, done
    replaced: str | None = None  # replace: the node whose place `node` takes
    nodes_before: tuple[str, ...] = ()
    nodes_after: tuple[str, ...] = ()
    started_ms: int = 0  # on the committer's clock: with kind and node, which change it is
    elapsed_ms: int = 0
    keys: int = 0
    bytes: int = 0
    fraction: float = 0.0  # of the moving ranges arrived
    rate_bytes_s: int = 0
    eta_ms: int | None = None
    moving: tuple[StreamView, ...] = ()

    @property
    def joining(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes_after if n not in self.nodes_before)

    @property
    def leaving(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes_before if n not in self.nodes_after)

    @property
    def identity(self) -> tuple[str, str, int]:
        """Tells one change from another (a view of the same change, later, has the same)."""
        return self.kind, self.node, self.started_ms

    @classmethod
    def from_view(cls, data: object) -> ChangeView | None:
        """Parse a change as JSON has it; None for none (or one without its kind and node).
        Missing or malformed figures read as 0 (the ETA as unknown)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("kind"), str) \
                or not isinstance(data.get("node"), str):
            return None
        moving = data.get("moving")
        streams = [StreamView.from_view(m) for m in moving] if isinstance(moving, list) else []
        replaced, eta = data.get("replaced"), data.get("eta_ms")
        return cls(kind=data["kind"], node=data["node"], phase=str(data.get("phase", "")),
                   replaced=replaced if isinstance(replaced, str) else None,
                   nodes_before=_names(data.get("nodes_before")),
                   nodes_after=_names(data.get("nodes_after")),
                   started_ms=_count(data.get("started_ms")),
                   elapsed_ms=_count(data.get("elapsed_ms")), keys=_count(data.get("keys")),
                   bytes=_count(data.get("bytes")),
                   fraction=min(1.0, max(0.0, _share(data.get("fraction")))),
                   rate_bytes_s=_count(data.get("rate_bytes_s")),
                   eta_ms=eta if isinstance(eta, int) and not isinstance(eta, bool) else None,
                   moving=tuple(s for s in streams if s is not None))


@dataclass(frozen=True)
class MembershipView:
    """`Membership.view(now)` parsed: the read ring, the change in progress and the last
    one, and per node the detector's verdict (health, phi)."""

    ring: Ring | None = None  # None: not reported (an older coordinator)
    change: ChangeView | None = None
    last_change: ChangeView | None = None
    health: dict[str, tuple[str, float | None]] = field(default_factory=dict, hash=False)

    @classmethod
    def from_view(cls, data: object) -> MembershipView:
        """Whatever is missing or malformed is unknown; nothing raises."""
        if not isinstance(data, Mapping):
            return cls()
        health: dict[str, tuple[str, float | None]] = {}
        nodes = data.get("nodes")
        for name, node in (nodes.items() if isinstance(nodes, Mapping) else ()):
            if isinstance(node, Mapping) and node.get("health") in HEALTHS:
                phi = node.get("phi")
                health[str(name)] = (node["health"], float(phi) if isinstance(
                    phi, (int, float)) and not isinstance(phi, bool) else None)
        return cls(_ring(data.get("ring")), ChangeView.from_view(data.get("change")),
                   ChangeView.from_view(data.get("last_change")), health)


def _ring(data: object) -> Ring | None:
    """The ring as `Membership.view` spells it: nodes, vnodes and seats."""
    if not isinstance(data, Mapping) or not isinstance(data.get("vnodes"), int):
        return None
    nodes, seats = _names(data.get("nodes")), data.get("seats")
    pairs = tuple((str(s[0]), str(s[1])) for s in seats
                  if isinstance(s, (list, tuple)) and len(s) == 2) \
        if isinstance(seats, (list, tuple)) else ()
    try:
        return Ring(nodes, data["vnodes"], pairs)
    except ValueError:  # duplicates, seats of nodes it does not have: not a ring
        return None


@dataclass(frozen=True)
class NodeView:
    """One data node as the dashboard shows it. None means unknown (the node is not answering)."""

    name: str
    port: int | None
    pid: int | None
    state: str  # UP, DOWN, PAUSED, STARTING or FAILED
    keys: int | None = None
    ops_per_s: float | None = None
    p99_ms: float | None = None  # replica round trips as the coordinator measures them
    last_error: str | None = None
    # The coordinator's link to the node is cut (a partition): whatever its state, the
    # coordinator can't reach it, so its replicas time out.
    partitioned: bool = False
    healing: Healing | None = None
    # The coordinator's failure detector: UP, SUSPECT or DOWN, and its suspicion level phi
    # (None: unknown, a source or a coordinator that has no detector).
    health: str | None = None
    phi: float | None = None

    @property
    def hints(self) -> int | None:
        """Hints this node holds for others, not yet handed over (None: unknown)."""
        return None if self.healing is None else self.healing.hints_pending


@dataclass(frozen=True)
class ClusterView:
    """One snapshot of the whole cluster."""

    name: str
    n: int
    r: int
    w: int
    vnodes: int
    nodes: tuple[NodeView, ...]
    ring: Ring
    proxy_state: str = UP  # the coordinator: UP, DOWN, PAUSED or STARTING
    proxy_url: str | None = None
    # The coordinator's counters (None: unknown): writes it asked a fallback node to hold
    # as a hint, and writes it stamped again above a newer version a replica held.
    hints_sent: int | None = None
    restamped: int | None = None
    # The membership change in progress, and the last one finished (None: none, or unknown).
    change: ChangeView | None = None
    last_change: ChangeView | None = None

    def node(self, name: str) -> NodeView | None:
        return next((n for n in self.nodes if n.name == name), None)

    @property
    def states(self) -> dict[str, str]:
        return {n.name: n.state for n in self.nodes}

    @property
    def partitioned(self) -> frozenset[str]:
        """The nodes cut off from the coordinator."""
        return frozenset(n.name for n in self.nodes if n.partitioned)

    @property
    def joining(self) -> tuple[str, ...]:
        """Nodes the change in progress brings in."""
        return self.change.joining if self.change else ()

    @property
    def leaving(self) -> tuple[str, ...]:
        """Nodes the change in progress takes out (a removed or a replaced one)."""
        return self.change.leaving if self.change else ()


@dataclass(frozen=True)
class ReplicaView:
    """One replica's own copy of a key."""

    node: str
    state: str  # OK, MISSING or UNREACHABLE
    version: str | None = None
    value: str | None = None
    deleted: bool = False
    reason: str | None = None  # why it was unreachable


@dataclass(frozen=True)
class KeyView:
    """Each replica of `key`, in preference-list order; `error` if nobody could be asked."""

    key: str
    replicas: tuple[ReplicaView, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class OpResult:
    """What a single read or write through the coordinator returned, for the event log."""

    ok: bool
    text: str


@dataclass(frozen=True)
class TrafficSettings:
    rate: int = 100  # operations per second
    read_fraction: float = 0.8
    r: int | None = None  # None: the cluster's default quorum
    w: int | None = None


@dataclass(frozen=True)
class TrafficStats:
    """The workload generator's counters since it was (re)started."""

    running: bool = False
    settings: TrafficSettings = field(default_factory=TrafficSettings)
    ops_per_s: float = 0.0  # completed operations in the last full second
    ok: int = 0
    not_found: int = 0  # a read of a key never written: a correct answer, not an error
    errors: dict[str, int] = field(default_factory=dict)  # unavailable, timeout, connection, ...
    p99_ms: float | None = None  # over the last full second
    latency_ms: tuple[float, ...] = ()  # p99 per second, oldest first, for a sparkline
    throughput: tuple[float, ...] = ()  # completed ops per second, oldest first
    error_rate: tuple[float, ...] = ()  # failed ops per second, oldest first

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


@runtime_checkable
class ClusterSource(Protocol):
    """Where the dashboard's data comes from and where its actions go."""

    async def snapshot(self) -> ClusterView:
        """The cluster now: membership, settings, each node's state and counters."""
        ...

    async def inspect(self, key: str) -> KeyView:
        """Each replica's copy of `key` without repairing anything."""
        ...

    async def read(self, key: str) -> OpResult:
        """A normal quorum read of `key` (it repairs stale replicas, as every read does)."""
        ...

    async def write(self, key: str, value: str) -> OpResult:
        """A normal quorum write of `key`."""
        ...

    async def kill(self, node: str) -> None:
        """Crash the node at once (SIGKILL)."""
        ...

    async def pause(self, node: str) -> None:
        """Freeze the node (SIGSTOP): its connections stay open but it answers nothing."""
        ...

    async def resume(self, node: str) -> None:
        """Unfreeze a paused node (SIGCONT)."""
        ...

    async def restart(self, node: str) -> None:
        """Stop the node if it runs and start it again on its own data."""
        ...

    async def restart_proxy(self) -> None:
        """Stop the coordinator (the proxy) and start it again on its kept state (its
        clock, the ring); the nodes keep running."""
        ...

    async def partition(self, node: str, on: bool) -> None:
        """Cut (`on`) or heal the link between the coordinator and the node, both ways."""
        ...

    async def add_node(self) -> str:
        """Start one more node and join it to the ring, its ranges streamed to it; returns
        its name once the move is done (snapshots show the move meanwhile)."""
        ...

    async def remove_node(self, node: str) -> None:
        """Stream the node's ranges to the others, take it out of the ring and stop it;
        returns once that is done."""
        ...

    async def start_traffic(self, settings: TrafficSettings) -> None:
        """Start (or retune) the built-in workload against the coordinator."""
        ...

    async def stop_traffic(self) -> None:
        ...

    def traffic_stats(self) -> TrafficStats:
        ...

    async def close(self) -> None:
        """Stop the traffic and release connections; the cluster itself keeps running."""
        ...


class ActionsByName:
    """The four chaos methods of `ClusterSource`, each calling `act(action, node)`:
    a source whose actions share one code path subclasses this and writes `act`."""

    async def act(self, action: str, node: str) -> None:
        raise NotImplementedError

    async def kill(self, node: str) -> None:
        await self.act("kill", node)

    async def pause(self, node: str) -> None:
        await self.act("pause", node)

    async def resume(self, node: str) -> None:
        await self.act("resume", node)

    async def restart(self, node: str) -> None:
        await self.act("restart", node)
