"""What a membership change moves: the ranges whose replicas change, from whom to whom.

A change from one ring to another is planned by walking every arc between the tokens of
both rings: a key in an arc has one preference list before and one after. Nodes that join
an arc's list must be sent its keys; nodes that leave it may drop them. Each joining node
is paired with a leaving one as its source (Cassandra streams a range from the replica it
replaces), or with the arc's first current replica when nobody leaves (the ring had fewer
than N nodes). The plan is what `kvlab plan` prints; carrying it out is the next step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvlab.core.ring import RING_SIZE, Ring


@dataclass(frozen=True)
class Move:
    """The keys hashed into (start, end] go from `source` to `target`."""

    start: int
    end: int
    source: str
    target: str

    @property
    def fraction(self) -> float:
        """The share of the key space (and so, on average, of the keys) this move carries."""
        return ((self.end - self.start) % RING_SIZE or RING_SIZE) / RING_SIZE


@dataclass(frozen=True)
class Plan:
    before: dict[str, float]  # node -> share of the keys it holds (a replica of), before
    after: dict[str, float]
    moves: list[Move] = field(default_factory=list)
    changed: float = 0.0  # share of the key space whose replica set changes

    def flows(self) -> dict[tuple[str, str], float]:
        """(source, target) -> share of the key space it sends, largest first."""
        totals: dict[tuple[str, str], float] = {}
        for move in self.moves:
            pair = (move.source, move.target)
            totals[pair] = totals.get(pair, 0.0) + move.fraction
        return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


def plan(old: Ring, new: Ring, n: int) -> Plan:
    """The moves that take the replicas of every key from `old` to `new` (N = `n`)."""
    points = sorted(set(old.tokens) | set(new.tokens))
    before = dict.fromkeys(old.nodes, 0.0)
    after = dict.fromkeys(new.nodes, 0.0)
    moves: list[Move] = []
    changed = 0.0
    if not points or not old.nodes or not new.nodes:
        return Plan(before, after)
    for i, end in enumerate(points):
        start = points[i - 1]  # the first arc wraps around from the last point
        share = ((end - start) % RING_SIZE or RING_SIZE) / RING_SIZE
        inside = (start + 1) % RING_SIZE  # a point of the arc: keys there are placed alike
        was, now = old.preference_list_at(inside, n), new.preference_list_at(inside, n)
        for node in was:
            before[node] += share
        for node in now:
            after[node] += share
        joining = [node for node in now if node not in was]
        if not joining:
            continue
        changed += share
        leaving = [node for node in was if node not in now]
        for j, target in enumerate(joining):
            source = leaving[j] if j < len(leaving) else was[0]
            moves.append(Move(start, end, source, target))
    return Plan(before, after, moves, changed)
