"""An in-memory store with the same semantics as the SQLite one (used by the simulator)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from kvlab.core.messages import Hint, Persist, RingUpdate
from kvlab.core.record import Record, supersedes
from kvlab.core.version import Version


class MemoryStore:
    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._hints: dict[tuple[str, str], Hint] = {}  # (target, key) -> hint
        self.ring_update: RingUpdate | None = None

    def ring(self) -> RingUpdate | None:
        """The membership the node was last told, if any."""
        return self.ring_update

    def get(self, key: str) -> Record | None:
        return self._records.get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        records = self._records
        return {key: records[key] for key in keys if key in records}

    def write(self, batch: Persist) -> None:
        """Apply a replica's `Persist` as one transaction would (see `SqliteStore.write`)."""
        records = self._records
        for record in batch.records:
            if supersedes(record, records.get(record.key)):
                records[record.key] = record
        for hint in batch.hints:
            slot = (hint.target, hint.record.key)
            old = self._hints.get(slot)
            if old is None or hint.record.version > old.record.version:
                self._hints[slot] = hint
        for target, key, version in batch.drop_hints:
            old = self._hints.get((target, key))
            if old is not None and old.record.version == version:
                del self._hints[(target, key)]
        for key, version in batch.purge:
            old = records.get(key)
            if old is not None and old.tombstone and old.version == version:
                del records[key]
        for key, version in batch.drop:
            old = records.get(key)
            if old is not None and old.version == version:
                del records[key]
        if batch.ring is not None:
            self.ring_update = batch.ring

    def entries(self) -> Iterator[tuple[str, Version, bool]]:
        """(key, version, is a tombstone) of every record: what a replica loads at start."""
        return iter([(r.key, r.version, r.tombstone) for r in self._records.values()])

    def hints(self) -> Iterator[Hint]:
        return iter(list(self._hints.values()))

    def wipe(self) -> None:
        """Lose everything, as a replaced disk does."""
        self._records.clear()
        self._hints.clear()
        self.ring_update = None

    def count(self) -> int:
        """Live keys (tombstones are not counted)."""
        return sum(1 for r in self._records.values() if not r.tombstone)

    def records(self) -> Iterator[Record]:
        return iter(list(self._records.values()))
