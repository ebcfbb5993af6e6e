"""Messages between a coordinator and its replicas, and the effects the core asks for.

All are frozen value objects: the core returns them, a driver (real network or simulator)
carries them out. `req` numbers a single replica request so its reply can find its way back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvlab.core.record import Record


# -- coordinator -> replica -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRequest:
    req: int
    key: str


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """Store `record` if it supersedes what the replica holds (also used for repair)."""

    req: int
    record: Record


Request = ReadRequest | WriteRequest


# -- replica -> coordinator -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadReply:
    req: int
    record: Record | None  # None: the replica has never heard of the key


@dataclass(frozen=True, slots=True)
class WriteReply:
    """The record is durable on the replica (or a newer version already was)."""

    req: int


@dataclass(frozen=True, slots=True)
class ErrorReply:
    req: int
    error: str


Reply = ReadReply | WriteReply | ErrorReply


# -- outcomes and effects ---------------------------------------------------------------

OK = "ok"
NOT_FOUND = "not_found"
UNAVAILABLE = "unavailable"  # too many replicas failed for the quorum: HTTP 503
TIMEOUT = "timeout"  # replicas still silent at the deadline: HTTP 504


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a client operation ended with, and which replicas took part.

    For a write, `acked` are the replicas known to hold it when the outcome was decided: a
    write that failed its quorum may still be stored there (as in Dynamo).
    For a read, `record` is the newest version among the replies (a tombstone reads as
    not found). For an inspection, `answers` holds each replica's own record.
    """

    op: int
    kind: str  # "read" | "write" | "inspect"
    key: str
    status: str
    record: Record | None
    replicas: tuple[str, ...]
    acked: tuple[str, ...]
    needed: int = 0  # replies the quorum asked for (R or W)
    failed: dict[str, str] = field(default_factory=dict)
    answers: dict[str, Record | None] = field(default_factory=dict)

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(n for n in self.replicas if n not in self.acked and n not in self.failed)


@dataclass(frozen=True, slots=True)
class Send:
    node: str
    request: Request


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call `Coordinator.timeout(op, now)` at virtual or real time `at_ms`."""

    op: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class Done:
    outcome: Outcome


Effect = Send | SetTimer | Done
