"""Messages between a coordinator and its replicas, and the effects the core asks for.

All are immutable values: the core returns them, a driver (real network or simulator) carries
them out. `req` numbers a single replica request so its reply can find its way back.

They are msgspec Structs: a request makes about twenty of them, and a Struct is built in a
quarter of the time of a NamedTuple (a tenth of a frozen dataclass's). The replica channel's
wire format is these declarations themselves: `array_like` Structs travel as msgpack
arrays, and a `tag` in front tells the kinds of message apart (see `kvlab.net.codec`).
"""

from __future__ import annotations

import msgspec

from kvlab.core.record import Record

# Wire messages: frozen, compact on the wire, and never part of a reference cycle.
_WIRE = {"frozen": True, "array_like": True, "gc": False}


# -- coordinator -> replica -------------------------------------------------------------


class ReadRequest(msgspec.Struct, tag=0, **_WIRE):
    req: int
    key: str


class WriteRequest(msgspec.Struct, tag=1, **_WIRE):
    """Store `record` if it supersedes what the replica holds (also used for repair)."""

    req: int
    record: Record


Request = ReadRequest | WriteRequest


# -- replica -> coordinator -------------------------------------------------------------


class ReadReply(msgspec.Struct, tag=0, **_WIRE):
    req: int
    record: Record | None  # None: the replica has never heard of the key


class WriteReply(msgspec.Struct, tag=1, **_WIRE):
    """The record is durable on the replica (or a newer version already was)."""

    req: int


class ErrorReply(msgspec.Struct, tag=2, **_WIRE):
    req: int
    error: str


Reply = ReadReply | WriteReply | ErrorReply


# -- outcomes and effects ---------------------------------------------------------------

OK = "ok"
NOT_FOUND = "not_found"
UNAVAILABLE = "unavailable"  # too many replicas failed for the quorum: HTTP 503
TIMEOUT = "timeout"  # replicas still silent at the deadline: HTTP 504


class Outcome(msgspec.Struct, frozen=True):
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


class Send(msgspec.Struct, frozen=True, gc=False):
    node: str
    request: Request


class SetTimer(msgspec.Struct, frozen=True, gc=False):
    """Call `Coordinator.timeout(op, now)` at virtual or real time `at_ms`."""

    op: int
    at_ms: int


class Done(msgspec.Struct, frozen=True):
    outcome: Outcome


Effect = Send | SetTimer | Done
