"""The coordinator: quorum reads and writes over a key's preference list.

Every client operation fans out to all N replicas of its key at once:
- a write completes after W acknowledgements;
- a read gathers R replies and takes the newest version among them; every replica that
  answered (or answers late) with an older version or nothing is sent the newest record
  (read repair). When R + W > N the read also waits until the newest version is known to be
  on W replicas before answering (a write-back, as in the ABD register): a value that one
  read returned is then seen by every later read, even if the write that produced it failed
  half-way. The common case, where the R replies agree, costs nothing extra;
- an operation that can no longer reach its quorum fails at once (unavailable); one still
  missing replies at its deadline times out;
- a write is never acknowledged unless it took effect: a replica holding a newer version
  answers `Superseded`, and the coordinator re-stamps the write above that version and
  sends it again (a few times at most);
- a write that a primary replica missed (unreachable, or silent at the deadline) is kept as
  a hint on a fallback node, the next distinct node clockwise past the preference list,
  which hands it over when the primary is back. Hints don't count toward W unless the
  write asked for a sloppy quorum (`sloppy=True`), as in Dynamo;
- nodes the failure detector holds `down` are not asked (`down`): their part of an
  operation fails at once, as if their link were broken, instead of running out the clock;
- during a membership change (`topology.pending`), a key whose replicas change has two
  preference lists, the old and the new. Every operation on it goes to both, and each list
  must meet the quorum on its own (joint quorums, as in Raft's joint consensus): a write
  is on W old and W new replicas, a read hears R of each and writes back to W of each. So
  whichever list a later read uses, it meets every acknowledged write.

The coordinator is sans-IO: it is given replies, failures and timer firings with the
current time, and returns effects (`Send`, `SetTimer`, `Done`) for its driver to perform.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvlab.core.messages import (
    NOT_FOUND,
    OK,
    TIMEOUT,
    UNAVAILABLE,
    CoordinatorEffect,
    Done,
    ErrorReply,
    HintRequest,
    OpKind,
    Outcome,
    ReadReply,
    ReadRequest,
    Reply,
    Send,
    SetTimer,
    Superseded,
    WriteReply,
    WriteRequest,
)
from kvlab.core.record import Record
from kvlab.core.ring import Ring
from kvlab.core.topology import Topology
from kvlab.core.version import MAX_AHEAD_MS, HybridClock

READ, WRITE, INSPECT = OpKind.READ, OpKind.WRITE, OpKind.INSPECT
Effect = CoordinatorEffect

# Re-stamps of one write after `Superseded` answers: more means a replica keeps holding
# versions ahead of this clock, which only a broken clock elsewhere explains.
MAX_RESTAMPS = 3


@dataclass(frozen=True, slots=True)
class Quorum:
    n: int = 3
    r: int = 2
    w: int = 2

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("replicas (N) must be at least 1")
        for name, value in (("read quorum (R)", self.r), ("write quorum (W)", self.w)):
            if not 1 <= value <= self.n:
                raise ValueError(f"{name} must be between 1 and N={self.n}, got {value}")

    @property
    def overlapping(self) -> bool:
        """R + W > N: every read quorum meets every write quorum."""
        return self.r + self.w > self.n


class _Op:
    __slots__ = (
        "id", "kind", "key", "replicas", "need", "record", "answers", "acked", "failed",
        "newest", "holders", "write_back", "repaired", "repairs", "reqs", "outcome",
        "sloppy", "hinted", "hint_reqs", "restamps", "lists", "version",
    )

    def __init__(self, op_id: int, kind: str, key: str, replicas: tuple[str, ...], need: int,
                 record: Record | None) -> None:
        self.id = op_id
        self.kind = kind
        self.key = key
        self.replicas = replicas
        self.need = need
        self.record = record  # what a write stores
        self.answers: dict[str, Record | None] = {}
        self.acked: list[str] = []
        self.failed: dict[str, str] = {}
        self.newest: Record | None = None
        self.holders: set[str] = set()  # replicas known to hold `newest`
        self.write_back = 0  # holders a read needs before answering (0: no write-back)
        self.repaired: dict[str, object] = {}  # node -> version sent to it
        self.repairs: dict[int, object] = {}  # repair request -> version it carries
        self.reqs: list[int] = []  # every request of this op, to forget them on timeout
        self.outcome: Outcome | None = None
        self.sloppy = False  # hints count toward W
        self.hinted: dict[str, str] = {}  # primary -> fallback holding its hint (acked)
        self.hint_reqs: dict[int, str] = {}  # sloppy hint request -> the primary it stands for
        self.restamps = 0
        # During a membership change: the old and the new preference list, each of which
        # must meet the quorum (`replicas` is then their union). None: one list.
        self.lists: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self.version = 0  # the topology version the op was placed by

    @property
    def heard(self) -> int:
        # A replica can both answer and then fail its repair: count it once.
        if not self.failed:
            return len(self.answers) + len(self.acked)
        return len(self.answers.keys() | self.failed.keys()) + len(self.acked)


class Coordinator:
    """Coordinates client operations for one proxy (or simulated coordinator)."""

    def __init__(self, name: str, ring: Ring, quorum: Quorum, timeout_ms: int = 1000,
                 hints: bool = True, max_ahead_ms: int = MAX_AHEAD_MS) -> None:
        self.name = name
        self.topology = Topology(1, ring)
        self.down: frozenset[str] = frozenset()  # set by the failure detector
        self.quorum = quorum
        self.timeout_ms = timeout_ms
        self.hints = hints
        self.clock = HybridClock(name, max_ahead_ms)
        self.hints_sent = 0
        self.restamped = 0
        self.repairs_sent = 0  # records a read sent back to replicas that answered older
        self._ops: dict[int, _Op] = {}
        self._requests: dict[int, tuple[_Op, str]] = {}
        self._next_op = 0
        self._next_req = 0

    @property
    def ring(self) -> Ring:
        """The ring reads are placed by (the old one, during a membership change)."""
        return self.topology.ring

    def in_flight_before(self, version: int) -> bool:
        """Whether an operation placed by a topology older than `version` is still live."""
        return any(op.version < version for op in self._ops.values())

    # -- starting operations ------------------------------------------------------------

    def read(self, key: str, now_ms: int, r: int | None = None, n: int | None = None
             ) -> tuple[int, list[Effect]]:
        n, r = self._check(n, r)
        return self._start(READ, key, now_ms, n, r, None)

    def write(self, key: str, value: bytes | None, now_ms: int, w: int | None = None,
              n: int | None = None, sloppy: bool = False) -> tuple[int, list[Effect]]:
        """Store `value` under `key`; `value=None` writes a tombstone (a delete).

        `sloppy`: hints on fallback nodes count toward W (a sloppy quorum).
        """
        n, w = self._check(n, w, write=True)
        record = Record(key, value, self.clock.tick(now_ms))
        return self._start(WRITE, key, now_ms, n, w, record, sloppy)

    def inspect(self, key: str, now_ms: int) -> tuple[int, list[Effect]]:
        """Ask every replica of `key` for its own copy; repairs nothing."""
        n = self.quorum.n
        return self._start(INSPECT, key, now_ms, n, n, None)

    def _check(self, n: int | None, need: int | None, write: bool = False) -> tuple[int, int]:
        q = self.quorum
        if n is None:  # the common cases: the cluster's own quorum, or an override of R or W
            if need is None:
                return q.n, q.w if write else q.r
            if 1 <= need <= q.n:
                return q.n, need
        n = q.n if n is None else n
        default = q.w if write else q.r
        need = min(default, n) if need is None else need
        Quorum(n, need, need)  # validates the override
        return n, need

    def _start(self, kind: str, key: str, now_ms: int, n: int, need: int,
               record: Record | None, sloppy: bool = False) -> tuple[int, list[Effect]]:
        self._next_op += 1
        topology = self.topology
        replicas = topology.ring.preference_list(key, n)
        lists = None
        if topology.pending is not None and kind != INSPECT:
            moving = topology.pending.preference_list(key, n)
            if moving != replicas:
                lists = (replicas, moving)
                replicas = replicas + tuple(x for x in moving if x not in replicas)
        op = _Op(self._next_op, kind, key, replicas, need, record)
        op.lists = lists
        op.version = topology.version
        op.sloppy = sloppy and self.hints
        if kind == READ and need + self.quorum.w > n:
            op.write_back = min(self.quorum.w, min(len(x) for x in lists) if lists
                                else len(replicas))
        effects: list[Effect] = []
        if len(replicas) < need:
            # The ring holds fewer nodes than the quorum needs: fail now, ask nobody.
            self._finish(op, UNAVAILABLE, effects)
            return op.id, effects
        self._ops[op.id] = op
        self._send_all(op, effects, now_ms)
        effects.append(SetTimer(op.id, now_ms + self.timeout_ms))
        return op.id, effects

    def _send_all(self, op: _Op, effects: list[Effect], now_ms: int) -> None:
        record = op.record
        down = self.down
        skipped = []
        for node in op.replicas:
            self._next_req += 1
            self._requests[self._next_req] = (op, node)
            op.reqs.append(self._next_req)
            if down and node in down:
                skipped.append((node, self._next_req))
                continue
            request = (WriteRequest(self._next_req, record) if record is not None
                       else ReadRequest(self._next_req, op.key, op.version))
            effects.append(Send(node, request))
        for node, req in skipped:  # after the others are asked: this may settle the op
            effects.extend(self.unreachable(node, req, "down", now_ms))

    # -- events from the driver ---------------------------------------------------------

    def receive(self, node: str, reply: Reply, now_ms: int) -> list[Effect]:
        """A replica's reply arrived."""
        entry = self._requests.pop(reply.req, None)
        if entry is None:
            return []  # a reply after the deadline
        op, expected = entry
        if node != expected:
            raise ValueError(f"reply {reply.req} came from {node}, was sent to {expected}")
        effects: list[Effect] = []
        if op.hint_reqs:
            target = op.hint_reqs.pop(reply.req, None)
            if target is not None:
                self._hint_answered(op, target, node, reply, now_ms, effects)
                self._retire_if_heard(op)
                return effects
        repaired = op.repairs.pop(reply.req, None)
        if repaired is not None:
            if isinstance(reply, ErrorReply):
                self._repair_failed(op, node, reply.error, effects)
            elif op.newest is not None and (repaired == op.newest.version
                                            or isinstance(reply, Superseded)):
                # A replica answering Superseded holds something newer still: every later
                # read that asks it sees at least `newest`, which is all a write-back wants.
                op.holders.add(node)
                self._finish_read_if_ready(op, effects)
        elif isinstance(reply, ErrorReply):
            self._fail(op, node, reply.error, effects)
        elif isinstance(reply, WriteReply):
            op.acked.append(node)
            # One list (nearly always): counted inline, this is every write's path.
            if op.outcome is None and (
                    len(op.acked) + (len(op.hinted) if op.sloppy else 0) >= op.need
                    if op.lists is None else self._written(op)):
                self._finish(op, OK, effects)
        elif isinstance(reply, ReadReply):
            self._answer(op, node, reply.record, now_ms, effects)
        elif isinstance(reply, Superseded):
            self._superseded(op, node, reply.version, now_ms, effects)
        self._retire_if_heard(op)
        return effects

    def unreachable(self, node: str, req: int, reason: str, now_ms: int) -> list[Effect]:
        """The request `req` to `node` could not be delivered, or its link broke."""
        entry = self._requests.pop(req, None)
        if entry is None:
            return []
        op, _ = entry
        effects: list[Effect] = []
        target = op.hint_reqs.pop(req, None) if op.hint_reqs else None
        if target is not None:
            self._hint_answered(op, target, node, ErrorReply(req, reason), now_ms, effects)
        elif op.repairs.pop(req, None) is None:
            if op.kind == WRITE and node not in op.acked:
                op.failed[node] = reason  # first, so that it is no fallback for itself
                self._hint(op, node, effects)
            self._fail(op, node, reason, effects)
        else:
            self._repair_failed(op, node, reason, effects)
        self._retire_if_heard(op)
        return effects

    def timeout(self, op_id: int, now_ms: int) -> list[Effect]:
        """The operation's deadline passed: give up on replicas still silent."""
        op = self._ops.pop(op_id, None)
        if op is None:
            return []
        effects: list[Effect] = []
        silent = [n for n in op.replicas
                  if n not in op.answers and n not in op.failed and n not in op.acked]
        for req in op.reqs:
            self._requests.pop(req, None)
        if op.kind == WRITE:
            # Silent primaries get a hint. These ones can't count toward W any more (the
            # answer is being decided now), so nobody waits for their acknowledgement.
            op.sloppy = False
            for node in silent:
                self._hint(op, node, effects)
        if op.outcome is None:
            if op.kind == INSPECT:
                for node in silent:
                    op.failed[node] = "timeout"
                self._finish(op, OK, effects)
            else:
                waiting = silent or (op.kind == READ and len(op.answers) >= op.need)
                self._finish(op, TIMEOUT if waiting else UNAVAILABLE, effects)
        return effects

    def pending_ops(self) -> int:
        return len(self._ops)

    # -- superseded writes and hints ----------------------------------------------------

    def _superseded(self, op: _Op, node: str, version: object, now_ms: int,
                    effects: list[Effect]) -> None:
        """`node` holds a newer version than the write: stamp the write above it, resend."""
        assert op.record is not None
        self.clock.observe(version, now_ms)  # type: ignore[arg-type]
        if op.outcome is not None:
            # Already acknowledged by W replicas, so no acknowledged write held that newer
            # version (it would be on one of them): it may rightly order after this one.
            return
        if op.restamps >= MAX_RESTAMPS:
            self._fail(op, node, f"superseded by {version}", effects)
            return
        op.restamps += 1
        self.restamped += 1
        for req in op.reqs:  # answers about the old stamp no longer count
            self._requests.pop(req, None)
        op.reqs.clear()
        op.acked.clear()
        op.failed.clear()
        op.hinted.clear()
        op.hint_reqs.clear()
        op.record = Record(op.key, op.record.value, self.clock.tick(now_ms))
        self._send_all(op, effects, now_ms)

    def _hint(self, op: _Op, target: str, effects: list[Effect]) -> None:
        """Ask the next free fallback node to keep `op`'s record for `target`."""
        if not self.hints or op.record is None or target in op.hinted:
            return
        # A sloppy quorum's hints stand in for distinct primaries, so each needs a fallback
        # of its own; strict hints may share one (the first past the list, as a rule).
        avoid = set(op.failed)
        avoid.update(self.down)
        avoid.update(op.replicas)
        if op.sloppy:
            avoid.update(op.hinted.values())
            avoid.update(self._requests[r][1] for r in op.hint_reqs if r in self._requests)
        ring = self.ring
        for fallback in ring.preference_list(op.key, len(ring.nodes)):
            if fallback in avoid:
                continue
            self._next_req += 1
            self.hints_sent += 1
            if op.id in self._ops:
                # Followed while the op lives: a fallback that fails passes the hint on to
                # the next one, and a sloppy write counts its acknowledgement toward W.
                # Hints sent at the deadline go unwatched: nobody waits for them any more.
                self._requests[self._next_req] = (op, fallback)
                op.hint_reqs[self._next_req] = target
                op.reqs.append(self._next_req)
            effects.append(Send(fallback, HintRequest(self._next_req, op.record, target)))
            return

    def _hint_answered(self, op: _Op, target: str, fallback: str, reply: Reply, now_ms: int,
                       effects: list[Effect]) -> None:
        if isinstance(reply, WriteReply):
            op.hinted[target] = fallback
            if op.sloppy and op.outcome is None and self._written(op):
                self._finish(op, OK, effects)
            return
        op.failed.setdefault(fallback, "fallback: " + getattr(reply, "error", "failed"))
        self._hint(op, target, effects)  # the next fallback, if any
        if op.outcome is None and op.sloppy:
            self._fail_if_hopeless(op, effects)

    # -- internals ----------------------------------------------------------------------

    def _answer(self, op: _Op, node: str, record: Record | None, now_ms: int,
                effects: list[Effect]) -> None:
        op.answers[node] = record
        if record is not None:
            self.clock.observe(record.version, now_ms)
            if op.newest is None or record.version > op.newest.version:
                op.newest = record
                op.holders = {node}
            elif record.version == op.newest.version:
                op.holders.add(node)
        if op.kind == INSPECT:
            if op.outcome is None and len(op.answers) + len(op.failed) == len(op.replicas):
                self._finish(op, OK, effects)
            return
        if len(op.answers) >= op.need and (op.lists is None or self._met(op, op.answers)):
            self._repair(op, effects)
            self._finish_read_if_ready(op, effects)

    def _finish_read_if_ready(self, op: _Op, effects: list[Effect]) -> None:
        if op.outcome is not None or len(op.answers) < op.need:
            return
        if op.lists is not None and not self._met(op, op.answers):
            return
        newest = op.newest
        if newest is None:
            self._finish(op, NOT_FOUND, effects)
        elif len(op.holders) >= op.write_back and (
                op.lists is None or self._met(op, op.holders, op.write_back)):
            self._finish(op, NOT_FOUND if newest.tombstone else OK, effects)

    # -- quorums, over one list or two ---------------------------------------------------

    def _written(self, op: _Op) -> bool:
        """Enough replicas hold the write (in each list, during a membership change)."""
        if op.lists is None:
            return len(op.acked) + (len(op.hinted) if op.sloppy else 0) >= op.need
        holding = set(op.acked)
        if op.sloppy:
            holding.update(op.hinted)  # a hint stands in for the primary it was kept for
        return self._met(op, holding)

    @staticmethod
    def _met(op: _Op, nodes, need: int | None = None) -> bool:
        """Whether `nodes` include `need` (the op's own, by default) of each list."""
        assert op.lists is not None
        need = op.need if need is None else need
        return all(sum(1 for n in listed if n in nodes) >= min(need, len(listed))
                   for listed in op.lists)

    def _repair(self, op: _Op, effects: list[Effect]) -> None:
        """Send the newest record to every replica that answered with less."""
        newest = op.newest
        if newest is None:
            return
        for node, had in op.answers.items():
            if (had is None or had.version < newest.version) and \
                    op.repaired.get(node) != newest.version:
                op.repaired[node] = newest.version
                self.repairs_sent += 1
                self._next_req += 1
                self._requests[self._next_req] = (op, node)
                op.repairs[self._next_req] = newest.version
                op.reqs.append(self._next_req)
                effects.append(Send(node, WriteRequest(self._next_req, newest, repair=True)))

    def _fail(self, op: _Op, node: str, reason: str, effects: list[Effect]) -> None:
        op.failed[node] = reason
        if op.outcome is not None:
            return
        if op.kind == INSPECT:
            if len(op.answers) + len(op.failed) == len(op.replicas):
                self._finish(op, OK, effects)
        else:
            self._fail_if_hopeless(op, effects)

    def _fail_if_hopeless(self, op: _Op, effects: list[Effect]) -> None:
        # Too few replicas left to answer, or to hold the value a read would return. In a
        # sloppy write, a hint still on its way may yet make up the difference.
        extra = len(op.hinted) + len(op.hint_reqs) if op.sloppy else 0
        need = max(op.need, op.write_back)
        for listed in op.lists or (op.replicas,):
            left = sum(1 for n in listed if n not in op.failed) + extra
            if left < min(need, len(listed)):
                self._finish(op, UNAVAILABLE, effects)
                return

    def _repair_failed(self, op: _Op, node: str, reason: str, effects: list[Effect]) -> None:
        """A repair could not be delivered: the node answered, but it won't hold `newest`."""
        op.failed.setdefault(node, f"repair: {reason}")
        if op.outcome is None and any(
                sum(1 for n in listed if n not in op.failed) < min(op.write_back, len(listed))
                for listed in op.lists or (op.replicas,)):
            self._finish(op, UNAVAILABLE, effects)

    def _finish(self, op: _Op, status: str, effects: list[Effect]) -> None:
        record = op.record if op.kind == WRITE else op.newest
        op.outcome = Outcome(
            op=op.id, kind=op.kind, key=op.key, status=status, record=record,
            replicas=op.replicas,
            acked=tuple(op.acked) if op.kind == WRITE else tuple(op.answers),
            needed=op.need,
            failed=dict(op.failed),
            answers=dict(op.answers) if op.kind == INSPECT else {},
            hinted=dict(op.hinted),
        )
        effects.append(Done(op.outcome))

    def _retire_if_heard(self, op: _Op) -> None:
        # Every replica has spoken, every repair is acknowledged, the outcome is out: nothing
        # left to wait for. Otherwise the op's timer cleans up.
        if op.outcome is not None and not op.repairs and not op.hint_reqs and \
                op.heard >= len(op.replicas):
            self._ops.pop(op.id, None)
