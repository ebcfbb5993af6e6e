"""A stored value (or tombstone) and the rule replicas use to accept it."""

from __future__ import annotations

import msgspec

from kvlab.core.version import Version


class Record(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One key's state on a replica. `value is None` marks a tombstone (a versioned delete)."""

    key: str
    value: bytes | None
    version: Version

    @property
    def tombstone(self) -> bool:
        return self.value is None


def supersedes(incoming: Record, existing: Record | None) -> bool:
    """Whether a replica holding `existing` must store `incoming`.

    Strictly newer wins. Equal versions are the same write (a retry or a repair) and need no
    second copy; older ones would undo a newer write or resurrect a deleted key.
    """
    return existing is None or incoming.version > existing.version
