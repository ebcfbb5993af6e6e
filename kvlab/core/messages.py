"""Messages between coordinators and replicas, and between replicas; the effects the core asks for.

All are immutable values: the core returns them, a driver (real network or simulator) carries
them out. `req` numbers a single coordinator request so its reply can find its way back;
`xid` numbers a replica-to-replica exchange (anti-entropy, hint replay) the same way.

They are msgspec Structs: a request makes about twenty of them, and a Struct is built in a
quarter of the time of a NamedTuple (a tenth of a frozen dataclass's). The wire format is
these declarations themselves: `array_like` Structs travel as msgpack arrays, and a `tag`
in front, unique across every message, tells the kinds apart (see `kvlab.net.codec`), so one
channel can carry any of them.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from kvlab.core.record import Record
from kvlab.core.version import Version

# Wire messages: frozen, compact on the wire, and never part of a reference cycle.
_WIRE = {"frozen": True, "array_like": True, "gc": False}


# -- coordinator -> replica -------------------------------------------------------------


class ReadRequest(msgspec.Struct, tag=0, **_WIRE):
    """`ring`: the version of the topology the coordinator placed the key by. A replica
    holding that version knows the key is its own without placing it again."""

    req: int
    key: str
    ring: int = 0


class WriteRequest(msgspec.Struct, tag=1, **_WIRE):
    """Store `record` if it supersedes what the replica holds.

    `repair` marks a read repair (the coordinator sends the newest version it read), so the
    replica can count what each healing mechanism did.
    """

    req: int
    record: Record
    repair: bool = False


class HintRequest(msgspec.Struct, tag=2, **_WIRE):
    """Keep `record` for `target`, which missed it, and hand it over when `target` is back."""

    req: int
    record: Record
    target: str


class RingSpec(msgspec.Struct, **_WIRE):
    """A ring as it travels: its nodes, tokens per node, and seats (see `kvlab.core.ring`)."""

    nodes: list[str]
    vnodes: int
    seats: list[tuple[str, str]] = []


class RingUpdate(msgspec.Struct, tag=7, **_WIRE):
    """The cluster's membership, version `version`: what the committer tells every node.

    `ring` places reads and writes; during a move `pending` is the ring being moved to,
    whose replicas get every write too. `addresses` say where each node listens (opaque to
    the core: a driver connects with them). `clean`: no operation placed by an older ring
    is in flight any more, so a node drops the keys it no longer owns.

    A node sent a version older than its own answers with its own (a committer that
    restarted without its state learns the membership from the nodes).
    """

    version: int
    ring: RingSpec
    pending: RingSpec | None = None
    addresses: dict[str, str] = {}
    clean: bool = False


class Ping(msgspec.Struct, tag=8, **_WIRE):
    """A heartbeat: the replica answers `Pong` at once (the failure detector's input)."""

    seq: int


class StreamOrder(msgspec.Struct, tag=20, **_WIRE):
    """Send `target` every record held in `arcs` (each (start, end] on the ring) whose
    position is above `after`, in ring order, in throttled batches; report progress."""

    xid: int
    target: str
    arcs: list[tuple[int, int]]
    after: int = -1
    attempt: int = 0  # orders of one stream are numbered: progress says which it is of


Request = ReadRequest | WriteRequest | HintRequest
Control = RingUpdate | Ping | StreamOrder


# -- replica -> coordinator -------------------------------------------------------------


class ReadReply(msgspec.Struct, tag=3, **_WIRE):
    req: int
    record: Record | None  # None: the replica has never heard of the key


class WriteReply(msgspec.Struct, tag=4, **_WIRE):
    """The record (or hint) is durable on the replica."""

    req: int


class ErrorReply(msgspec.Struct, tag=5, **_WIRE):
    req: int
    error: str


class Superseded(msgspec.Struct, tag=6, **_WIRE):
    """The replica holds `version`, newer than the write: storing it would change nothing.

    Never a plain acknowledgement: the coordinator re-stamps the write above `version`.
    """

    req: int
    version: Version


Reply = ReadReply | WriteReply | ErrorReply | Superseded


class Pong(msgspec.Struct, tag=9, **_WIRE):
    """The answer to `Ping`, with the ring version the replica holds and how many hints
    it keeps for others (a node leaving the cluster hands them over before it goes)."""

    seq: int
    ring_version: int
    hints: int = 0


class StreamProgress(msgspec.Struct, tag=22, **_WIRE):
    """How far a `StreamOrder` got: records and bytes the target made durable so far, the
    ring position of the last one (where a resumed stream starts), and whether it is over.
    `error` set: the stream stopped (the target could not be reached)."""

    xid: int
    keys: int
    bytes: int
    cursor: int
    done: bool
    error: str = ""
    attempt: int = 0  # the order's, so a report of an order given up on is told apart


Report = Pong | StreamProgress | RingUpdate
# What a coordinator gets from a node besides replies, by class (drivers route them).
REPORTS = frozenset((Pong, StreamProgress, RingUpdate))


# -- replica <-> replica ----------------------------------------------------------------
# A range is the set of nodes that replicate a key (its preference list, sorted): the keys
# two replicas should both hold are exactly those of the ranges they share.

Range = tuple[str, ...]


class TreeRequest(msgspec.Struct, tag=10, **_WIRE):
    """Anti-entropy, step 1: the initiator's branch hashes of one range's tree."""

    xid: int
    range: Range
    branches: list[int]


class TreeReply(msgspec.Struct, tag=11, **_WIRE):
    """Step 2: the responder's leaf hashes under every branch that differs."""

    xid: int
    leaves: list[tuple[int, list[int]]]  # (branch, its leaf hashes)


class KeysRequest(msgspec.Struct, tag=12, **_WIRE):
    """Step 3: the initiator's (key, version) entries in the segments that differ."""

    xid: int
    range: Range
    segments: list[int]
    entries: list[tuple[str, Version]]


class KeysReply(msgspec.Struct, tag=13, **_WIRE):
    """Step 4: the responder's records that are newer, and the keys it wants back."""

    xid: int
    records: list[Record]
    want: list[str]


class Mechanism(StrEnum):
    """What repaired a key: the three healing mechanisms, counted apart."""

    READ_REPAIR = "read_repair"
    HINT = "hint"
    ANTI_ENTROPY = "anti_entropy"
    STREAM = "stream"  # a range handed to its new owner during a membership change


class Push(msgspec.Struct, tag=14, **_WIRE):
    """Records for the receiver to store (a hint replay, or the end of an exchange)."""

    xid: int
    records: list[Record]
    mechanism: Mechanism


class PushAck(msgspec.Struct, tag=15, **_WIRE):
    """A `Push` is durable on the receiver; `stored` of its records were news there."""

    xid: int
    stored: int


class Purge(msgspec.Struct, tag=16, **_WIRE):
    """Every replica holds these tombstones and their grace is over: drop them."""

    entries: list[tuple[str, Version]]


PeerMessage = TreeRequest | TreeReply | KeysRequest | KeysReply | Push | PushAck | Purge
Message = Request | Control | Reply | Report | PeerMessage


# -- outcomes ---------------------------------------------------------------------------


class OpKind(StrEnum):
    READ = "read"
    WRITE = "write"
    INSPECT = "inspect"


class Status(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"  # too many replicas failed for the quorum: HTTP 503
    TIMEOUT = "timeout"  # replicas still silent at the deadline: HTTP 504


OK, NOT_FOUND, UNAVAILABLE, TIMEOUT = Status.OK, Status.NOT_FOUND, Status.UNAVAILABLE, \
    Status.TIMEOUT


class Outcome(msgspec.Struct, frozen=True):
    """What a client operation ended with, and which replicas took part.

    For a write, `acked` are the replicas known to hold it when the outcome was decided: a
    write that failed its quorum may still be stored there (as in Dynamo). `hinted` maps a
    primary that missed the write to the fallback node keeping a hint for it (in a sloppy
    quorum those hints counted toward W).
    For a read, `record` is the newest version among the replies (a tombstone reads as
    not found). For an inspection, `answers` holds each replica's own record.
    """

    op: int
    kind: str  # an OpKind
    key: str
    status: str  # a Status
    record: Record | None
    replicas: tuple[str, ...]
    acked: tuple[str, ...]
    needed: int  # replies the quorum asked for (R or W)
    failed: dict[str, str]  # replica -> why it failed
    answers: dict[str, Record | None]  # inspections only: each replica's own record
    hinted: dict[str, str] = {}

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(n for n in self.replicas if n not in self.acked and n not in self.failed)


# -- effects ----------------------------------------------------------------------------


class Send(msgspec.Struct, frozen=True, gc=False):
    """Deliver `message` to `node` (a replica, or the coordinator a reply goes back to)."""

    node: str
    message: Message


class SetTimer(msgspec.Struct, frozen=True, gc=False):
    """Call `Coordinator.timeout(op, now)` at virtual or real time `at_ms`."""

    op: int
    at_ms: int


class Done(msgspec.Struct, frozen=True):
    outcome: Outcome


class Hint(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A record kept for `target` by a fallback node since `stored_ms` (its own clock)."""

    target: str
    record: Record
    stored_ms: int


class Persist(msgspec.Struct, frozen=True, gc=False):
    """Make all of this durable in one transaction, then call `Replica.persisted(batch)`.

    `records` are stored each only if it supersedes the stored one (as the replica decided);
    `hints` are kept (replacing an older hint for the same target and key); `drop_hints`
    and `purge` remove a hint or a tombstone only if it still holds exactly that version;
    `drop` removes a record (live or not) only if it still holds exactly that version (keys
    this node no longer owns); `ring`, if set, is the membership to start with next time.
    """

    batch: int
    records: list[Record]
    hints: list[Hint]
    drop_hints: list[tuple[str, str, Version]]  # (target, key, version)
    purge: list[tuple[str, Version]]  # tombstones (key, version)
    drop: list[tuple[str, Version]] = []
    ring: RingUpdate | None = None


class Connect(msgspec.Struct, frozen=True, gc=False):
    """The replica's peers changed: keep a link to each of `peers` (name -> address), and
    none to any other node."""

    peers: dict[str, str]


CoordinatorEffect = Send | SetTimer | Done
ReplicaEffect = Send | Persist | Connect
Effect = Send | SetTimer | Done | Persist | Connect
