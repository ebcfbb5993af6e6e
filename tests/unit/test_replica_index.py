"""The index a node keeps at stop (`Replica.dump`, `SqliteStore.close(index=...)`): brought
back, it is exactly what reading every row builds, and it is never used for a store that was
written after it was made."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kvlab.core.messages import Persist
from kvlab.core.record import Record
from kvlab.core.replica import Replica, ReplicaConfig
from kvlab.core.ring import Ring
from kvlab.core.version import Version
from kvlab.net.node import Node
from kvlab.storage.sqlite import SqliteStore

RING = Ring(("n1", "n2", "n3", "n4", "n5"), 8)
CONFIG = ReplicaConfig(n=3)


def _entries(keys: int = 3000) -> list[tuple[str, Version, bool]]:
    # Live keys and tombstones, in n1's ranges and outside them (strays).
    return [(f"k{i}", Version(1_000 + i, i % 3, f"c{i % 2}"), i % 7 == 0)
            for i in range(keys)]


def _state(replica: Replica) -> dict:
    return {
        "trees": {rng: (tree.leaves, tree.branches, [dict(e) for e in tree.all_entries()])
                  for rng, tree in replica._trees.items()},
        "strays": replica._strays, "tombs": replica._tombs,
        "aging": sorted(replica._aging), "keys": replica.key_count(),
    }


def _scanned(ring: Ring = RING) -> Replica:
    replica = Replica("n1", ring, CONFIG, lambda keys: {})
    replica.load(_entries())
    return replica


def test_an_undumped_replica_is_the_one_the_rows_build() -> None:
    scanned = _scanned()
    assert scanned._strays and scanned._tombs  # the case covers both
    undumped = Replica("n1", RING, CONFIG, lambda keys: {})
    assert undumped.undump(scanned.dump())
    # Counted before any segment is decoded, then equal in every part once decoded.
    assert undumped.key_count() == scanned.key_count()
    assert undumped.live_keys() == scanned.live_keys()
    assert _state(undumped) == _state(scanned)


def test_an_undumped_replica_goes_on_as_the_scanned_one_does() -> None:
    scanned, undumped = _scanned(), Replica("n1", RING, CONFIG, lambda keys: {})
    assert undumped.undump(scanned.dump())
    for replica in (scanned, undumped):
        replica.load([("k1", Version(9_999, 0, "c0"), False), ("new", Version(5, 0, "c"), True)])
    assert {r: t.leaves for r, t in undumped._trees.items()} == \
        {r: t.leaves for r, t in scanned._trees.items()}
    assert _state(undumped) == _state(scanned)


def test_a_dump_made_under_another_ring_or_replica_count_is_refused() -> None:
    data = _scanned().dump()
    other_ring = Replica("n1", RING.with_node("n6"), CONFIG, lambda keys: {})
    assert not other_ring.undump(data) and other_ring.key_count() == 0
    other_n = Replica("n1", RING, ReplicaConfig(n=2), lambda keys: {})
    assert not other_n.undump(data) and other_n.key_count() == 0
    assert not Replica("n1", RING, CONFIG, lambda keys: {}).undump(b"not a dump")


def _write(store: SqliteStore, *records: Record) -> None:
    async def write() -> None:
        await store.write(Persist(1, list(records), [], [], []))
    asyncio.run(write())


def test_the_store_gives_the_index_back_once_and_not_after_a_write(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    store = SqliteStore(path)
    _write(store, Record("a", b"1", Version(1, 0, "p")))
    store.close(index=b"the index")
    store = SqliteStore(path)
    assert store.take_index() == b"the index"
    assert store.take_index() is None  # taken: a crash from now on leaves none behind
    store.close(index=b"again")
    store = SqliteStore(path)
    _write(store, Record("b", b"2", Version(2, 0, "p")))  # the index not asked for
    store.close()
    store = SqliteStore(path)
    assert store.take_index() is None  # opening the store made it unusable
    store.close(index=b"older")
    (tmp_path / "data.db-index").write_bytes(b"x" * 16 + b"a file from elsewhere")
    (tmp_path / "data.db-index.tmp").write_bytes(b"a stop killed while writing")
    store = SqliteStore(path)
    assert store.take_index() is None  # its token is not the one the database holds
    assert not (tmp_path / "data.db-index").exists()
    assert not (tmp_path / "data.db-index.tmp").exists()
    store.close()


def test_a_node_restarted_cleanly_starts_from_its_index(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "data.db")
    _write(store, *(Record(key, None if tomb else b"v", version)
                    for key, version, tomb in _entries()))
    store.close()

    async def run(expect_indexed: bool) -> dict:
        node = Node("n1", SqliteStore(tmp_path / "data.db"), {}, CONFIG)
        assert node.indexed is expect_indexed
        await node.start()
        state = _state(node.replica)
        await node.stop()
        return state

    # A node alone holds every key: its ring is n1 only, whatever RING says.
    first = asyncio.run(run(False))
    assert first["keys"] == 3000
    assert asyncio.run(run(True)) == first


def test_a_tree_packed_again_before_its_segments_are_read_is_the_same() -> None:
    scanned = _scanned()
    undumped = Replica("n1", RING, CONFIG, lambda keys: {})
    assert undumped.undump(scanned.dump())
    undumped.load([("k2", Version(9_999, 0, "c0"), False)])  # one segment decoded
    scanned.load([("k2", Version(9_999, 0, "c0"), False)])
    again = Replica("n1", RING, CONFIG, lambda keys: {})
    assert again.undump(undumped.dump())
    assert _state(again) == _state(scanned)
