"""SQLite store: the supersede rule, group commit, durability across reopen, tombstones."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from kvlab.core.record import Record
from kvlab.core.version import Version
from kvlab.storage.memory import MemoryStore
from kvlab.storage.sqlite import SqliteStore


def rec(key: str, value: bytes | None, t: int) -> Record:
    return Record(key, value, Version(t, 0, "p"))


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "data.db")
    yield s
    s.close()


async def test_newer_versions_win_and_older_ones_are_refused(store):
    assert await store.apply([rec("k", b"v2", 2)]) == [True]
    assert await store.apply([rec("k", b"v1", 1)]) == [False]
    assert await store.apply([rec("k", b"v2", 2)]) == [False]  # same write again
    assert store.get("k").value == b"v2"


async def test_concurrent_writes_share_commits(store):
    results = await asyncio.gather(*[store.apply([rec(f"k{i}", b"v", 1)]) for i in range(300)])
    assert all(r == [True] for r in results)
    assert store.writes == 300
    assert store.commits < 300 / 5, f"{store.commits} commits for 300 writes: no group commit"
    assert store.count() == 300


async def test_racing_writes_to_one_key_keep_the_newest(store):
    await asyncio.gather(*[store.apply([rec("k", str(t).encode(), t)]) for t in range(100)])
    assert store.get("k").value == b"99"


async def test_acknowledged_writes_are_in_the_file(tmp_path):
    s = SqliteStore(tmp_path / "d.db")
    await s.apply([rec("a", b"1", 1), rec("b", None, 2)])
    # Read with a brand-new connection, as a restarted node would.
    rows = sqlite3.connect(tmp_path / "d.db").execute(
        "SELECT key, value FROM records ORDER BY key").fetchall()
    s.close()
    assert rows == [("a", b"1"), ("b", None)]
    again = SqliteStore(tmp_path / "d.db")
    assert again.get("a").value == b"1" and again.get("b").tombstone and again.count() == 1
    again.close()


async def test_tombstones_count_and_purge(store):
    await store.apply([rec("a", b"1", 1), rec("b", b"2", 1)])
    await store.apply([rec("a", None, 5)])
    assert store.count() == 1
    assert store.purge(now_ms=10, grace_ms=100) == 0
    assert store.purge(now_ms=200, grace_ms=100) == 1
    assert store.get("a") is None and store.get("b").value == b"2"


def test_memory_store_follows_the_same_rule():
    m = MemoryStore()
    assert m.apply([rec("k", b"2", 2), rec("k", b"1", 1), rec("x", None, 1)]) == [True, False, True]
    assert m.get("k").value == b"2" and m.count() == 1
    assert m.purge(now_ms=1000, grace_ms=10) == 1 and m.get("x") is None


async def test_a_failed_commit_fails_its_writes_and_the_store_keeps_working(store):
    bad = Record("k", ["not", "bytes"], Version(1, 0, "p"))  # type: ignore[arg-type]
    with pytest.raises(sqlite3.Error):
        await store.apply([rec("a", b"1", 1), bad])
    assert store.get("a") is None  # the whole batch rolled back: nothing half-applied
    assert await store.apply([rec("a", b"2", 2)]) == [True]
    assert store.get("a").value == b"2" and store.count() == 1


ODD_KEYS = ['q"uote', "back\\slash", "ünï©ødé ✓", "[1, 2]", "new\nline", "%", ""]


async def test_get_many_matches_get_for_every_key(store):
    """The one-query batch lookup returns exactly what `get` does, key by key, on both stores."""
    records = [rec(key, key.encode() or b"empty", 3) for key in ODD_KEYS]
    records.append(rec("gone", None, 4))
    memory = MemoryStore()
    memory.apply(records)
    await store.apply(records)
    wanted = [*ODD_KEYS, "gone", "missing", ODD_KEYS[0]]  # a tombstone, an absent key, a repeat
    for s in (store, memory):
        found = s.get_many(wanted)
        assert found == {k: s.get(k) for k in wanted if s.get(k) is not None}
        assert set(found) == {*ODD_KEYS, "gone"} and found["gone"].tombstone
        assert s.get_many(["missing"]) == {} and s.get_many([ODD_KEYS[2]])[ODD_KEYS[2]].value \
            == ODD_KEYS[2].encode()
