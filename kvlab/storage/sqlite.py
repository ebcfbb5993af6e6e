"""A replica's records and hints in SQLite (WAL mode), with group commit.

A replica's `Persist` (records, hints, deletions) is handed to one writer thread. It takes
every Persist waiting at that moment, applies them in a single transaction and commits once,
so concurrent batches share one fsync; each caller's future resolves only after the commit,
which is what lets a replica acknowledge a write as durable. A Persist that cannot be
applied fails as a whole and alone: the transaction is rolled back and the others are
committed without it. Reads use a second connection on the caller's thread: in WAL mode they
never wait for the writer and always see the last committed state.

The semantics are those of `kvlab.storage.memory.MemoryStore` (the reference): a record is
stored only if it supersedes the stored one, a hint replaces only an older hint for the same
(target, key), and `drop_hints` / `purge` / `drop` remove only an exact version. The last
membership the node was told (`Persist.ring`) is kept in the `meta` table.

A replica's in-memory index of the store (every key's version, in hash trees) can be kept
for the next start, next to the database (`close(index=...)`, `take_index`): rebuilding it
by reading every row took seconds with a million keys. It is used only if nothing was
written since it was made (see `take_index`), so it never says the store holds what it
does not.

A file that is not a database, or one SQLite finds damaged, raises `sqlite3.DatabaseError`
with a code `is_corruption` recognizes: the node gives up on it then (see
`kvlab.net.node`), as retrying would meet the same damaged pages.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import msgspec
import orjson

from kvlab.core.messages import Hint, Persist, RingUpdate
from kvlab.core.record import Record
from kvlab.core.version import Version

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    value BLOB,              -- NULL marks a tombstone
    physical INTEGER NOT NULL,
    logical INTEGER NOT NULL,
    coordinator TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hints (
    target TEXT NOT NULL,    -- the node that missed the write
    key TEXT NOT NULL,
    value BLOB,              -- NULL: a hinted delete
    physical INTEGER NOT NULL,
    logical INTEGER NOT NULL,
    coordinator TEXT NOT NULL,
    stored_ms INTEGER NOT NULL,  -- when this node took the hint (its own clock)
    PRIMARY KEY (target, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
"""

_SELECT = "SELECT value, physical, logical, coordinator FROM records WHERE key = ?"
# Many keys in one statement: a batch of reads costs ~1 µs a key instead of ~3 µs with one
# query each (measured on the dev machine; the per-statement overhead dominates).
_SELECT_MANY = ("SELECT key, value, physical, logical, coordinator FROM records "
                "WHERE key IN (SELECT value FROM json_each(?))")
# Only a strictly newer version replaces what is held (the supersede rule). Row values
# compare field by field, as `Version` does (text by code point: UTF-8 bytes sort in code
# point order).
_UPSERT = ("INSERT INTO records VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
           "value = excluded.value, physical = excluded.physical, logical = excluded.logical, "
           "coordinator = excluded.coordinator WHERE (excluded.physical, excluded.logical, "
           "excluded.coordinator) > (records.physical, records.logical, records.coordinator)")
# The same rule for hints: an older hint never replaces a newer one.
_HINT = ("INSERT INTO hints VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (target, key) DO UPDATE "
         "SET value = excluded.value, physical = excluded.physical, logical = excluded.logical, "
         "coordinator = excluded.coordinator, stored_ms = excluded.stored_ms "
         "WHERE (excluded.physical, excluded.logical, excluded.coordinator) "
         "> (hints.physical, hints.logical, hints.coordinator)")
_DROP_HINT = ("DELETE FROM hints WHERE target = ? AND key = ? AND physical = ? AND logical = ? "
              "AND coordinator = ?")
# The version in the WHERE clause spares a newer record written meanwhile.
_PURGE = ("DELETE FROM records WHERE key = ? AND value IS NULL AND physical = ? "
          "AND logical = ? AND coordinator = ?")
_DROP = ("DELETE FROM records WHERE key = ? AND physical = ? AND logical = ? "
         "AND coordinator = ?")
_SET_META = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
_GET_META = "SELECT value FROM meta WHERE name = ?"
_DELETE_META = "DELETE FROM meta WHERE name = ?"
# The index file is the database's name plus this (`kvlab wipe` removes data.db*), and
# starts with the random token that `meta` holds while the file describes the store.
INDEX_SUFFIX = "-index"
_INDEX_TOKEN = "index"
_TOKEN_BYTES = 16
MMAP_BYTES = 1 << 30  # past this much of the file, pages are read as without the map
_ring_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(RingUpdate))
_ENTRIES = "SELECT key, physical, logical, coordinator, value IS NULL FROM records"
_HINTS = "SELECT target, key, value, physical, logical, coordinator, stored_ms FROM hints"


# SQLITE_CORRUPT: a page is damaged ("database disk image is malformed"); SQLITE_NOTADB: the
# header is ("file is not a database"). Neither goes away by itself, unlike a busy lock, a
# full disk or an I/O error.
_CORRUPTION = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def is_corruption(error: BaseException) -> bool:
    """Whether `error` is SQLite saying the database file is damaged."""
    code = getattr(error, "sqlite_errorcode", None)  # the extended code: its low byte is
    return isinstance(error, sqlite3.DatabaseError) and code is not None \
        and code & 0xFF in _CORRUPTION  # the primary one


def _record(key: str, row: tuple | None) -> Record | None:
    if row is None:
        return None
    value, physical, logical, coordinator = row
    return Record(key, value, Version(physical, logical, coordinator))


class _Job:
    """One Persist (or a wipe, `persist=None`) waiting for the writer, and who waits."""

    __slots__ = ("persist", "future", "loop")

    def __init__(self, persist: Persist | None, future: asyncio.Future,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.persist = persist
        self.future = future
        self.loop = loop


_STOP = object()


class _PersistFailed(Exception):
    """Applying one Persist failed (its data, say): the others need not fail with it."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class StoreInUse(Exception):
    """Another process has this database open."""


def _lock_file(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreInUse(f"{path}: the database is open in another process") from None
    return fd


class SqliteStore:
    """One node's database. `durable=False` skips fsync (`--durability none`).

    `busy_timeout_s`: how long a transaction waits for a lock another program holds on the
    file (say, the sqlite3 shell) before its batches fail.
    """

    def __init__(self, path: str | Path, durable: bool = True, busy_timeout_s: float = 5.0
                 ) -> None:
        self.path = str(path)
        self.durable = durable
        self.busy_timeout_s = busy_timeout_s
        # One store per file: a second process on it (a restart racing another, say) would
        # keep an index at its stop that misses the first one's later writes.
        self._lock = _lock_file(self.path + ".lock")
        writer = self._connect()
        writer.execute("PRAGMA journal_mode=WAL")
        # FULL makes every WAL commit fsync: an acknowledged write survives power loss.
        writer.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        writer.executescript(SCHEMA)  # IF NOT EXISTS: a database from before hints opens
        self._index = self._claim_index(writer)
        self._reader = self._connect()
        # Reads take pages from the file through a memory map instead of a read() into
        # SQLite's cache each: with a million keys (150 MB) a key read cost 7.0 µs of CPU,
        # 4.7 with the map (10,000 keys: 2.2 µs either way). The mapped pages are the OS's
        # page cache, counted in the node's RSS as file pages. Not for the writer (an upsert
        # 7.1 -> 5.6 µs): its map would count the same pages in the RSS a second time.
        self._reader.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.commits = 0  # transactions committed: batches / commits = group commit factor
        self.batches = 0  # Persists made durable
        self.writes = 0  # records stored (those that superseded what was there)
        self._thread = threading.Thread(target=self._write_loop, args=(writer,),
                                        name="kvlab-sqlite-writer", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per group.
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout_s)

    # -- reads (the caller's thread) ------------------------------------------------------

    def check(self) -> None:
        """Read a little of every table, or raise `sqlite3.DatabaseError`: a start's check.

        Opening the store read the header and the schema already. This walks each table's
        B-tree from its root to its first and its last leaf: milliseconds, with a million
        keys as with none (`PRAGMA quick_check` reads every page: seconds). Damage elsewhere
        is met by the first query that reads it (`is_corruption`).
        """
        reader = self._reader
        for table, columns in (("records", ("key",)), ("hints", ("target", "key")),
                               ("meta", ("name",))):
            for direction in ("ASC", "DESC"):  # the primary key's order: no sort, no scan
                order = ", ".join(f"{column} {direction}" for column in columns)
                reader.execute(f"SELECT * FROM {table} ORDER BY {order} LIMIT 1").fetchall()

    def get(self, key: str) -> Record | None:
        return _record(key, self._reader.execute(_SELECT, (key,)).fetchone())

    def get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        """The stored records of `keys` (tombstones included), by key; absent keys left out."""
        if len(keys) == 1:
            record = self.get(keys[0])
            return {} if record is None else {record.key: record}
        if any("\0" in key for key in keys):
            # SQLite's JSON functions end a string at NUL: such keys are read one by one
            # (rare: the one query for the rest would find no match for them).
            found = {}
            for key in keys:
                record = self.get(key)
                if record is not None:
                    found[key] = record
            return found
        rows = self._reader.execute(_SELECT_MANY, (orjson.dumps(keys).decode(),))
        return {key: Record(key, value, Version(physical, logical, coordinator))
                for key, value, physical, logical, coordinator in rows}

    def entries(self) -> list[tuple[str, Version, bool]]:
        """(key, version, is a tombstone) of every record, values left unread.

        What `Replica.load` needs at start.
        """
        return [(key, Version(physical, logical, coordinator), bool(tomb))
                for key, physical, logical, coordinator, tomb in self._reader.execute(_ENTRIES)]

    def hints(self) -> list[Hint]:
        """Every hint this node keeps for another."""
        return [Hint(target, Record(key, value, Version(physical, logical, coordinator)), stored)
                for target, key, value, physical, logical, coordinator, stored
                in self._reader.execute(_HINTS)]

    def ring(self) -> RingUpdate | None:
        """The membership this node was last told, if any."""
        row = self._reader.execute(_GET_META, ("ring",)).fetchone()
        return None if row is None else _ring_codec[1].decode(row[0])

    def take_index(self) -> bytes | None:
        """The index `close(index=...)` kept, if it described the store as it was opened
        (once; None after)."""
        index, self._index = self._index, None
        return index

    def _claim_index(self, db: sqlite3.Connection) -> bytes | None:
        """Read the kept index, and make it unusable for any later start, before anything
        else can be written.

        `close` writes the file (made durable) and only then its token into `meta`; opening
        the store deletes the token (a commit of its own) before the writer starts. So a
        file is used only for the store exactly as it was closed: after a crash, a later
        write, a restored or copied database, the token is missing or another.
        """
        path = Path(self.path + INDEX_SUFFIX)
        row = db.execute(_GET_META, (_INDEX_TOKEN,)).fetchone()
        index = None
        if row is not None:
            try:
                data = path.read_bytes()
            except OSError:
                data = b""
            if len(data) > _TOKEN_BYTES and data[:_TOKEN_BYTES] == bytes(row[0]):
                index = data[_TOKEN_BYTES:]
            db.execute(_DELETE_META, (_INDEX_TOKEN,))
        path.unlink(missing_ok=True)
        Path(self.path + INDEX_SUFFIX + ".tmp").unlink(missing_ok=True)  # a stop cut short
        return index

    def count(self) -> int:
        """Live keys (tombstones are not counted). A scan of the table: not for hot paths
        (a node reports its replica's count instead)."""
        return self._reader.execute(
            "SELECT count(*) FROM records WHERE value IS NOT NULL").fetchone()[0]

    # -- writes (the writer thread) -------------------------------------------------------

    def submit(self, persist: Persist) -> asyncio.Future[int]:
        """Queue `persist` for the next group commit; the future resolves after it.

        Its result is the number of records that were stored (news to this store); it fails
        if the Persist could not be applied, and then nothing of it was. A plain callback on
        the future is cheaper than a task per batch on the node's write path.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(persist, future, loop))
        return future

    async def write(self, persist: Persist) -> int:
        """Apply a replica's `Persist` in one transaction (shared with others waiting)."""
        return await self.submit(persist)

    async def wipe(self) -> None:
        """Lose every record and hint, as a replaced disk does (after what is queued)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(None, future, loop))
        await future

    async def flush(self) -> None:
        """Return once everything submitted before is committed (or failed)."""
        await self.submit(Persist(-1, [], [], [], []))

    def close(self, index: bytes | None = None) -> None:
        """Commit what is queued, then stop the writer.

        `index`: the replica's in-memory index (`Replica.dump`), kept for `take_index` at
        the next start. The caller vouches that it describes everything committed.
        """
        self._queue.put(_STOP)
        self._thread.join(timeout=10)
        if index is not None and not self._thread.is_alive():
            try:
                self._keep_index(index)
            except (OSError, sqlite3.Error):  # a full disk, say: the next start reads the rows
                Path(self.path + INDEX_SUFFIX + ".tmp").unlink(missing_ok=True)
        self._reader.close()
        os.close(self._lock)

    def _keep_index(self, index: bytes) -> None:
        token = os.urandom(_TOKEN_BYTES)
        path = self.path + INDEX_SUFFIX
        temporary = path + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as out:
            out.write(token)
            out.write(index)
            out.flush()
            os.fsync(out.fileno())  # the file is durable before the token says it is good
        os.replace(temporary, path)
        self._reader.execute(_SET_META, (_INDEX_TOKEN, token))

    def _write_loop(self, db: sqlite3.Connection) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs = [first]
            stop = False
            while True:  # everything already waiting joins this commit
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                jobs.append(more)
            try:
                self._commit(db, jobs)
            except Exception as exc:  # keep the thread alive: a dead writer would hang writes
                _resolve(jobs, [exc] * len(jobs))
            if stop:
                break
        db.close()

    def _commit(self, db: sqlite3.Connection, jobs: list[_Job]) -> None:
        if not any(job.persist is None or _has_work(job.persist) for job in jobs):
            # Nothing to write (say, only a retry's acknowledgement waits): everything queued
            # before is committed already, so the order of acknowledgements holds.
            _resolve(jobs, [0] * len(jobs))
            return
        try:
            outcomes: list[int | Exception] = list(self._transaction(db, jobs))
        except _PersistFailed:
            # One Persist could not be applied, and the shared transaction was rolled back:
            # commit each on its own, so that only the failing one fails. A savepoint per
            # Persist would do it in one pass, but costs every commit (up to 17% of the
            # writer's time, measured), for an error that is rare.
            outcomes = []
            for job in jobs:
                try:
                    outcomes.extend(self._transaction(db, [job]))
                except _PersistFailed as failed:
                    outcomes.append(failed.error)
                except Exception as exc:
                    outcomes.append(exc)
        except Exception as exc:  # disk full, I/O error, a lock held too long: fail them all
            outcomes = [exc] * len(jobs)
        _resolve(jobs, outcomes)

    def _transaction(self, db: sqlite3.Connection, jobs: list[_Job]) -> list[int]:
        """Apply `jobs` in one transaction and commit: records stored per job.

        Raises `_PersistFailed` if applying one of them failed (nothing is committed then).
        """
        stored: list[int] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for job in jobs:
                if job.persist is None:
                    db.execute("DELETE FROM records")
                    db.execute("DELETE FROM hints")
                    db.execute("DELETE FROM meta")
                    stored.append(0)
                    continue
                try:
                    stored.append(self._apply(db, job.persist))
                except Exception as exc:
                    raise _PersistFailed(exc) from exc
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.commits += 1
        self.writes += sum(stored)
        self.batches += sum(job.persist is not None for job in jobs)
        return stored

    def _apply(self, db: sqlite3.Connection, persist: Persist) -> int:
        """One Persist inside the open transaction: how many of its records were stored."""
        stored = 0
        if persist.records:
            # The supersede rule inside SQLite (a conditional upsert), so a record costs one
            # statement and no round trip through Python to read what is held.
            before = db.total_changes
            db.executemany(_UPSERT, [
                (r.key, r.value, r.version.physical, r.version.logical, r.version.coordinator)
                for r in persist.records])
            stored = db.total_changes - before
        if persist.hints:
            db.executemany(_HINT, [
                (h.target, h.record.key, h.record.value, h.record.version.physical,
                 h.record.version.logical, h.record.version.coordinator, h.stored_ms)
                for h in persist.hints])
        if persist.drop_hints:
            db.executemany(_DROP_HINT, [(t, k, v.physical, v.logical, v.coordinator)
                                        for t, k, v in persist.drop_hints])
        if persist.purge:  # only tombstones go, and they were not counted as live
            db.executemany(_PURGE, [(k, v.physical, v.logical, v.coordinator)
                                    for k, v in persist.purge])
        if persist.drop:
            db.executemany(_DROP, [(k, v.physical, v.logical, v.coordinator)
                                   for k, v in persist.drop])
        if persist.ring is not None:
            db.execute(_SET_META, ("ring", _ring_codec[0].encode(persist.ring)))
        return stored


def _has_work(persist: Persist) -> bool:
    return bool(persist.records or persist.hints or persist.drop_hints or persist.purge
                or persist.drop or persist.ring is not None)


def _resolve(jobs: list[_Job], outcomes: list[int | Exception]) -> None:
    """Settle every job's future on its loop: one wake-up of each loop per commit."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, int | Exception]]] = {}
    for job, outcome in zip(jobs, outcomes):
        by_loop.setdefault(job.loop, []).append((job.future, outcome))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:
            pass  # the caller's loop is closed: nobody is waiting any more


def _settle(settled: list[tuple[asyncio.Future, int | Exception]]) -> None:
    for future, outcome in settled:
        if future.done():  # the caller gave up (cancelled)
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
