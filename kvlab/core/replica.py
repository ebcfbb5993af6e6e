"""The replica: everything one node decides over time, as a state machine with no IO.

A `Replica` serves a coordinator's reads and writes, keeps hints for nodes that missed
writes and hands them over when those nodes are back, compares hash trees with the other
replicas of each range it holds (anti-entropy) and repairs what differs, and purges a
tombstone once every replica of its key holds it and its grace period is over. During a
membership change it follows the committer's ring versions (`RingUpdate`): it takes
writes for the ranges it is joining, streams a range it holds to its new owner when told
(`StreamOrder`, see `kvlab.core.stream`), and once the move is over (a version marked
`clean`) drops what it no longer owns. A coordinator's request for a key no ring of its
version gives it is refused, never answered "not found".

Like `Coordinator`, it takes messages and `now` and returns effects: `Send` a message to a
node or coordinator, `Persist` a batch (records, hints, deletions) in one transaction.
After a batch is durable the driver calls `persisted(batch, now)` and gets the
acknowledgements to send; a write is never acknowledged before. The replica owns its own
deadlines (hint replay, anti-entropy, purge, exchange time-outs): `get_timer()` says when
it next needs `handle_timer(now)`, as in aioquic. Values are read through the `read`
function the driver supplies (the store's committed state); everything else the replica
needs (each key's version, in hash trees per range, and the hints it keeps) it holds in
memory, rebuilt by `load` at start, or brought back by `undump` from what `dump` saved when
the node last stopped.
"""

from __future__ import annotations

from collections import deque
from heapq import heapify, heappop, heappush
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import assert_never

import msgspec

from kvlab.core.hashtree import (
    BRANCHES,
    PER_BRANCH,
    SEGMENTS,
    HashTree,
    Packed,
    differing_branches,
    differing_segments,
    segment_of,
)
from kvlab.core.messages import (
    Connect,
    ErrorReply,
    Hint,
    HintRequest,
    KeysReply,
    KeysRequest,
    Mechanism,
    Message,
    Persist,
    Ping,
    Pong,
    Purge,
    Push,
    PushAck,
    Range,
    ReadReply,
    ReadRequest,
    ReplicaEffect,
    RingUpdate,
    Send,
    StreamOrder,
    StreamProgress,
    Superseded,
    TreeReply,
    TreeRequest,
    WriteReply,
    WriteRequest,
)
from kvlab.core.record import Record
from kvlab.core.ring import Ring, hash_key
from kvlab.core.stream import Arcs, OutboundStream
from kvlab.core.topology import Topology
from kvlab.core.version import MAX_AHEAD_MS, Version, too_far_ahead

Reader = Callable[[Sequence[str]], Mapping[str, Record]]

# Only replicas send these; anything else sending them is refused.
_PEER_MESSAGES = frozenset((TreeRequest, TreeReply, KeysRequest, KeysReply, Push, PushAck,
                            Purge))
# A peer's message holds at most this many times a round's keys (or a replay's records):
# more is no peer of ours, and would hold the event loop for seconds.
_MESSAGE_BOUND = 4

HOUR_MS = 3_600_000


class _Dump(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What `Replica.dump` saves: the layout its trees were made under, and what was held."""

    nodes: tuple[str, ...]
    vnodes: int
    seats: tuple[tuple[str, str], ...]
    n: int
    trees: list[tuple[tuple[str, ...], Packed]]
    strays: dict[str, Version]
    tombs: dict[str, Version]


_dump_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(_Dump))


@dataclass(frozen=True)
class ReplicaConfig:
    """How a node heals; the defaults are the cluster's."""

    n: int = 3  # replicas per key
    tombstone_grace_ms: int = 24 * HOUR_MS
    max_ahead_ms: int = MAX_AHEAD_MS  # refuse writes stamped further ahead of our clock
    hints: bool = True
    hint_window_ms: int = 3 * HOUR_MS  # hints older than this are dropped
    hint_batch: int = 500  # records per hint replay message
    retry_ms: int = 1_000  # wait before replaying to a target that did not answer
    anti_entropy: bool = True
    # Each (range, peer) pair is compared from this node's side this often; the peer
    # compares from its side too.
    anti_entropy_ms: int = 5_000
    exchange_keys: int = 1_000  # at most this many keys repaired per round, each way
    exchange_bytes: int = 4 << 20  # and at most this many value bytes
    exchange_timeout_ms: int = 5_000
    purge_every_ms: int = 1_000
    stream_batch: int = 500  # records per streamed batch (and at most exchange_bytes)
    stream_rate: int = 0  # bytes per second a stream may send; 0: as fast as acked

    def __post_init__(self) -> None:
        for name in ("n", "anti_entropy_ms", "exchange_keys", "exchange_bytes",
                     "exchange_timeout_ms", "purge_every_ms", "hint_batch", "retry_ms",
                     "stream_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.stream_rate < 0:
            raise ValueError("stream_rate must not be negative")
        if self.tombstone_grace_ms < 0 or self.hint_window_ms < 0 or self.max_ahead_ms < 0:
            raise ValueError("grace, hint window and clock bound must not be negative")

    @property
    def purge_after_ms(self) -> int:
        """A tombstone's age before it may go: past its grace, and past every hint that
        could still hold an older value of its key (plus the clock bound, for skew)."""
        if not self.hints:
            return self.tombstone_grace_ms
        return max(self.tombstone_grace_ms, self.hint_window_ms + self.max_ahead_ms)


@dataclass
class ReplicaStats:
    reads: int = 0
    writes: int = 0
    superseded: int = 0  # writes answered "superseded" (a newer version was held)
    refused: int = 0  # writes refused: stamped too far ahead of this node's clock
    hints_stored: int = 0
    hints_replayed: int = 0  # hints handed over to their target (acknowledged)
    hints_expired: int = 0  # dropped after the hint window
    ae_rounds: int = 0  # exchanges this node started and finished
    ae_in_sync: int = 0  # of which found nothing to repair
    repaired: dict[str, int] = field(default_factory=lambda: {m.value: 0 for m in Mechanism})
    repair_bytes: int = 0  # key and value bytes this node received through repairs
    purged: int = 0  # tombstones dropped
    refused_owner: int = 0  # requests for keys this node does not own (another ring's)
    streamed_keys: int = 0  # records this node streamed to new owners (acknowledged)
    streamed_bytes: int = 0
    dropped: int = 0  # keys dropped after a move: owned elsewhere now
    ignored: int = 0  # messages refused: a peer's message from a non-peer, or out of bounds
    # peer -> the last exchange this node started with it that repaired something: when,
    # keys in and out, how long (rounds that find nothing would hide it from a dashboard)
    exchanges: dict[str, dict] = field(default_factory=dict)
    # peer -> when this node last compared trees with it, whichever side started
    last_exchange: dict[str, int] = field(default_factory=dict)


class _Batch:
    """One `Persist` being built, and what to send once it is durable."""

    __slots__ = ("records", "hints", "drop_hints", "purge", "acks", "new_hints", "drop",
                 "ring")

    def __init__(self) -> None:  # a plain class: one is built for every frame a node gets
        self.records: list[Record] = []
        self.hints: list[Hint] = []
        self.drop_hints: list[tuple[str, str, Version]] = []
        self.purge: list[tuple[str, Version]] = []
        self.drop: list[tuple[str, Version]] = []
        self.ring: RingUpdate | None = None
        # (destination, message once durable, whether to report a failed batch to it)
        self.acks: list[tuple[str, Message, bool]] = []
        self.new_hints: list[Hint] = []

    def __bool__(self) -> bool:
        return bool(self.records or self.hints or self.drop_hints or self.purge or self.acks
                    or self.drop or self.ring)


@dataclass
class _Exchange:
    """An anti-entropy exchange this node started."""

    range: Range
    peer: str
    started_ms: int
    deadline_ms: int
    ripe_before: int  # ripe tombstones numbered below this were in the tree we sent
    stage: str = "tree"  # "tree": waiting for leaves; "keys": waiting for records
    more: bool = False  # differences were left for a later round (the round was bounded)


class _Ripe:
    """A tombstone past its purge age, and the peers not yet known to hold it."""

    __slots__ = ("range", "segment", "version", "missing", "seq")

    def __init__(self, rng: Range, segment: int, version: Version, missing: set[str],
                 seq: int) -> None:
        self.range = rng
        self.segment = segment
        self.version = version
        self.missing = missing
        self.seq = seq  # when it ripened (a counter): what an exchange may confirm


@dataclass
class _Flight:
    """A hint replay batch sent and not yet acknowledged."""

    xid: int
    entries: list[tuple[str, Version]]
    deadline_ms: int


class Replica:
    """One node's replica of its ranges."""

    def __init__(self, name: str, ring: Ring, config: ReplicaConfig, read: Reader) -> None:
        self.name = name
        self.config = config
        self.read = read
        self.stats = ReplicaStats()
        self._trees: dict[Range, HashTree] = {}
        self._ranges: dict[tuple[str, ...], Range | None] = {}  # preference list -> range
        # arc of the ring -> the tree of its range (None: not ours); placing a key is on
        # every write's path, and a ring has few arcs.
        self._arcs: dict[int, HashTree | None] = {}
        self._strays: dict[str, Version] = {}  # keys held outside this node's ranges
        self._tombs: dict[str, Version] = {}
        # Tombstones by age (physical ms, key), so each purge round looks only at those
        # whose grace just ended instead of at every tombstone held.
        self._aging: list[tuple[int, str]] = []
        # Ripe tombstones (past their purge age), the keys each (range, peer) has yet to
        # confirm by segment, and those every peer has confirmed: a confirmation touches
        # each key once per peer, and a purge round only the ready ones.
        self._ripe: dict[str, _Ripe] = {}
        self._waiting: dict[tuple[Range, str], dict[int, set[str]]] = {}
        self._ready: set[str] = set()
        self._ripe_seq = 0
        self._hints: dict[str, dict[str, Hint]] = {}  # target -> key -> hint
        self._flights: dict[str, _Flight] = {}  # target -> replay in flight
        self._retry_at: dict[str, int] = {}  # target -> earliest next replay
        self._exchanges: dict[int, _Exchange] = {}
        self._pairs: list[tuple[Range, str]] = []
        self._urgent: deque[tuple[Range, str]] = deque()
        self._turn = 0
        self._next_ae: int | None = None
        self._next_purge: int | None = None
        self._batches: dict[int, _Batch] = {}
        self._next_batch = 0
        self._next_xid = 0
        self.topology = Topology(0, ring)
        self._addresses: dict[str, str] = {}  # where the nodes listen, as last told
        self._hints_placed: dict[str, int] = {}  # target -> version its hints were checked at
        # arc of the pending ring -> whether it is ours (keys we join during a move)
        self._joining: dict[int, bool] = {}
        self._streams: dict[int, OutboundStream] = {}  # batch in flight (local xid) -> stream
        self._sources: dict[int, OutboundStream] = {}  # order xid -> stream
        self.ring = ring
        self._layout(ring)

    # -- start-up and membership ---------------------------------------------------------

    def load(self, entries: Iterable[tuple[str, Version, bool]], hints: Iterable[Hint] = ()
             ) -> None:
        """What the store holds (key, version, is a tombstone), and the hints it keeps."""
        for key, version, tombstone in entries:
            self._set(key, version, tombstone)
        for hint in hints:
            self._hints.setdefault(hint.target, {})[hint.record.key] = hint

    def dump(self) -> bytes:
        """What `load` rebuilds from the store, as bytes, for `undump` at the next start.

        It describes the store only as it is now: the driver must keep it only if every
        batch was persisted (`settled`), and make it unusable before anything is written
        next time (kvlab.storage.sqlite keeps it under a token that opening the store
        deletes). Then anti-entropy never compares hashes of writes the store lacks.
        """
        ring = self.ring
        return _dump_codec[0].encode(_Dump(
            ring.nodes, ring.vnodes, ring.seats, self.config.n,
            [(rng, tree.pack()) for rng, tree in sorted(self._trees.items())],
            self._strays, self._tombs))

    def undump(self, data: bytes) -> bool:
        """Hold what `dump` saved, instead of `load`ing the store (on a replica just made).

        With a million keys, `load` took 4.5 s (reading every row, hashing every key
        twice); this takes the saved hashes as they are and decodes a segment's keys only
        when it is first used. False, changing nothing, if `data` was made under another
        ring or replica count (its trees would be of other ranges) or is not a dump.
        """
        try:
            dump = _dump_codec[1].decode(data)
            trees = {rng: HashTree.unpack(packed) for rng, packed in dump.trees}
        except (msgspec.DecodeError, ValueError):
            return False
        ring = self.ring
        if (dump.nodes, dump.vnodes, dump.seats, dump.n) != \
                (ring.nodes, ring.vnodes, ring.seats, self.config.n) or trees.keys() != \
                self._trees.keys():
            return False
        self._trees, self._arcs = trees, {}  # arcs point at the trees: placed again
        self._strays, self._tombs = dump.strays, dump.tombs
        self._aging = [(version.physical, key) for key, version in dump.tombs.items()]
        heapify(self._aging)
        return True

    def settled(self) -> bool:
        """Whether every Persist given out was reported persisted or failed (undone): only
        then does what the replica holds match the store."""
        return not self._batches

    def restore(self, update: RingUpdate) -> list[ReplicaEffect]:
        """Start from the membership this node last heard (kept by `Persist.ring`)."""
        effects: list[ReplicaEffect] = []
        batch = _Batch()
        try:
            self._adopt(update, effects, batch)
        except ValueError:
            return []  # kept by an older kvlab, say: the committer tells us again
        if batch.drop:
            effects.append(self._persist(batch))
        return effects

    def _ring_update(self, src: str, update: RingUpdate, effects: list[ReplicaEffect],
                     batch: _Batch) -> None:
        if update.version < self.topology.version:
            # From a committer that restarted without its state: tell it ours, which it
            # goes on from (versions only ever grow).
            effects.append(Send(src, self.topology.update(self._addresses)))
            return
        try:
            if self._adopt(update, effects, batch):
                batch.ring = update
        except ValueError:
            self.stats.ignored += 1  # no ring at all (duplicate names, say): keep ours

    def _adopt(self, update: RingUpdate, effects: list[ReplicaEffect], batch: _Batch
               ) -> bool:
        """Follow the committer's membership `update`; whether it changed anything.
        Raises ValueError (changing nothing) if it describes no ring."""
        topology = Topology.of(update)
        if update.version < self.topology.version or topology == self.topology:
            return False
        if topology.ring != self.ring:
            self._relayout(topology.ring)
        self.topology = topology
        self._addresses = dict(update.addresses)
        self._joining = {}
        self._peers = frozenset(topology.members) - {self.name}
        effects.append(Connect({peer: update.addresses.get(peer, "")
                                for peer in sorted(self._peers)}))
        if topology.clean:
            self._clean(batch)
        return True

    def _owns(self, tree: HashTree | None, point: int) -> bool:
        """Whether a key at `point` (placed at `tree`) is ours under the current topology."""
        if tree is not None:
            return True
        pending = self.topology.pending
        if pending is None:
            return False
        arc = pending.arc_index(point)
        owned = self._joining.get(arc)
        if owned is None:
            owned = self._joining[arc] = \
                self.name in pending.preference_list_at(point, self.config.n)
        return owned

    def _relayout(self, ring: Ring) -> None:
        """Membership changed: re-place every key in the new ring's ranges."""
        held = [(k, v) for tree in self._trees.values() for e in tree.all_entries()
                for k, v in e.items()] + list(self._strays.items())
        before = set(self._trees)
        self.ring = ring
        self._layout(ring)
        for key, version in held:
            self._set(key, version, key in self._tombs)
        # Ranges this node just took on (a move's target) are compared with their other
        # replicas first, at once: what the stream brought is checked tree against tree.
        self._urgent.extend(pair for pair in self._pairs if pair[0] not in before)
        if self._urgent and self._next_ae is not None:
            self._next_ae = 0

    def _layout(self, ring: Ring) -> None:
        self._trees, self._ranges, self._strays, self._arcs = {}, {}, {}, {}
        self._ripe, self._waiting, self._ready = {}, {}, set()
        self._urgent, self._aging = deque(), []
        for start, _, _ in ring.arcs() or [(0, 0, "")]:
            listed = ring.preference_list_at(start, self.config.n)
            rng = self._range_for(listed)
            if rng is not None and rng not in self._trees:
                self._trees[rng] = HashTree()
        self._pairs = [(r, peer) for r in sorted(self._trees) for peer in r if peer != self.name]
        self._peers = frozenset(ring.nodes) - {self.name}
        if self._next_ae is None and self._next_purge is not None and self._pairs \
                and self.config.anti_entropy:
            self._next_ae = self._next_purge  # a node that joined has ranges to compare now

    def _range_for(self, listed: tuple[str, ...]) -> Range | None:
        rng = self._ranges.get(listed, ())
        if rng == ():
            rng = tuple(sorted(listed)) if self.name in listed else None
            self._ranges[listed] = rng
        return rng

    # -- where a key lives ---------------------------------------------------------------

    def _place(self, key: str) -> tuple[HashTree | None, int]:
        point = hash_key(key)
        arc = self.ring.arc_index(point)
        try:
            tree = self._arcs[arc]
        except KeyError:
            rng = self._range_for(self.ring.preference_list_at(point, self.config.n))
            tree = self._arcs[arc] = None if rng is None else self._trees[rng]
        return tree, segment_of(point)

    def _lookup(self, key: str) -> tuple[HashTree | None, int, Version | None]:
        """Where `key` lives (its tree, or None for a stray; its segment) and what is held."""
        tree, segment = self._place(key)
        held = self._strays.get(key) if tree is None else tree.segment(segment).get(key)
        return tree, segment, held

    def holds(self, key: str) -> Version | None:
        """The version of `key` this replica has accepted (durable, or being made so)."""
        return self._lookup(key)[2]

    def _set(self, key: str, version: Version, tombstone: bool) -> None:
        tree, segment = self._place(key)
        if tree is None:
            self._strays[key] = version
        else:
            tree.put(segment, key, version)
        if tombstone:
            self._tombs[key] = version
            heappush(self._aging, (version.physical, key))
        elif self._tombs:
            self._tombs.pop(key, None)
        if self._ripe:  # a ripe tombstone overwritten is no longer to be purged
            self._forget_ripe(key)

    def _unset(self, key: str) -> None:
        tree, segment = self._place(key)
        if tree is None:
            self._strays.pop(key, None)
        else:
            tree.remove(segment, key)
        self._tombs.pop(key, None)
        self._forget_ripe(key)

    def _accept(self, record: Record, now_ms: int, batch: _Batch) -> bool:
        """Take `record` if it supersedes what is held; it is persisted with `batch`.

        A record stamped too far ahead of this node's clock is refused whichever way it
        came (a peer's push too): one forged version must not spread by anti-entropy.
        """
        if self._ahead(record, now_ms):
            return False
        tree, segment, held = self._lookup(record.key)
        if held is not None and record.version <= held:
            return False
        self._take(record, tree, segment, held, batch)
        return True

    def _take(self, record: Record, tree: HashTree | None, segment: int,
              held: Version | None, batch: _Batch) -> None:
        """Hold `record` from now on (placed at `tree`, `segment`; replacing `held`)."""
        key, version = record.key, record.version
        tombs = self._tombs
        if tree is None:
            self._strays[key] = version
        else:
            tree.put(segment, key, version)
        if record.value is None:
            tombs[key] = version
            heappush(self._aging, (version.physical, key))
        elif tombs:
            tombs.pop(key, None)
        if self._ripe:  # a ripe tombstone overwritten is no longer to be purged
            self._forget_ripe(key)
        batch.records.append(record)

    # -- messages ------------------------------------------------------------------------

    def receive(self, src: str, message: Message, now_ms: int) -> list[ReplicaEffect]:
        return self.receive_many(src, (message,), now_ms)

    def receive_many(self, src: str, messages: Iterable[Message], now_ms: int
                     ) -> list[ReplicaEffect]:
        """Messages from `src` (arrived together: their writes share one `Persist`)."""
        effects: list[ReplicaEffect] = []
        batch = _Batch()
        reads: list[ReadRequest] = []
        for message in messages:
            # The two messages of every client operation first, by class: a `match` tries
            # its cases one by one, and these are most of what a node ever receives.
            cls = message.__class__
            if cls is WriteRequest:
                self._write(src, message, now_ms, batch, effects)  # type: ignore[arg-type]
                continue
            if cls is ReadRequest:
                reads.append(message)  # type: ignore[arg-type]
                continue
            if cls in _PEER_MESSAGES and not self._from_peer(src, message):
                continue
            match message:
                case ReadRequest():
                    reads.append(message)
                case WriteRequest():
                    self._write(src, message, now_ms, batch, effects)
                case HintRequest():
                    self._keep_hint(src, message, now_ms, batch, effects)
                case TreeRequest():
                    self.stats.last_exchange[src] = now_ms
                    self._tree_request(src, message, effects)
                case TreeReply():
                    self._tree_reply(src, message, now_ms, effects)
                case KeysRequest():
                    self._keys_request(src, message, effects)
                case KeysReply():
                    self._keys_reply(src, message, now_ms, batch, effects)
                case Push():
                    stored = sum(self._repair(r, message.mechanism, now_ms, batch)
                                 for r in message.records)
                    batch.acks.append((src, PushAck(message.xid, stored), False))
                case PushAck():
                    if message.xid in self._streams:
                        self._streamed(src, message, now_ms, effects)
                    else:
                        self._replayed(src, message, now_ms, batch)
                case Purge():
                    # Only a replica of the key may say every replica holds its tombstone.
                    for key, version in message.entries:
                        if self._tombs.get(key) == version and src in self._range_of(key):
                            self._drop_tombstone(key, version, batch)
                case Ping():
                    effects.append(Send(src, Pong(message.seq, self.topology.version,
                                                  self._hint_count())))
                case RingUpdate() | StreamOrder() if src in self._peers:
                    self.stats.ignored += 1  # the committer's to give, never a peer's
                case RingUpdate():
                    self._ring_update(src, message, effects, batch)
                case StreamOrder():
                    self._stream_order(src, message, now_ms, effects)
                case (ReadReply() | WriteReply() | ErrorReply() | Superseded() | Pong()
                      | StreamProgress()):
                    pass  # replies and reports go to coordinators; a replica asked for none
                case _:
                    assert_never(message)
        if reads:
            self.stats.reads += len(reads)
            reads = self._owned_reads(src, reads, effects)
            found = self.read([r.key for r in reads])
            effects.extend(Send(src, ReadReply(r.req, found.get(r.key))) for r in reads)
        if batch:
            effects.append(self._persist(batch))
        return effects

    def _from_peer(self, src: str, message: Message) -> bool:
        """Whether a replica-to-replica message may be taken: from a peer, and in bounds."""
        bound = _MESSAGE_BOUND * max(self.config.exchange_keys, self.config.hint_batch)
        match message:
            case TreeRequest():
                ok = len(message.branches) == BRANCHES
            case TreeReply():
                ok = len(message.leaves) <= BRANCHES and all(
                    0 <= b < BRANCHES and len(leaves) == PER_BRANCH
                    for b, leaves in message.leaves)
            case KeysRequest():  # one segment alone may hold more than a round's keys
                ok = len(message.segments) <= SEGMENTS and len(message.entries) <= 16 * bound
            case KeysReply():
                ok = len(message.records) <= bound and len(message.want) <= bound
            case Push():
                ok = len(message.records) <= bound
            case Purge():
                ok = len(message.entries) <= bound
            case _:
                ok = True
        if src in self._peers and ok:
            return True
        self.stats.ignored += 1
        return False

    def _range_of(self, key: str) -> Range:
        return self._range_for(self.ring.preference_list_at(hash_key(key), self.config.n)) \
            or ()

    def _owned_reads(self, src: str, reads: list[ReadRequest],
                     effects: list[ReplicaEffect]) -> list[ReadRequest]:
        """The reads for keys of ours; the others are refused (another ring placed them)."""
        version = self.topology.version
        if all(read.ring == version for read in reads):
            return reads  # placed by our own topology: ours (the common case, no hashing)
        owned = []
        for read in reads:
            if read.ring == version:
                owned.append(read)
                continue
            tree, _ = self._place(read.key)
            if tree is not None or self._owns(None, hash_key(read.key)):
                owned.append(read)
            else:
                effects.append(Send(src, self._not_owner(read.req)))
        return owned

    def _not_owner(self, req: int) -> ErrorReply:
        self.stats.refused_owner += 1
        return ErrorReply(req, f"{self.name} does not own this key under ring version "
                               f"{self.topology.version}")

    def _persist(self, batch: _Batch) -> Persist:
        self._next_batch += 1
        self._batches[self._next_batch] = batch
        return Persist(self._next_batch, batch.records, batch.hints, batch.drop_hints,
                       batch.purge, batch.drop, batch.ring)

    def persisted(self, batch_id: int, now_ms: int) -> list[ReplicaEffect]:
        """The batch is durable: send what waited for it."""
        batch = self._batches.pop(batch_id)
        return [Send(dst, ok) for dst, ok, _ in batch.acks]

    def persist_failed(self, batch_id: int, error: str, now_ms: int) -> list[ReplicaEffect]:
        """The batch could not be made durable: forget it, and say so to whoever waits."""
        batch = self._batches.pop(batch_id)
        # Back to what is on disk for the batch's keys, unless a later write moved them on.
        # Read from the store rather than remembered: failures are rare, writes are not.
        durable = self.read([r.key for r in batch.records]) if batch.records else {}
        for record in batch.records:
            if self.holds(record.key) == record.version:
                on_disk = durable.get(record.key)
                if on_disk is None:
                    self._unset(record.key)
                else:
                    self._set(record.key, on_disk.version, on_disk.tombstone)
        for hint in batch.new_hints:
            held = self._hints.get(hint.target, {})
            if held.get(hint.record.key) is hint:
                del held[hint.record.key]
        return [Send(dst, ErrorReply(message.req, f"storage: {error}"))  # type: ignore
                for dst, message, report in batch.acks if report]

    def unreachable(self, dst: str, message: Message, now_ms: int) -> list[ReplicaEffect]:
        """`message` could not be delivered to `dst` (its link is down)."""
        match message:
            case Push(mechanism=Mechanism.HINT):
                flight = self._flights.get(dst)
                if flight is not None and flight.xid == message.xid:
                    del self._flights[dst]
                    self._retry_at[dst] = now_ms + self.config.retry_ms
            case Push(mechanism=Mechanism.STREAM):
                stream = self._streams.get(message.xid)
                if stream is not None:
                    effects: list[ReplicaEffect] = []
                    self._stream_failed(stream, f"{dst} unreachable", effects)
                    return effects
            case TreeRequest() | KeysRequest():
                self._exchanges.pop(message.xid, None)
            case _:
                pass  # replies and pushes of an exchange: the peer's anti-entropy covers it
        return []

    # -- coordinator writes and hints ----------------------------------------------------

    def _write(self, src: str, request: WriteRequest, now_ms: int, batch: _Batch,
               effects: list[ReplicaEffect]) -> None:
        record = request.record
        if self._ahead(record, now_ms, src, request.req, effects):
            return
        version = record.version
        tree, segment, held = self._lookup(record.key)  # once: this is every write's path
        if tree is None and not self._owns(None, hash_key(record.key)):
            effects.append(Send(src, self._not_owner(request.req)))
            return
        if held is None or version > held:  # the common case first: one comparison
            self._take(record, tree, segment, held, batch)
            if request.repair:
                self._count_repair(Mechanism.READ_REPAIR, record)
        elif version < held or not request.repair:
            # Older: it would change nothing. Equal, from a coordinator that is not
            # repairing: another write under a version already used (a restarted
            # coordinator whose clock landed on the same stamp), and acknowledging it would
            # drop its value unseen. Either way, ask for a stamp above what is held.
            self.stats.superseded += 1
            effects.append(Send(src, Superseded(request.req, held)))
            return
        # Taken, or an equal version (a repair that raced another): acknowledged only after
        # the batch that stores it.
        self.stats.writes += 1
        batch.acks.append((src, WriteReply(request.req), True))

    def _keep_hint(self, src: str, request: HintRequest, now_ms: int, batch: _Batch,
                   effects: list[ReplicaEffect]) -> None:
        record = request.record
        if request.target == self.name:
            # A hint for this very node (the coordinator's ring and ours disagree): it is
            # simply a write, and it must not be handed over to ourselves later.
            self._write(src, WriteRequest(request.req, record), now_ms, batch, effects)
            return
        if not self.config.hints:
            effects.append(Send(src, ErrorReply(request.req, f"{self.name} keeps no hints")))
            return
        if self._ahead(record, now_ms, src, request.req, effects):
            return
        held = self._hints.setdefault(request.target, {})
        old = held.get(record.key)
        if old is None or record.version > old.record.version:
            hint = Hint(request.target, record, now_ms)
            held[record.key] = hint
            batch.hints.append(hint)
            batch.new_hints.append(hint)
            self.stats.hints_stored += 1
        batch.acks.append((src, WriteReply(request.req), True))

    def _ahead(self, record: Record, now_ms: int, src: str | None = None, req: int = 0,
               effects: list[ReplicaEffect] | None = None) -> bool:
        """Whether `record` is stamped too far ahead of our clock to take (counted; a
        coordinator's request, from `src`, is told why)."""
        if not too_far_ahead(record.version, now_ms, self.config.max_ahead_ms):
            return False
        self.stats.refused += 1
        if effects is not None and src is not None:
            ahead = record.version.physical - now_ms
            effects.append(Send(src, ErrorReply(req, (
                f"version {record.version} is {ahead} ms ahead of {self.name}'s clock (the "
                f"limit is {self.config.max_ahead_ms} ms): a coordinator's clock is wrong"))))
        return True

    # -- repairs -------------------------------------------------------------------------

    def _repair(self, record: Record, mechanism: Mechanism, now_ms: int, batch: _Batch
                ) -> bool:
        if not self._accept(record, now_ms, batch):
            return False
        self._count_repair(mechanism, record)
        return True

    def _count_repair(self, mechanism: Mechanism, record: Record) -> None:
        self.stats.repaired[mechanism] += 1
        self.stats.repair_bytes += len(record.key) + len(record.value or b"")

    # -- hinted handoff ------------------------------------------------------------------

    def _hint_count(self) -> int:
        return sum(len(h) for h in self._hints.values()) if self._hints else 0

    def hints_held(self) -> dict[str, int]:
        return {t: len(h) for t, h in self._hints.items() if h}

    def _replay(self, target: str, now_ms: int, effects: list[ReplicaEffect]) -> None:
        held = self._hints[target]
        window = self.config.hint_window_ms
        expired = [h for h in held.values() if now_ms - h.stored_ms > window]
        if expired:
            batch = _Batch()
            for hint in expired:
                del held[hint.record.key]
                batch.drop_hints.append((target, hint.record.key, hint.record.version))
            self.stats.hints_expired += len(expired)
            effects.append(self._persist(batch))
        if held and target not in self.topology.members:
            self._reroute(target, list(held), now_ms, effects)
            return
        if held and self._hints_placed.get(target) != self.topology.version:
            # The ring changed since these were placed: a hint for a key its target no
            # longer replicates goes to the key's replicas now (a sloppy write may live
            # nowhere else), once per version and target.
            self._hints_placed[target] = self.topology.version
            gone = [key for key in held if target not in self._replicas_of(key)]
            if gone:
                self._reroute(target, gone, now_ms, effects)
        if not held:
            return
        records, size = [], 0
        for hint in held.values():  # a batch is bounded by count and by bytes, like a round
            size += len(hint.record.key) + len(hint.record.value or b"")
            if records and size > self.config.exchange_bytes:
                break
            records.append(hint.record)
            if len(records) == self.config.hint_batch:
                break
        self._next_xid += 1
        self._flights[target] = _Flight(self._next_xid, [(r.key, r.version) for r in records],
                                        now_ms + self.config.exchange_timeout_ms)
        effects.append(Send(target, Push(self._next_xid, records, Mechanism.HINT)))

    def _replicas_of(self, key: str) -> tuple[str, ...]:
        """Every node that replicates `key` now (both lists during a move)."""
        point = hash_key(key)
        topology = self.topology
        listed = topology.ring.preference_list_at(point, self.config.n)
        if topology.pending is not None:
            listed += tuple(n for n in topology.pending.preference_list_at(point, self.config.n)
                            if n not in listed)
        return listed

    def _reroute(self, target: str, keys: list[str], now_ms: int,
                 effects: list[ReplicaEffect]) -> None:
        """`target` no longer replicates `keys` (it left, or their range moved): their
        hints go to the keys' current replicas instead (a write a sloppy quorum
        acknowledged may live only in them)."""
        batch = _Batch()
        held_for = self._hints[target]
        for key in keys:
            hint = held_for.pop(key)
            batch.drop_hints.append((target, key, hint.record.version))
            for replica in self._replicas_of(key):
                if replica == target:
                    continue
                if replica == self.name:
                    self._accept(hint.record, now_ms, batch)
                    continue
                held = self._hints.setdefault(replica, {})
                old = held.get(key)
                if old is None or hint.record.version > old.record.version:
                    moved = Hint(replica, hint.record, hint.stored_ms)
                    held[key] = moved
                    batch.hints.append(moved)
        if not held_for:
            del self._hints[target]
        effects.append(self._persist(batch))

    def _replayed(self, src: str, ack: PushAck, now_ms: int, batch: _Batch) -> None:
        flight = self._flights.get(src)
        if flight is None or flight.xid != ack.xid:
            return  # the end of an anti-entropy exchange, or a replay already timed out
        del self._flights[src]
        held = self._hints.get(src, {})
        for key, version in flight.entries:
            hint = held.get(key)
            if hint is not None and hint.record.version == version:
                del held[key]
                batch.drop_hints.append((src, key, version))
        self.stats.hints_replayed += len(flight.entries)
        self._retry_at.pop(src, None)  # the target is back: the next batch goes at once

    # -- membership: streaming ranges, dropping what moved away ---------------------------

    def _stream_order(self, src: str, order: StreamOrder, now_ms: int,
                      effects: list[ReplicaEffect]) -> None:
        old = self._sources.pop(order.xid, None)
        if old is not None and old.flight is not None:
            self._streams.pop(old.flight, None)  # re-ordered: the old batch is forgotten
        try:
            arcs = Arcs(order.arcs)
        except ValueError as exc:
            effects.append(Send(src, StreamProgress(order.xid, 0, 0, order.after, False,
                                                    str(exc), order.attempt)))
            return
        keys = [(p, k) for k, p in self._held_points() if p > order.after and p in arcs]
        stream = OutboundStream(order.xid, src, order.target, keys)
        stream.cursor, stream.attempt = order.after, order.attempt
        self._sources[order.xid] = stream
        self._send_stream(stream, now_ms, effects)

    def _held_points(self):
        for tree in self._trees.values():
            for entries in tree.all_entries():
                for key in entries:
                    yield key, hash_key(key)
        for key in self._strays:
            yield key, hash_key(key)

    def _send_stream(self, stream: OutboundStream, now_ms: int,
                     effects: list[ReplicaEffect]) -> None:
        """The stream's next batch, or its end (reported to whoever ordered it)."""
        config = self.config
        # With a byte rate, a batch holds about a tenth of a second's worth: one batch of
        # the whole range followed by a long pause would be no throttle at all.
        bound = config.exchange_bytes if not config.stream_rate else \
            max(1, min(config.exchange_bytes, config.stream_rate // 10))
        while True:
            chunk = stream.next_keys(config.stream_batch)
            if not chunk:
                del self._sources[stream.xid]
                effects.append(_progress(stream, done=True))
                return
            found = self.read([key for _, key in chunk])
            records, size, last = [], 0, stream.cursor
            for i, (point, key) in enumerate(chunk):
                record = found.get(key)
                if record is None:
                    last = point  # dropped or not yet durable: nothing to send for it
                    continue
                grown = size + len(key) + len(record.value or b"")
                if records and grown > bound:
                    stream.put_back(len(chunk) - i)
                    break
                records.append(record)
                size, last = grown, point
            if records:
                break
            stream.cursor = max(stream.cursor, last)
        self._next_xid += 1
        stream.flight = self._next_xid
        stream.flight_keys, stream.flight_bytes, stream.flight_cursor = len(records), size, last
        stream.deadline_ms = now_ms + config.exchange_timeout_ms
        self._streams[self._next_xid] = stream
        effects.append(Send(stream.target, Push(self._next_xid, records, Mechanism.STREAM)))

    def _streamed(self, src: str, ack: PushAck, now_ms: int,
                  effects: list[ReplicaEffect]) -> None:
        stream = self._streams.pop(ack.xid)
        if src != stream.target:
            self._streams[ack.xid] = stream  # not the target's to acknowledge
            return
        sent = stream.flight_bytes
        stream.acknowledged()
        self.stats.streamed_keys += stream.flight_keys
        self.stats.streamed_bytes += sent
        rate = self.config.stream_rate
        # Nothing left to send: the end is reported at once, not after the rate's pause.
        stream.next_at_ms = now_ms + (sent * 1000 // rate if rate and not stream.done else 0)
        if stream.next_at_ms > now_ms:
            effects.append(_progress(stream))
        else:
            self._send_stream(stream, now_ms, effects)
            if stream.xid in self._sources:  # not over: say how far it got
                effects.append(_progress(stream))

    def _stream_failed(self, stream: OutboundStream, error: str,
                       effects: list[ReplicaEffect]) -> None:
        if stream.flight is not None:
            self._streams.pop(stream.flight, None)
        self._sources.pop(stream.xid, None)
        effects.append(_progress(stream, error=error))

    def _clean(self, batch: _Batch) -> None:
        """Drop every key no range of ours holds any more (the move they left in is over,
        and nothing placed by an older ring is in flight)."""
        dropped = len(batch.drop)
        for key, version in list(self._strays.items()):
            self._unset(key)
            batch.drop.append((key, version))
        self.stats.dropped += len(batch.drop) - dropped

    # -- anti-entropy --------------------------------------------------------------------

    def _start_exchange(self, now_ms: int, effects: list[ReplicaEffect]) -> None:
        busy = {e.peer for e in self._exchanges.values()}
        for _ in range(len(self._urgent) + len(self._pairs)):
            if self._urgent:
                pair = self._urgent.popleft()
            else:
                pair = self._pairs[self._turn % len(self._pairs)]
                self._turn += 1
            rng, peer = pair
            if peer in busy or rng not in self._trees:
                continue
            self._next_xid += 1
            self._exchanges[self._next_xid] = _Exchange(
                rng, peer, now_ms, now_ms + self.config.exchange_timeout_ms,
                ripe_before=self._ripe_seq + 1)
            effects.append(Send(peer, TreeRequest(self._next_xid, rng,
                                                  list(self._trees[rng].branches))))
            return

    def _tree_request(self, src: str, request: TreeRequest, effects: list[ReplicaEffect]
                      ) -> None:
        tree = self._trees.get(request.range)
        if tree is None:
            return  # not a range of ours (the two rings disagree): the initiator gives up
        branches = differing_branches(tree.branches, request.branches)
        # Our ripe tombstones in equal segments are in the tree the peer sent: it holds them.
        self._confirm(request.range, src, {b * PER_BRANCH + i for b in branches
                                           for i in range(PER_BRANCH)})
        effects.append(Send(src, TreeReply(request.xid,
                                           [(b, tree.branch_leaves(b)) for b in branches])))

    def _tree_reply(self, src: str, reply: TreeReply, now_ms: int,
                    effects: list[ReplicaEffect]) -> None:
        exchange = self._exchanges.get(reply.xid)
        if exchange is None or exchange.stage != "tree" or exchange.peer != src:
            return
        tree = self._trees.get(exchange.range)
        if tree is None:
            del self._exchanges[reply.xid]
            return
        segments = differing_segments(tree, reply.leaves)
        # The peer compared with the tree we sent, so only tombstones that were ripe (and
        # unchanged) when we sent it are confirmed: one that arrived since was not in it.
        self._confirm(exchange.range, src, set(segments), exchange.ripe_before)
        if not segments:
            self.stats.ae_in_sync += 1
            self._finish(reply.xid, now_ms, 0, 0)
            return
        chosen, entries = [], []
        for segment in segments:  # bounded: the keys of as many segments as fit a round
            held = tree.segment(segment)
            if entries and len(entries) + len(held) > self.config.exchange_keys:
                exchange.more = True
                break
            chosen.append(segment)
            entries.extend(held.items())
        exchange.stage = "keys"
        effects.append(Send(src, KeysRequest(reply.xid, exchange.range, chosen, entries)))

    def _keys_request(self, src: str, request: KeysRequest, effects: list[ReplicaEffect]
                      ) -> None:
        tree = self._trees.get(request.range)
        if tree is None:
            return
        theirs = dict(request.entries)
        segments = sorted({s for s in request.segments if 0 <= s < SEGMENTS})
        mine = dict(tree.items(segments))
        newer = [k for k, v in mine.items() if k not in theirs or theirs[k] < v]
        want = [k for k, v in theirs.items() if k not in mine or mine[k] < v]
        for key, version in theirs.items():  # the peer holds exactly these versions
            ripe = self._ripe.get(key)
            if ripe is not None and ripe.version == version:
                self._confirm_key(key, ripe, src)
        effects.append(Send(src, KeysReply(request.xid, self._records(newer),
                                           want[:self.config.exchange_keys])))

    def _keys_reply(self, src: str, reply: KeysReply, now_ms: int, batch: _Batch,
                    effects: list[ReplicaEffect]) -> None:
        exchange = self._exchanges.get(reply.xid)
        if exchange is None or exchange.stage != "keys" or exchange.peer != src:
            return
        got = sum(self._repair(r, Mechanism.ANTI_ENTROPY, now_ms, batch)
                  for r in reply.records)
        sent = self._records(reply.want)
        if sent:
            effects.append(Send(src, Push(reply.xid, sent, Mechanism.ANTI_ENTROPY)))
        if len(reply.records) >= self.config.exchange_keys or len(sent) < len(reply.want):
            exchange.more = True
        self._finish(reply.xid, now_ms, got, len(sent))

    def _records(self, keys: list[str]) -> list[Record]:
        """The stored records of `keys`, as many as one round may carry."""
        keys = keys[:self.config.exchange_keys]
        found = self.read(keys) if keys else {}
        out, size = [], 0
        for key in keys:
            record = found.get(key)
            if record is None:
                continue  # accepted but not yet durable: a later round carries it
            size += len(key) + len(record.value or b"")
            if out and size > self.config.exchange_bytes:
                break
            out.append(record)
        return out

    def _finish(self, xid: int, now_ms: int, keys_in: int, keys_out: int) -> None:
        exchange = self._exchanges.pop(xid)
        self.stats.ae_rounds += 1
        self.stats.last_exchange[exchange.peer] = now_ms
        if keys_in or keys_out:
            self.stats.exchanges[exchange.peer] = {
                "at_ms": now_ms, "range": ",".join(exchange.range), "keys_in": keys_in,
                "keys_out": keys_out, "ms": now_ms - exchange.started_ms}
        if exchange.more or keys_in or keys_out:
            # Differences were found: go again soon rather than in a full period.
            self._urgent.append((exchange.range, exchange.peer))
            if self._next_ae is not None:
                self._next_ae = min(self._next_ae, now_ms)

    def _confirm(self, rng: Range, peer: str, differing: set[int],
                 ripe_before: int | None = None) -> None:
        """`peer` holds what we hold in every segment of `rng` outside `differing` (only
        the tombstones numbered below `ripe_before`, if given, were compared)."""
        waiting = self._waiting.get((rng, peer))
        if not waiting:
            return
        for segment in [s for s in waiting if s not in differing]:
            later = set()
            for key in waiting.pop(segment):
                ripe = self._ripe.get(key)
                if ripe is None or ripe.range != rng:
                    continue  # overwritten or purged since
                if ripe_before is not None and ripe.seq >= ripe_before:
                    later.add(key)
                else:
                    self._confirm_key(key, ripe, peer)
            if later:
                waiting[segment] = later

    def _confirm_key(self, key: str, ripe: _Ripe, peer: str) -> None:
        ripe.missing.discard(peer)
        if not ripe.missing:
            self._ready.add(key)

    def _ripen(self, key: str, rng: Range, segment: int, version: Version) -> None:
        self._ripe_seq += 1
        peers = {p for p in rng if p != self.name}
        self._ripe[key] = _Ripe(rng, segment, version, peers, self._ripe_seq)
        for peer in peers:
            self._waiting.setdefault((rng, peer), {}).setdefault(segment, set()).add(key)
        if not peers:
            self._ready.add(key)

    def _forget_ripe(self, key: str) -> None:
        # Its entries in `_waiting` are skipped when met: finding them costs more.
        if self._ripe.pop(key, None) is not None:
            self._ready.discard(key)

    # -- tombstones ----------------------------------------------------------------------

    def _purge_ripe(self, now_ms: int, effects: list[ReplicaEffect]) -> None:
        """Drop the tombstones past their purge age that every replica is known to hold."""
        if self.topology.pending is not None:
            return  # a range in motion has replicas that can't confirm yet: wait it out
        aging = self._aging
        while aging and now_ms - aging[0][0] >= self.config.purge_after_ms:
            physical, key = heappop(aging)
            version = self._tombs.get(key)
            if version is None or version.physical != physical or key in self._ripe:
                continue  # overwritten or purged since, or met twice
            point = hash_key(key)
            rng = self._range_for(self.ring.preference_list_at(point, self.config.n))
            if rng is not None:  # otherwise not ours to decide: the key's replicas purge it
                self._ripen(key, rng, segment_of(point), version)
        if not self.config.anti_entropy or not self._ready:
            return  # with anti-entropy off nothing confirms: every tombstone is kept
        batch = _Batch()
        told: dict[str, list[tuple[str, Version]]] = {}
        ready, self._ready = self._ready, set()
        for key in ready:
            ripe = self._ripe.get(key)
            if ripe is None or self._tombs.get(key) != ripe.version:
                continue
            self._drop_tombstone(key, ripe.version, batch)
            for peer in ripe.range:
                if peer != self.name:
                    told.setdefault(peer, []).append((key, ripe.version))
        effects.extend(Send(peer, Purge(entries)) for peer, entries in sorted(told.items()))
        if batch:
            effects.append(self._persist(batch))

    def _drop_tombstone(self, key: str, version: Version, batch: _Batch) -> None:
        self._unset(key)
        batch.purge.append((key, version))
        self.stats.purged += 1

    # -- time ----------------------------------------------------------------------------

    def get_timer(self) -> int:
        """When `handle_timer` must next run (0 at first: it starts the periodic work)."""
        due = self._next_purge
        if due is None:
            return 0
        # Called after every frame a node handles: no lists, and most loops are empty.
        if self._next_ae is not None and self._next_ae < due:
            due = self._next_ae
        for exchange in self._exchanges.values():
            if exchange.deadline_ms < due:
                due = exchange.deadline_ms
        for flight in self._flights.values():
            if flight.deadline_ms < due:
                due = flight.deadline_ms
        for stream in self._sources.values():
            at = stream.deadline_ms if stream.flight is not None else stream.next_at_ms
            if at < due:
                due = at
        for target, held in self._hints.items():
            if held and target not in self._flights:
                retry = self._retry_at.get(target, 0)
                if retry < due:
                    due = retry
        return due

    def handle_timer(self, now_ms: int) -> list[ReplicaEffect]:
        """Do whatever has fallen due: purges, replays, exchanges, give-ups."""
        effects: list[ReplicaEffect] = []
        config = self.config
        if self._next_purge is None:  # the first call: start the periodic work
            self._next_purge = now_ms + config.purge_every_ms
            if config.anti_entropy and self._pairs:
                self._next_ae = now_ms + self._ae_gap()
        for xid, exchange in list(self._exchanges.items()):
            if exchange.deadline_ms <= now_ms:
                del self._exchanges[xid]
        for target, flight in list(self._flights.items()):
            if flight.deadline_ms <= now_ms:
                del self._flights[target]
                self._retry_at[target] = now_ms + config.retry_ms
        for stream in list(self._sources.values()):
            if stream.flight is not None:
                if stream.deadline_ms <= now_ms:
                    self._stream_failed(stream, f"{stream.target} did not answer", effects)
            elif stream.next_at_ms <= now_ms:
                self._send_stream(stream, now_ms, effects)
        if now_ms >= self._next_purge:
            self._next_purge = now_ms + config.purge_every_ms
            self._purge_ripe(now_ms, effects)
        for target, held in list(self._hints.items()):
            if held and target not in self._flights and now_ms >= self._retry_at.get(target, 0):
                self._replay(target, now_ms, effects)
        if self._next_ae is not None and now_ms >= self._next_ae:
            self._next_ae = now_ms + self._ae_gap()
            self._start_exchange(now_ms, effects)
        return effects

    def _ae_gap(self) -> int:
        return max(1, self.config.anti_entropy_ms // max(1, len(self._pairs)))

    # -- views ---------------------------------------------------------------------------

    def key_count(self) -> int:
        """Keys held, tombstones included."""
        return sum(len(t) for t in self._trees.values()) + len(self._strays)

    def live_keys(self) -> int:
        """Keys held that are not deleted."""
        return self.key_count() - len(self._tombs)

    def snapshot(self, now_ms: int) -> dict:
        """Counters for `/stats`, `/cluster` and the dashboard."""
        s = self.stats
        return {
            "hints_held": self.hints_held(), "hints_stored": s.hints_stored,
            "hints_replayed": s.hints_replayed, "hints_expired": s.hints_expired,
            "ae_rounds": s.ae_rounds, "ae_in_sync": s.ae_in_sync,
            "repaired": dict(s.repaired), "repair_bytes": s.repair_bytes,
            "superseded": s.superseded, "refused": s.refused, "purged": s.purged,
            "tombstones": len(self._tombs),
            "tombstones_unconfirmed": len(self._ripe) - len(self._ready),
            "ignored": s.ignored, "refused_owner": s.refused_owner,
            "streamed_keys": s.streamed_keys, "streamed_bytes": s.streamed_bytes,
            "streams": len(self._sources), "dropped": s.dropped,
            "strays": len(self._strays), "ring_version": self.topology.version,
            "exchanges": {peer: {**e, "ago_ms": now_ms - e["at_ms"]}
                          for peer, e in sorted(s.exchanges.items())},
            "last_exchange_ago_ms": {peer: now_ms - at
                                     for peer, at in sorted(s.last_exchange.items())},
        }


def _progress(stream: OutboundStream, done: bool = False, error: str = "") -> Send:
    """How far `stream` got, for whoever ordered it."""
    return Send(stream.owner, StreamProgress(stream.xid, stream.keys, stream.bytes,
                                             stream.cursor, done, error, stream.attempt))
