"""Messages between a coordinator and its replicas, and the effects the core asks for.

All are immutable values: the core returns them, a driver (real network or simulator) carries
them out. `req` numbers a single replica request so its reply can find its way back. The
messages are NamedTuples rather than frozen dataclasses because a request makes about fifteen
of them and a tuple is built in a fraction of the time (a frozen dataclass pays an
`object.__setattr__` per field).
"""

from __future__ import annotations

from typing import NamedTuple

from kvlab.core.record import Record


# -- coordinator -> replica -------------------------------------------------------------


class ReadRequest(NamedTuple):
    req: int
    key: str


class WriteRequest(NamedTuple):
    """Store `record` if it supersedes what the replica holds (also used for repair)."""

    req: int
    record: Record


Request = ReadRequest | WriteRequest


# -- replica -> coordinator -------------------------------------------------------------


class ReadReply(NamedTuple):
    req: int
    record: Record | None  # None: the replica has never heard of the key


class WriteReply(NamedTuple):
    """The record is durable on the replica (or a newer version already was)."""

    req: int


class ErrorReply(NamedTuple):
    req: int
    error: str


Reply = ReadReply | WriteReply | ErrorReply


# -- outcomes and effects ---------------------------------------------------------------

OK = "ok"
NOT_FOUND = "not_found"
UNAVAILABLE = "unavailable"  # too many replicas failed for the quorum: HTTP 503
TIMEOUT = "timeout"  # replicas still silent at the deadline: HTTP 504


class Outcome(NamedTuple):
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
    needed: int  # replies the quorum asked for (R or W)
    failed: dict[str, str]  # replica -> why it failed
    answers: dict[str, Record | None]  # inspections only: each replica's own record

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(n for n in self.replicas if n not in self.acked and n not in self.failed)


class Send(NamedTuple):
    node: str
    request: Request


class SetTimer(NamedTuple):
    """Call `Coordinator.timeout(op, now)` at virtual or real time `at_ms`."""

    op: int
    at_ms: int


class Done(NamedTuple):
    outcome: Outcome


Effect = Send | SetTimer | Done
