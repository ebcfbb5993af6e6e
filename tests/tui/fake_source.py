"""A deterministic `ClusterSource` for screen tests: fixed data, no processes, no clock.

It is a test double of the source *interface*; the tests of the live dashboard use a real
cluster instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from kvlab.core.plan import plan
from kvlab.core.ring import Ring
from kvlab.tui.source import (
    ActionsByName,
    DOWN,
    MISSING,
    SUSPECT,
    ChangeView,
    StreamView,
    Exchange,
    Healing,
    OK,
    PAUSED,
    UNREACHABLE,
    UP,
    ClusterView,
    KeyView,
    NodeView,
    OpResult,
    ReplicaView,
    TrafficSettings,
    TrafficStats,
)

# 2023-11-14 22:13:20 UTC, and 7.5 s before it: a fresh and a stale copy.
NEW, OLD = "1700000000000.0@proxy", "1699999992500.0@proxy"


def healing(hints: dict[str, int] | None = None, read_repair: int = 0, hint: int = 0,
            anti_entropy: int = 0, exchanges: dict[str, Exchange] | None = None,
            **counters: int) -> Healing:
    """A node's healing counters, with the mechanisms as keyword arguments."""
    return Healing(hints_held=dict(hints or {}),
                   repaired={"read_repair": read_repair, "hint": hint,
                             "anti_entropy": anti_entropy},
                   exchanges=dict(exchanges or {}), **counters)


def nodes() -> tuple[NodeView, ...]:
    """n2 and n5 hold hints for n3 (down); n3 and n4 (paused) report nothing. The detector
    holds n1 (cut off, so no heartbeat comes) and n3 down, and n4 (paused) suspect."""
    return (
        NodeView("n1", 8001, 4101, UP, 1204, 212.0, 1.8, None, partitioned=True,
                 healing=healing(read_repair=3, ae_rounds=40, ae_in_sync=38,
                                 exchanges={"n2": Exchange(1_700_000_000_000, "n1,n2,n5",
                                                           12, 0, 800)}),
                 health=DOWN, phi=12.4),
        NodeView("n2", 8002, 4102, UP, 1187, 198.0, 2.1, None,
                 healing=healing({"n3": 40}, hints_stored=40, ae_rounds=41, ae_in_sync=41),
                 health=UP, phi=0.4),
        NodeView("n3", 8003, None, DOWN, None, None, 2.0, "connect: ClientConnectorError",
                 health=DOWN, phi=143.0),
        NodeView("n4", 8004, 4104, PAUSED, None, None, 950.4, None, health=SUSPECT, phi=5.1),
        NodeView("n5", 8005, 4105, UP, 1230, 205.0, 1.9, None,
                 healing=healing({"n3": 1_312}, hints_stored=1_400, hints_replayed=88),
                 health=UP, phi=0.2),
    )


def adding(ring: Ring, node: str, n: int, arrived: int = 0, phase: str = "streaming",
           started_ms: int = 1_000) -> ChangeView:
    """`node` joining `ring`, its moves as the core plans them; the first `arrived` of its
    streams done, and the figures of a move 2.4 s in that is that far along."""
    new = ring.with_node(node)
    streams: dict[tuple[str, str], list] = {}
    for move in plan(ring, new, n).moves:
        streams.setdefault((move.source, move.target), []).append(move)
    moving = tuple(StreamView(source, target, tuple((m.start, m.end) for m in moves),
                              sum(m.fraction for m in moves), keys=400 * (i < arrived),
                              bytes=51_200 * (i < arrived), done=i < arrived)
                   for i, ((source, target), moves) in enumerate(streams.items()))
    total = sum(s.share for s in moving)
    fraction = sum(s.share for s in moving if s.done) / total if total else 0.0
    elapsed = 2_400
    return ChangeView("add", node, phase, nodes_before=ring.nodes, nodes_after=new.nodes,
                      started_ms=started_ms, elapsed_ms=elapsed,
                      keys=sum(s.keys for s in moving), bytes=sum(s.bytes for s in moving),
                      fraction=fraction,
                      rate_bytes_s=sum(s.bytes for s in moving) * 1000 // elapsed,
                      eta_ms=round(elapsed * (1 - fraction) / fraction)
                      if 0 < fraction < 1 else None,
                      moving=moving)


class FakeSource(ActionsByName):
    """The same cluster until acted on: n1 cut off, n3 down, n4 paused, traffic running
    with some errors. Partitions and membership changes show in the next snapshot; the
    other actions are only recorded in `calls`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.view = ClusterView(name="demo", n=3, r=2, w=2, vnodes=16, nodes=nodes(),
                                ring=Ring(("n1", "n2", "n3", "n4", "n5"), 16),
                                proxy_url="http://127.0.0.1:8000")
        self.traffic = TrafficStats(
            running=True, settings=TrafficSettings(rate=200, read_fraction=0.8),
            ops_per_s=187.0, ok=10_412, not_found=388,
            errors={"unavailable": 21, "timeout": 9, "connection": 0}, p99_ms=38.5,
            latency_ms=tuple(float(2 + (i * 7) % 11) for i in range(40)) + (950.0, 40.0),
            throughput=tuple(200.0 for _ in range(42)),
            error_rate=tuple(0.0 for _ in range(38)) + (9.0, 21.0, 0.0, 0.0))

    async def snapshot(self) -> ClusterView:
        return self.view

    async def inspect(self, key: str) -> KeyView:
        prefs = self.view.ring.preference_list(key, self.view.n)
        copies = [ReplicaView(prefs[0], OK, NEW, "blue"),
                  ReplicaView(prefs[1], OK, OLD, "green"),
                  ReplicaView(prefs[2], MISSING)]
        states, cut = self.view.states, self.view.partitioned
        return KeyView(key, tuple(
            ReplicaView(c.node, UNREACHABLE, reason="node down")
            if states[c.node] in (DOWN, PAUSED) else
            ReplicaView(c.node, UNREACHABLE, reason="partitioned") if c.node in cut else c
            for c in copies))

    async def read(self, key: str) -> OpResult:
        return OpResult(True, f"read {key} = 'blue'")

    async def write(self, key: str, value: str) -> OpResult:
        return OpResult(True, f"write {key} = {value!r}")

    async def act(self, action: str, node: str) -> None:
        self.calls.append((action, node))

    async def restart_proxy(self) -> None:
        self.calls.append(("restart", "proxy"))

    async def partition(self, node: str, on: bool) -> None:
        self.calls.append(("partition" if on else "heal", node))
        self._nodes(replace(n, partitioned=on) if n.name == node else n
                    for n in self.view.nodes)

    async def add_node(self) -> str:
        name = f"n{len(self.view.nodes) + 1}"
        self.calls.append(("add", name))
        self._nodes((*self.view.nodes, NodeView(name, 8000 + len(self.view.nodes) + 1, 4200,
                                                UP, 0)))
        return name

    def set_change(self, change: ChangeView | None, last: ChangeView | None = None) -> None:
        """The membership change in progress (and the last one done) from the next
        snapshot on; a node the change brings in gets a row, up and healthy."""
        rows = self.view.nodes
        for name in change.joining if change else ():
            if self.view.node(name) is None:
                rows += (NodeView(name, 8000 + len(rows) + 1, 4200 + len(rows), UP, 0,
                                  health=UP, phi=0.1),)
        self.view = replace(self.view, nodes=rows, change=change, last_change=last)

    def set_healing(self, node: str, healing: Healing | None) -> None:
        """What `node` reports from the next snapshot on (a repair happened)."""
        self._nodes(replace(n, healing=healing) if n.name == node else n
                    for n in self.view.nodes)

    async def remove_node(self, node: str) -> None:
        self.calls.append(("remove", node))
        self._nodes(n for n in self.view.nodes if n.name != node)

    def _nodes(self, nodes: Iterable[NodeView]) -> None:
        listed = tuple(nodes)
        self.view = replace(self.view, nodes=listed,
                            ring=Ring(tuple(n.name for n in listed), self.view.vnodes))

    async def start_traffic(self, settings: TrafficSettings) -> None:
        self.traffic = replace(self.traffic, running=True, settings=settings)

    async def stop_traffic(self) -> None:
        self.traffic = replace(self.traffic, running=False)

    def traffic_stats(self) -> TrafficStats:
        return self.traffic

    async def close(self) -> None:
        pass
