"""Consistent hashing with virtual nodes.

Each node owns `vnodes` points (tokens) on a 64-bit ring. A key hashes to a point and its
preference list is the first N *distinct* nodes met walking clockwise from there.

A node's tokens come from its name, or from the name of the node it replaced (its *seat*):
a replacement takes over exactly the ranges of the node it stands in for, so replacing a
dead node moves no other range.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field

import mmh3

RING_SIZE = 1 << 64
DEFAULT_VNODES = 64


def hash_key(key: str) -> int:
    """The key's position on the ring (unsigned 64-bit murmur3)."""
    return mmh3.hash64(key.encode("utf-8"), signed=False)[0]


def vnode_token(node: str, index: int) -> int:
    """Position of `node`'s `index`-th virtual node; stable across processes and runs."""
    return hash_key(f"{node}#{index}")


@dataclass(frozen=True)
class Ring:
    """An immutable ring; membership changes build a new one (cheap at our sizes)."""

    nodes: tuple[str, ...]
    vnodes: int = DEFAULT_VNODES
    # (node, the name its tokens are made from) for nodes that replaced another
    seats: tuple[tuple[str, str], ...] = ()
    _tokens: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _owners: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # (arc, n) -> preference list: a ring has few arcs, and the walk is the costly part of
    # placing a key. The ring never changes, so the answers never go stale.
    _lists: dict[tuple[int, int], tuple[str, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"duplicate node names in {self.nodes}")
        seat = dict(self.seats)
        if not seat.keys() <= set(self.nodes):
            raise ValueError(f"seats {self.seats} name nodes outside {self.nodes}")
        points = sorted(
            (vnode_token(seat.get(node, node), i), node)
            for node in self.nodes for i in range(self.vnodes)
        )
        object.__setattr__(self, "_tokens", tuple(t for t, _ in points))
        object.__setattr__(self, "_owners", tuple(n for _, n in points))

    def with_node(self, node: str) -> Ring:
        return Ring(self.nodes + (node,), self.vnodes, self.seats)

    def without_node(self, node: str) -> Ring:
        return Ring(tuple(n for n in self.nodes if n != node), self.vnodes,
                    tuple((n, s) for n, s in self.seats if n != node))

    def replacing(self, old: str, new: str) -> Ring:
        """`new` in `old`'s place, on `old`'s tokens: it takes over exactly its ranges."""
        if old not in self.nodes:
            raise ValueError(f"no node {old} in the ring")
        seat = dict(self.seats).get(old, old)
        return Ring(tuple(new if n == old else n for n in self.nodes), self.vnodes,
                    tuple((n, s) for n, s in self.seats if n != old) + ((new, seat),))

    def preference_list(self, key: str, n: int) -> tuple[str, ...]:
        """The first `n` distinct nodes clockwise from the key's hash (fewer if the ring is small)."""
        return self.preference_list_at(hash_key(key), n)

    @property
    def tokens(self) -> tuple[int, ...]:
        """Every virtual node's position, in ring order."""
        return self._tokens

    def arc_index(self, point: int) -> int:
        """Which arc `point` falls in: points in one arc share every preference list."""
        return bisect_right(self._tokens, point)

    def preference_list_at(self, point: int, n: int) -> tuple[str, ...]:
        start = bisect_right(self._tokens, point)
        cached = self._lists.get((start, n))
        if cached is None:
            cached = self._lists[(start, n)] = self._walk(start, n)
        return cached

    def _walk(self, start: int, n: int) -> tuple[str, ...]:
        want = min(n, len(self.nodes))
        if want <= 0:
            return ()
        found: list[str] = []
        total = len(self._owners)
        for step in range(total):
            owner = self._owners[(start + step) % total]
            if owner not in found:
                found.append(owner)
                if len(found) == want:
                    break
        return tuple(found)

    def arcs(self) -> list[tuple[int, int, str]]:
        """(start, end, owner) for every arc; a point in (start, end] belongs to `owner`.

        The first arc wraps around zero: its start is the last token.
        """
        total = len(self._tokens)
        return [
            (self._tokens[i - 1], self._tokens[i], self._owners[i]) for i in range(total)
        ]

    def ownership(self) -> dict[str, float]:
        """Fraction of the ring for which each node is the first (primary) replica."""
        share: Counter[str] = Counter()
        for start, end, owner in self.arcs():
            share[owner] += (end - start) % RING_SIZE
        if len(self._tokens) == 1:
            share[self._owners[0]] = RING_SIZE
        return {node: share[node] / RING_SIZE for node in self.nodes}
