"""SQLite store: a replica's Persist in one transaction, group commit, hints, exact purges.

`MemoryStore` is the reference semantics; a seeded random run checks the two agree.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time

import pytest

from kvlab.core.messages import Hint, Persist
from kvlab.core.record import Record
from kvlab.core.version import Version
from kvlab.storage.memory import MemoryStore
from kvlab.storage.sqlite import SqliteStore, StoreInUse


def rec(key: str, value: bytes | None, t: int, c: str = "p") -> Record:
    return Record(key, value, Version(t, 0, c))


def persist(records=(), hints=(), drop_hints=(), purge=(), batch: int = 1) -> Persist:
    return Persist(batch, list(records), list(hints), list(drop_hints), list(purge))


def hint(target: str, record: Record, stored_ms: int = 5) -> Hint:
    return Hint(target, record, stored_ms)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "data.db")
    yield s
    s.close()


async def test_newer_versions_win_and_older_ones_are_refused(store):
    assert await store.write(persist([rec("k", b"v2", 2)])) == 1
    assert await store.write(persist([rec("k", b"v1", 1)])) == 0
    assert await store.write(persist([rec("k", b"v2", 2)])) == 0  # the same write again
    assert await store.write(persist([rec("k", b"v3", 2, c="q")])) == 1  # tie: coordinator
    assert store.get("k").value == b"v3"
    assert store.writes == 2


async def test_concurrent_persists_share_commits(store):
    done = await asyncio.gather(*[store.write(persist([rec(f"k{i}", b"v", 1)], batch=i))
                                  for i in range(300)])
    assert done == [1] * 300
    assert store.batches == 300 and store.writes == 300
    assert store.commits < 300 / 5, f"{store.commits} commits for 300 batches: no group commit"
    assert store.count() == 300


async def test_racing_writes_to_one_key_keep_the_newest(store):
    await asyncio.gather(*[store.write(persist([rec("k", str(t).encode(), t)]))
                           for t in random.Random(1).sample(range(100), 100)])
    assert store.get("k").value == b"99"


async def test_acknowledged_writes_and_hints_are_in_the_file(tmp_path):
    s = SqliteStore(tmp_path / "d.db")
    await s.write(persist([rec("a", b"1", 1), rec("b", None, 2)],
                          hints=[hint("n3", rec("c", b"3", 3), stored_ms=77)]))
    # Read with a brand-new connection, as a restarted node would.
    db = sqlite3.connect(tmp_path / "d.db")
    rows = db.execute("SELECT key, value FROM records ORDER BY key").fetchall()
    hints = db.execute("SELECT target, key, stored_ms FROM hints").fetchall()
    db.close()
    s.close()
    assert rows == [("a", b"1"), ("b", None)] and hints == [("n3", "c", 77)]
    again = SqliteStore(tmp_path / "d.db")
    assert again.get("a").value == b"1" and again.get("b").tombstone and again.count() == 1
    assert sorted(again.entries()) == [("a", Version(1, 0, "p"), False),
                                       ("b", Version(2, 0, "p"), True)]
    assert again.hints() == [hint("n3", rec("c", b"3", 3), stored_ms=77)]
    again.close()


async def test_a_database_from_before_hints_opens(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("CREATE TABLE records (key TEXT PRIMARY KEY, value BLOB, physical INTEGER NOT "
               "NULL, logical INTEGER NOT NULL, coordinator TEXT NOT NULL) WITHOUT ROWID")
    db.execute("INSERT INTO records VALUES ('k', x'01', 5, 0, 'p'), ('t', NULL, 6, 0, 'p')")
    db.commit()
    db.close()
    s = SqliteStore(tmp_path / "old.db")
    try:
        assert s.count() == 1 and s.hints() == [] and len(s.entries()) == 2
        await s.write(persist(hints=[hint("n2", rec("x", b"", 1))]))
        assert len(s.hints()) == 1
    finally:
        s.close()


async def test_a_hint_is_replaced_only_by_a_newer_one(store):
    await store.write(persist(hints=[hint("n2", rec("k", b"new", 5), stored_ms=50)]))
    await store.write(persist(hints=[hint("n2", rec("k", b"old", 4), stored_ms=60)]))
    assert store.hints() == [hint("n2", rec("k", b"new", 5), stored_ms=50)]
    await store.write(persist(hints=[hint("n2", rec("k", None, 6), stored_ms=70),
                                     hint("n3", rec("k", b"old", 4))]))  # another target
    assert sorted(store.hints(), key=lambda h: h.target) == [
        hint("n2", rec("k", None, 6), stored_ms=70), hint("n3", rec("k", b"old", 4))]
    assert store.get("k") is None and store.count() == 0  # hints are not records


async def test_drop_hints_removes_only_the_exact_version(store):
    await store.write(persist(hints=[hint("n2", rec("k", b"v", 5)), hint("n2", rec("j", b"v", 5))]))
    await store.write(persist(drop_hints=[("n2", "k", Version(4, 0, "p")),  # older
                                          ("n2", "j", Version(5, 0, "q")),  # another coordinator
                                          ("n3", "k", Version(5, 0, "p"))]))  # another target
    assert len(store.hints()) == 2
    await store.write(persist(drop_hints=[("n2", "k", Version(5, 0, "p"))]))
    assert [h.record.key for h in store.hints()] == ["j"]


async def test_purge_removes_only_that_exact_tombstone(store):
    await store.write(persist([rec("a", b"1", 1), rec("b", b"2", 1), rec("c", b"3", 1)]))
    await store.write(persist([rec("a", None, 5), rec("b", None, 5)]))
    assert store.count() == 1
    # A live record is never purged, nor a tombstone newer than the one named.
    await store.write(persist([rec("b", None, 6)]))
    await store.write(persist(purge=[("a", Version(5, 0, "p")), ("b", Version(5, 0, "p")),
                                     ("c", Version(1, 0, "p"))]))
    assert store.get("a") is None
    assert store.get("b").version == Version(6, 0, "p") and store.get("c").value == b"3"
    assert store.count() == 1 and sorted(k for k, _, _ in store.entries()) == ["b", "c"]


async def test_one_persist_in_a_shared_commit_fails_as_a_whole(store):
    bad = Record("bad", ["not", "bytes"], Version(1, 0, "p"))  # type: ignore[arg-type]
    await store.write(persist([rec("keep", b"0", 1)]))
    # Queue both before the writer can look: they share one transaction.
    good = store.submit(persist([rec("g", b"1", 1)], batch=2))
    failing = store.submit(persist([rec("a", b"1", 1), rec("keep", None, 9), bad],
                                   hints=[hint("n2", rec("h", b"1", 1))],
                                   purge=[("keep", Version(1, 0, "p"))], batch=3))
    after = store.submit(persist([rec("z", b"1", 1)], batch=4))
    assert await good == 1
    with pytest.raises(sqlite3.Error):
        await failing
    assert await after == 1
    # Nothing of the failed Persist is left: not its first record, its delete, nor its hint.
    assert store.get("a") is None and store.get("keep").value == b"0" and store.hints() == []
    assert store.count() == 3  # keep, g, z: the failed batch's changes were not counted
    assert await store.write(persist([rec("a", b"2", 2)])) == 1
    assert store.get("a").value == b"2" and store.count() == 4


async def test_a_failed_transaction_fails_every_persist_in_it_and_the_store_recovers(tmp_path):
    s = SqliteStore(tmp_path / "d.db", busy_timeout_s=0.05)
    other = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
    try:
        await s.write(persist([rec("a", b"1", 1)]))
        other.execute("BEGIN IMMEDIATE")  # another program holds the write lock
        jobs = [s.submit(persist([rec(f"k{i}", b"v", 1)], batch=i)) for i in range(3)]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
        other.execute("ROLLBACK")
        assert s.count() == 1 and s.commits == 1 and s.get("k0") is None
        assert await s.write(persist([rec("b", b"1", 1)])) == 1 and s.count() == 2
    finally:
        other.close()
        s.close()


async def test_an_empty_persist_resolves_after_what_was_queued_before(store):
    first = store.submit(persist([rec(f"k{i}", b"v", 1) for i in range(200)], batch=1))
    empty = store.submit(persist(batch=2))
    order: list[int] = []
    first.add_done_callback(lambda _: order.append(1))
    empty.add_done_callback(lambda _: order.append(2))
    assert await empty == 0 and await first == 200
    assert order == [1, 2]


async def test_wipe_loses_records_and_hints(store):
    await store.write(persist([rec("a", b"1", 1), rec("b", None, 1)],
                              hints=[hint("n2", rec("c", b"1", 1))]))
    await store.wipe()
    assert store.entries() == [] and store.hints() == [] and store.count() == 0
    assert await store.write(persist([rec("a", b"1", 1)])) == 1 and store.count() == 1


async def test_entries_skip_values_and_are_fast_for_many_keys(store):
    big = b"x" * 20_000  # overflow pages: reading them would show in the time
    n = 20_000
    for start in range(0, n, 5_000):
        await store.write(persist([rec(f"key{i}", big if i % 2 else None, i + 1)
                                   for i in range(start, start + 5_000)]))
    began = time.perf_counter()
    entries = store.entries()
    took = time.perf_counter() - began
    assert len(entries) == n and store.count() == n // 2
    assert entries[0] == ("key0", Version(1, 0, "p"), True)
    assert sum(tomb for _, _, tomb in entries) == n // 2
    assert took < 1.0, f"entries() took {took:.2f}s for {n} keys"


async def test_sqlite_and_memory_stores_agree(store):
    """Random Persists of every kind, applied to both stores, leave the same state."""
    r = random.Random(7)
    memory = MemoryStore()
    keys, targets = [f"k{i}" for i in range(12)], ["n1", "n2"]

    def version() -> Version:
        return Version(r.randrange(1, 8), r.randrange(2), r.choice("pq"))

    for batch in range(300):
        records = [Record(r.choice(keys), r.choice([None, b"v", b""]), version())
                   for _ in range(r.randrange(4))]
        hints = [Hint(r.choice(targets), Record(r.choice(keys), b"h", version()), batch)
                 for _ in range(r.randrange(3))]
        drops = [(r.choice(targets), r.choice(keys), version()) for _ in range(r.randrange(3))]
        held = list(memory.hints())
        drops += [(h.target, h.record.key, h.record.version)
                  for h in r.sample(held, min(1, len(held)))]
        purge = [(r.choice(keys), version()) for _ in range(r.randrange(2))]
        purge += [(rc.key, rc.version) for rc in memory.records() if rc.tombstone
                  and r.random() < 0.3]
        p = Persist(batch, records, hints, drops, purge)
        memory.write(p)
        await store.write(p)
    assert sorted(store.entries()) == sorted(memory.entries())
    assert sorted(store.hints(), key=_hint_key) == sorted(memory.hints(), key=_hint_key)
    assert store.get_many(keys) == {k: memory.get(k) for k in keys if memory.get(k)}
    assert store.count() == memory.count()


def _hint_key(h: Hint) -> tuple:
    return (h.target, h.record.key)


ODD_KEYS = ['q"uote', "back\\slash", "ünï©ødé ✓", "[1, 2]", "new\nline", "%", ""]


async def test_get_many_matches_get_for_every_key(store):
    """The one-query batch lookup returns exactly what `get` does, key by key, on both stores."""
    records = [rec(key, key.encode() or b"empty", 3) for key in ODD_KEYS]
    records.append(rec("gone", None, 4))
    memory = MemoryStore()
    memory.write(persist(records))
    await store.write(persist(records))
    wanted = [*ODD_KEYS, "gone", "missing", ODD_KEYS[0]]  # a tombstone, an absent key, a repeat
    for s in (store, memory):
        found = s.get_many(wanted)
        assert found == {k: s.get(k) for k in wanted if s.get(k) is not None}
        assert set(found) == {*ODD_KEYS, "gone"} and found["gone"].tombstone
        assert s.get_many(["missing"]) == {} and s.get_many([ODD_KEYS[2]])[ODD_KEYS[2]].value \
            == ODD_KEYS[2].encode()


async def test_keys_with_nul_are_found_when_read_together_with_others(store):
    keys = ["a\0b", "\0", "plain", "tail\0"]
    await store.write(persist([rec(k, k.encode(), 1) for k in keys]))
    found = store.get_many(keys + ["missing\0"])
    assert sorted(found) == sorted(keys)
    assert all(found[k].value == k.encode() for k in keys)
    assert sorted(store.get_many(["plain", "a\0b"])) == ["a\0b", "plain"]


def test_a_database_is_open_in_one_process_at_a_time(tmp_path) -> None:
    # A second store on the file (a restart racing another) would keep, at its stop, an
    # index missing the first one's later writes.
    first = SqliteStore(tmp_path / "data.db")
    with pytest.raises(StoreInUse):
        SqliteStore(tmp_path / "data.db")
    first.close()
    SqliteStore(tmp_path / "data.db").close()  # free again once the first is closed
