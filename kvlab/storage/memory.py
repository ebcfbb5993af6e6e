"""An in-memory store with the same semantics as the SQLite one (used by the simulator)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from kvlab.core.record import Record, purgeable, supersedes


class MemoryStore:
    def __init__(self) -> None:
        self._records: dict[str, Record] = {}

    def get(self, key: str) -> Record | None:
        return self._records.get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        records = self._records
        return {key: records[key] for key in keys if key in records}

    def apply(self, records: Iterable[Record]) -> list[bool]:
        """Store each record that supersedes the current one; report which were stored."""
        stored = []
        for record in records:
            if supersedes(record, self._records.get(record.key)):
                self._records[record.key] = record
                stored.append(True)
            else:
                stored.append(False)
        return stored

    def purge(self, now_ms: int, grace_ms: int) -> int:
        dead = [k for k, r in self._records.items() if purgeable(r, now_ms, grace_ms)]
        for key in dead:
            del self._records[key]
        return len(dead)

    def count(self) -> int:
        """Live keys (tombstones are not counted)."""
        return sum(1 for r in self._records.values() if not r.tombstone)

    def records(self) -> Iterator[Record]:
        return iter(list(self._records.values()))
