"""A TicTac-style hash tree over one range's keys, for anti-entropy (as in Riak's AAE).

A key falls into one of `SEGMENTS` leaf segments by the top bits of its ring hash. A
segment's hash is the XOR of hash(key, version) over its keys, so applying a write is two
XORs (the old version out, the new one in) and never a scan, and the order in which writes
arrived does not matter: two replicas holding the same versions have the same hashes.
Segments are grouped under `BRANCHES` branch hashes (the XOR of their segments), and the
root is the XOR of the branches: replicas compare branches first (32 numbers), then only the
leaves of branches that differ, then only the keys of segments that differ.

A tree can be saved (`pack`) and brought back (`unpack`) as bytes, for a node's restart: its
hashes at once, and each segment's (key -> version) entries only when first used
(`segment`), since decoding a million of them took most of a second (see
`kvlab.core.replica.Replica.dump`).
"""

from __future__ import annotations

from collections.abc import Iterator

import mmh3
import msgspec

from kvlab.core.version import Version

BRANCHES = 32
PER_BRANCH = 32
SEGMENTS = BRANCHES * PER_BRANCH
_SHIFT = 64 - 10  # the top 10 bits of a 64-bit ring hash pick one of 1024 segments
assert 1 << (64 - _SHIFT) == SEGMENTS


def segment_of(key_hash: int) -> int:
    return key_hash >> _SHIFT


def entry_hash(key: str, version: Version) -> int:
    """hash(key, version): two replicas agree on it exactly when they hold the same write."""
    return mmh3.hash64(f"{key}\0{version.physical}.{version.logical}@{version.coordinator}",
                       signed=False)[0]


class Packed(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A tree as bytes: its leaf hashes, and each non-empty segment's entries, encoded."""

    leaves: list[int]
    segments: list[tuple[int, int, bytes]]  # (segment, how many keys, its entries encoded)


_entries_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(dict[str, Version]))


class HashTree:
    """The tree of one range on one replica, and the (key -> version) entries under it.

    Read a segment's entries with `segment(i)`: `entries[i]` is empty until then for a
    tree that was unpacked.
    """

    __slots__ = ("leaves", "branches", "entries", "_packed")

    def __init__(self) -> None:
        self.leaves = [0] * SEGMENTS
        self.branches = [0] * BRANCHES
        self.entries: list[dict[str, Version]] = [{} for _ in range(SEGMENTS)]
        # segment -> (how many keys, its entries encoded), for those not decoded yet
        self._packed: dict[int, tuple[int, bytes]] = {}

    def segment(self, segment: int) -> dict[str, Version]:
        """The (key -> version) entries of `segment` (decoded now if they were packed)."""
        if self._packed and segment in self._packed:
            self.entries[segment] = _entries_codec[1].decode(self._packed.pop(segment)[1])
        return self.entries[segment]

    def all_entries(self) -> list[dict[str, Version]]:
        """Every segment's entries (all decoded: for what looks at every key)."""
        for segment in list(self._packed):
            self.segment(segment)
        return self.entries

    def pack(self) -> Packed:
        encode, packed = _entries_codec[0].encode, self._packed
        segments = []
        for i, entries in enumerate(self.entries):
            if i in packed:  # never decoded since it was unpacked: the same bytes
                segments.append((i, *packed[i]))
            elif entries:
                segments.append((i, len(entries), encode(entries)))
        return Packed(list(self.leaves), segments)

    @classmethod
    def unpack(cls, packed: Packed) -> HashTree:
        """The tree `pack` saved. Its hashes are taken as they were saved, not recomputed:
        whoever kept the bytes vouches that they still describe the store (see
        `Replica.undump`)."""
        if len(packed.leaves) != SEGMENTS:
            raise ValueError(f"{len(packed.leaves)} leaves, not {SEGMENTS}")
        tree = cls()
        tree.leaves = list(packed.leaves)
        for branch in range(BRANCHES):
            value = 0
            for leaf in tree.leaves[branch * PER_BRANCH:(branch + 1) * PER_BRANCH]:
                value ^= leaf
            tree.branches[branch] = value
        tree._packed = {segment: (count, data) for segment, count, data in packed.segments}
        return tree

    def put(self, segment: int, key: str, version: Version) -> None:
        """Record that the replica now holds `version` of `key` (replacing what it held)."""
        entries = self.segment(segment)
        old = entries.get(key)
        change = entry_hash(key, version)
        if old is not None:
            change ^= entry_hash(key, old)
        entries[key] = version
        self.leaves[segment] ^= change
        self.branches[segment // PER_BRANCH] ^= change

    def remove(self, segment: int, key: str) -> None:
        old = self.segment(segment).pop(key, None)
        if old is not None:
            change = entry_hash(key, old)
            self.leaves[segment] ^= change
            self.branches[segment // PER_BRANCH] ^= change

    @property
    def root(self) -> int:
        root = 0
        for branch in self.branches:
            root ^= branch
        return root

    def branch_leaves(self, branch: int) -> list[int]:
        start = branch * PER_BRANCH
        return self.leaves[start:start + PER_BRANCH]

    def __len__(self) -> int:
        return sum(len(e) for e in self.entries) + sum(n for n, _ in self._packed.values())

    def items(self, segments: list[int]) -> Iterator[tuple[str, Version]]:
        for segment in segments:
            yield from self.segment(segment).items()


def differing_branches(mine: list[int], theirs: list[int]) -> list[int]:
    return [i for i in range(BRANCHES) if mine[i] != theirs[i]]


def differing_segments(tree: HashTree, leaves: list[tuple[int, list[int]]]) -> list[int]:
    """The segments whose hashes differ from `leaves` (another replica's, by branch)."""
    out = []
    for branch, theirs in leaves:
        start = branch * PER_BRANCH
        mine = tree.leaves[start:start + PER_BRANCH]
        out.extend(start + i for i in range(PER_BRANCH) if mine[i] != theirs[i])
    return out
