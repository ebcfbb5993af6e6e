"""Which ring is in force: the membership a coordinator places keys by, and its version.

Outside a membership change there is one ring. During one (as in Cassandra's pending
ranges) there are two: `ring`, the ring being left, still places every read; `pending`,
the ring being moved to, adds its replicas to every write, so nothing written while a range
is in motion misses its new owners. Once every moving range has arrived, the next version
has the new ring alone. Versions only grow: every node is told each one, and a replica
refuses a request for a key no ring of its version gives it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvlab.core.messages import RingSpec, RingUpdate
from kvlab.core.ring import Ring


def spec_of(ring: Ring) -> RingSpec:
    return RingSpec(list(ring.nodes), ring.vnodes, [tuple(s) for s in ring.seats])


def ring_of(spec: RingSpec) -> Ring:
    return Ring(tuple(spec.nodes), spec.vnodes, tuple((n, s) for n, s in spec.seats))


# A ring update from the wire is refused beyond these: a ring is built in memory at once.
MAX_NODES = 1024
MAX_VNODES = 4096


@dataclass(frozen=True)
class Topology:
    version: int
    ring: Ring
    pending: Ring | None = None
    clean: bool = False  # nothing placed by an older ring in flight: strays may go

    @property
    def members(self) -> tuple[str, ...]:
        """Every node of either ring, in order of joining."""
        if self.pending is None:
            return self.ring.nodes
        return self.ring.nodes + tuple(n for n in self.pending.nodes if n not in self.ring.nodes)

    def moved(self, ring: Ring) -> Topology:
        """The next version: `ring` becomes the pending ring (a move begins)."""
        return Topology(self.version + 1, self.ring, ring)

    def settled(self) -> Topology:
        """The next version: the pending ring takes over alone (the move is over)."""
        assert self.pending is not None
        return Topology(self.version + 1, self.pending)

    def cleaned(self) -> Topology:
        """The next version: the same ring, and nothing older in flight."""
        assert self.pending is None
        return Topology(self.version + 1, self.ring, clean=True)

    def update(self, addresses: dict[str, str] | None = None) -> RingUpdate:
        return RingUpdate(self.version, spec_of(self.ring),
                          None if self.pending is None else spec_of(self.pending),
                          dict(addresses or {}), self.clean)

    @classmethod
    def of(cls, update: RingUpdate) -> Topology:
        """The topology `update` describes; ValueError if it describes none."""
        for spec in (update.ring, update.pending):
            if spec is not None and (len(spec.nodes) > MAX_NODES or spec.vnodes > MAX_VNODES):
                raise ValueError(f"a ring of {len(spec.nodes)} nodes with {spec.vnodes} "
                                 f"vnodes each is beyond {MAX_NODES} and {MAX_VNODES}")
        pending = None if update.pending is None else ring_of(update.pending)
        return cls(update.version, ring_of(update.ring), pending, update.clean)
