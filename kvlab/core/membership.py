"""The committer: membership changes carried out in steps, and the failure detector.

One `Membership` runs beside the coordinator(s) it serves. It owns the topology (which
ring is in force, `kvlab.core.topology`) and changes it only in these steps, as Cassandra
bootstraps and decommissions a node:

1. *Plan* the change (`kvlab.core.plan`): which arcs of the ring change replicas, each
   to be streamed from a current replica (the one leaving it, so that it carries what only
   it might hold) to the node joining it.
2. *Join the write set*: the next version has the new ring as `pending`; every node is
   told, and from then on each write goes to old and new replicas alike (joint quorums).
3. *Drain*: wait until no operation placed by an older version is still in flight. A write
   placed before step 2 could still land on a source after it streamed that key.
4. *Stream* every moving arc (`StreamOrder`; progress comes back as `StreamProgress`). A
   stream that stops is ordered again from where it got to; one whose source is down is
   taken over by the arc's other current replicas, together: every write acknowledged by
   W of the arc's replicas is on the source or on one of them. If one of those is down
   too, its part waits for it: the rest alone may lack a write only it and the source
   took (a replacement with two replicas of a range down waits for one to return).
5. *Move reads*: once every arc has arrived, the next version has the new ring alone.
6. *Drain* again, then publish the same ring marked `clean`: every node drops what it no
   longer owns.

The failure detector (`kvlab.core.detector`) pings every node each `heartbeat_ms` on the
replica channels; each `Pong` is a heartbeat. Nodes it holds `down` are given to the
coordinators, which stop asking them (fail fast) until heartbeats return.

Sans-IO like the rest of the core: `receive`, `handle_timer`, `connected` and the change
requests take `now` and return effects (`Send`) for the driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from kvlab.core.coordinator import Coordinator
from kvlab.core.detector import FailureDetector, Health
from kvlab.core.messages import (
    Ping,
    Pong,
    Report,
    RingUpdate,
    Send,
    StreamOrder,
    StreamProgress,
)
from kvlab.core.plan import Plan, plan
from kvlab.core.ring import Ring
from kvlab.core.stream import Arcs
from kvlab.core.topology import Topology


class MembershipError(ValueError):
    """A change that can't be made now (another in progress, a bad name, too few nodes)."""


class BadName(MembershipError):
    """A node name that can never be used (the request is wrong, not the moment)."""


# A node joining over the API is named as kvlab names its nodes, n1, n2, ...: names show in
# logs, status lines, URLs and folder names, and the supervisor numbers the next node after
# the ones it knows.
NODE_NAME = re.compile(r"n[1-9][0-9]{0,5}")


class Phase(StrEnum):
    JOINING = "joining"  # new owners are in the write set; waiting for older ops to end
    STREAMING = "streaming"
    SETTLING = "settling"  # reads moved; waiting for older ops to end before cleanup
    DONE = "done"
    ABORTED = "aborted"  # given up before reads moved: the old ring is in force again


@dataclass
class Transfer:
    """One stream: `arcs` of the ring from `source` to `target`."""

    xid: int
    source: str
    target: str
    arcs: list[tuple[int, int]]
    share: float  # of the key space
    # arc -> the other current replicas of it (who take over if the source is down)
    others: dict[tuple[int, int], tuple[str, ...]] = field(default_factory=dict)
    keys: int = 0
    bytes: int = 0
    cursor: int = -1
    done: bool = False
    ordered_ms: int | None = None  # when last ordered; None: not yet
    heard_ms: int = 0
    attempts: int = 0
    error: str = ""
    retry_ms: int = 0  # not re-ordered before
    covering: str | None = None  # the down source whose part it streams, with the others


@dataclass
class Change:
    """A membership change and how far it got."""

    kind: str  # "add", "remove", "replace", or "resume" (one a restarted committer found)
    node: str  # the node joining (add, replace) or leaving (remove)
    old: Ring
    new: Ring
    plan: Plan
    started_ms: int
    replaced: str | None = None  # replace: the node whose place `node` takes
    phase: Phase = Phase.JOINING
    transfers: dict[int, Transfer] = field(default_factory=dict)
    finished_ms: int | None = None
    streamed_ms: int | None = None  # when the last arc arrived
    # what streams taken over from a down source had carried before
    carried: tuple[int, int] = (0, 0)

    @property
    def leaving(self) -> tuple[str, ...]:
        return tuple(n for n in self.old.nodes if n not in self.new.nodes)

    def view(self, now_ms: int) -> dict:
        """What `/cluster` and the CLI show of it."""
        keys = self.carried[0] + sum(t.keys for t in self.transfers.values())
        size = self.carried[1] + sum(t.bytes for t in self.transfers.values())
        moved = sum(t.share * (1.0 if t.done else Arcs(t.arcs).covered(t.cursor))
                    for t in self.transfers.values())
        total = sum(t.share for t in self.transfers.values())
        end = self.finished_ms if self.finished_ms is not None else now_ms
        elapsed = max(1, end - self.started_ms)
        fraction = moved / total if total else (1.0 if self.phase != Phase.JOINING else 0.0)
        return {
            "kind": self.kind, "node": self.node, "replaced": self.replaced,
            "phase": str(self.phase), "nodes_before": list(self.old.nodes),
            "nodes_after": list(self.new.nodes), "started_ms": self.started_ms,
            "elapsed_ms": elapsed, "streams": len(self.transfers),
            "streams_done": sum(t.done for t in self.transfers.values()),
            "keys": keys, "bytes": size, "fraction": fraction,
            "rate_bytes_s": size * 1000 // elapsed,
            "eta_ms": (None if not 0 < fraction < 1 else
                       round(elapsed * (1 - fraction) / fraction)),
            "moving": [{"source": t.source, "target": t.target, "arcs": t.arcs,
                        "share": t.share, "keys": t.keys, "bytes": t.bytes, "done": t.done,
                        "error": t.error} for t in self.transfers.values()],
        }


class Membership:
    """The cluster's topology and its changes, and which nodes are believed alive."""

    def __init__(self, coordinator: Coordinator, *, heartbeat_ms: int = 100,
                 suspect_phi: float = 3.0, down_phi: float = 8.0,
                 stream_timeout_ms: int = 10_000, retry_ms: int = 1_000,
                 handoff_ms: int = 30_000) -> None:
        self.coordinators = [coordinator]
        self.topology = coordinator.topology
        self.n = coordinator.quorum.n
        self.detector = FailureDetector(heartbeat_ms, suspect_phi, down_phi)
        self.heartbeat_ms = heartbeat_ms
        self.stream_timeout_ms = stream_timeout_ms
        self.retry_ms = retry_ms
        self.handoff_ms = handoff_ms
        self.addresses: dict[str, str] = {}  # node -> where it listens (for the nodes)
        self.change: Change | None = None  # in progress
        self.last: Change | None = None  # the last one finished
        self.ring_versions: dict[str, int] = {}  # node -> the version it last reported
        self.hints_held: dict[str, int] = {}  # node -> hints it keeps for others, last said
        self._next_tick: int | None = None
        self._unclean = False  # a settled ring restored, whose clean version is still due
        self._seq = 0
        self._xid = 0

    # -- coordinators and nodes ---------------------------------------------------------

    def attach(self, coordinator: Coordinator) -> None:
        """Another coordinator placing keys by this membership (a restarted one, say)."""
        coordinator.topology = self.topology
        coordinator.down = self.coordinators[0].down if self.coordinators else frozenset()
        self.coordinators.append(coordinator)

    def detach(self, coordinator: Coordinator) -> None:
        self.coordinators.remove(coordinator)

    @property
    def watched(self) -> tuple[str, ...]:
        """Every node of the topology, and a node leaving it until the change is over."""
        nodes = self.topology.members
        if self.change is not None:
            nodes += tuple(n for n in self.change.old.nodes if n not in nodes)
        return nodes

    def connected(self, node: str, now_ms: int) -> list[Send]:
        """A channel to `node` opened: tell it the membership first, and ping it at once
        (a node back from a restart is then taken back within a round trip, rather than
        at the heartbeat after next)."""
        if node not in self.watched:
            return []
        return [Send(node, self.topology.update(self.addresses)), Send(node, Ping(self._seq))]

    def health(self, node: str, now_ms: int) -> Health:
        """`down` exactly while the coordinators hold it down (the verdict is applied on
        each heartbeat tick, and undone by its first Pong); else up or suspect by phi."""
        if node in self.down:
            return Health.DOWN
        return Health.UP if self.detector.health(node, now_ms) == Health.UP \
            else Health.SUSPECT

    @property
    def down(self) -> frozenset[str]:
        """The nodes the coordinators do not ask."""
        return self.coordinators[0].down if self.coordinators else frozenset()

    def view(self, now_ms: int) -> dict:
        """Per node: its health, suspicion and the ring version it holds; the change."""
        detector = self.detector
        ring = self.topology.ring
        return {
            "version": self.topology.version,
            # The ring reads are placed by, whole: a replacement's tokens are its seat's,
            # which its name alone does not tell (the dashboard draws the ring from this).
            "ring": {"nodes": list(ring.nodes), "vnodes": ring.vnodes,
                     "seats": [list(seat) for seat in ring.seats]},
            "pending": None if self.topology.pending is None
            else list(self.topology.pending.nodes),
            "nodes": {n: {"health": str(self.health(n, now_ms)),
                          "phi": round(detector.phi(n, now_ms), 2),
                          "silent_ms": detector.silent_ms(n, now_ms),
                          "ring_version": self.ring_versions.get(n)}
                      for n in self.watched},
            "change": None if self.change is None else self.change.view(now_ms),
            "last_change": None if self.last is None else self.last.view(now_ms),
            "detector": {"heartbeat_ms": detector.interval_ms,
                         "suspect_phi": detector.suspect_phi, "down_phi": detector.down_phi,
                         "suspect_after_ms": round(detector.time_to(detector.suspect_phi)),
                         "down_after_ms": round(detector.time_to(detector.down_phi))},
        }

    def restore(self, topology: Topology, now_ms: int) -> list[Send]:
        """Start from the topology a previous run of this committer published (kept by
        its driver). A move it was in the middle of starts over from its plan: streams
        are idempotent, and nothing was dropped before the move was over."""
        if topology.version <= self.topology.version:
            return []
        if topology.pending is None:
            # Settled; if not yet clean, the clean version follows after a drain.
            self._unclean = not topology.clean
            return self._publish(topology)
        self.topology = Topology(topology.version - 1, topology.ring)
        old, new = topology.ring, topology.pending
        joining = [n for n in new.nodes if n not in old.nodes]
        leaving = [n for n in old.nodes if n not in new.nodes]
        # A replacement sits on the seat of the node it replaces: that one is dead, most
        # likely, and never asked to stream (as when the replace began).
        seats_old, seats_new = dict(old.seats), dict(new.seats)
        replaced = leaving[0] if len(joining) == len(leaving) == 1 and \
            seats_new.get(joining[0]) == seats_old.get(leaving[0], leaving[0]) else None
        return self._begin("resume", ",".join(joining) or "-", new, now_ms,
                           replaced=replaced)

    # -- changes ------------------------------------------------------------------------

    def add(self, node: str, now_ms: int, address: str = "") -> list[Send]:
        ring = self.topology.ring
        self._idle()
        _check_name(node, ring)
        if node in ring.nodes:
            raise MembershipError(f"node {node} is already in the ring")
        return self._begin("add", node, ring.with_node(node), now_ms, address=address)

    def remove(self, node: str, now_ms: int) -> list[Send]:
        ring = self.topology.ring
        self._idle()
        if node not in ring.nodes:
            raise MembershipError(f"no node {node} in the ring")
        if len(ring.nodes) - 1 < self.n:
            raise MembershipError(f"removing {node} would leave {len(ring.nodes) - 1} "
                                  f"nodes, fewer than N={self.n} replicas")
        return self._begin("remove", node, ring.without_node(node), now_ms)

    def replace(self, old: str, new: str, now_ms: int, address: str = "") -> list[Send]:
        """`new`, empty, takes `old`'s place and ranges (`old` is dead or leaving)."""
        ring = self.topology.ring
        self._idle()
        _check_name(new, ring)
        if old not in ring.nodes:
            raise MembershipError(f"no node {old} in the ring")
        if new in ring.nodes:
            raise MembershipError(f"node {new} is already in the ring")
        return self._begin("replace", new, ring.replacing(old, new), now_ms, address=address,
                           replaced=old)

    def abort(self, now_ms: int) -> list[Send]:
        """Give up the change in progress while reads are still on the old ring (a joining
        node that never came up, say): the next version has the old ring alone. Safe:
        every write acknowledged meanwhile is on W of the old replicas too. Once reads
        have moved, there is nothing to abort: the change only has its cleanup left."""
        change = self.change
        if change is None:
            raise MembershipError("no change is in progress")
        if change.phase not in (Phase.JOINING, Phase.STREAMING):
            raise MembershipError(f"the change is {change.phase}: reads have moved to the "
                                  f"new ring already, and it is about to end")
        change.phase = Phase.ABORTED
        change.finished_ms = now_ms
        self.change, self.last = None, change
        effects = self._publish(Topology(self.topology.version + 1, change.old))
        for node in change.new.nodes:
            if node not in change.old.nodes:
                self.detector.forget(node)
                self.ring_versions.pop(node, None)
                self.hints_held.pop(node, None)
        # The joining node is sent the old ring too, though no longer watched: it then
        # stops taking writes for ranges it will not own.
        update = self.topology.update(self.addresses)
        effects.extend(Send(n, update) for n in change.new.nodes if n not in self.watched)
        self._forget_addresses()
        return effects

    def _forget_addresses(self) -> None:
        """Nodes out of the cluster have no address any more: another may take it."""
        for node in [n for n in self.addresses if n not in self.watched]:
            del self.addresses[node]

    def _idle(self) -> None:
        if self.change is not None:
            raise MembershipError(f"a change is in progress ({self.change.kind} "
                                  f"{self.change.node}, {self.change.phase}): wait for it")

    def _begin(self, kind: str, node: str, new: Ring, now_ms: int, address: str = "",
               replaced: str | None = None) -> list[Send]:
        old = self.topology.ring
        if address:
            self.addresses[node] = address
        change = Change(kind, node, old, new, plan(old, new, self.n), now_ms, replaced)
        self._plan_transfers(change, now_ms)
        self.change = change
        self.detector.watch(node, now_ms)
        return self._publish(self.topology.moved(new))

    def _plan_transfers(self, change: Change, now_ms: int) -> None:
        groups: dict[tuple[str, str], Transfer] = {}
        for move in change.plan.moves:
            inside = (move.start + 1) % (1 << 64)
            was = change.old.preference_list_at(inside, self.n)
            now = change.new.preference_list_at(inside, self.n)
            others = tuple(x for x in was if x in now and x != move.source)
            transfer = groups.get((move.source, move.target))
            if transfer is None:
                self._xid += 1
                transfer = groups[(move.source, move.target)] = Transfer(
                    self._xid, move.source, move.target, [], 0.0)
            arc = (move.start, move.end)
            transfer.arcs.append(arc)
            transfer.share += move.fraction
            transfer.others[arc] = others
        change.transfers = {t.xid: t for t in groups.values()}
        if change.replaced is not None:  # the replaced node is dead: never ask it
            for transfer in list(change.transfers.values()):
                if transfer.source == change.replaced:
                    self._take_over(change, transfer, now_ms)

    def _take_over(self, change: Change, transfer: Transfer, now_ms: int) -> None:
        """`transfer`'s source can't be used: each arc's other replicas stream it instead,
        from where it got to (what it sent is on the target already)."""
        del change.transfers[transfer.xid]
        change.carried = (change.carried[0] + transfer.keys, change.carried[1] + transfer.bytes)
        transfer.keys = transfer.bytes = 0
        groups: dict[str, Transfer] = {}
        for arc in transfer.arcs:
            for other in transfer.others.get(arc, ()):
                t = groups.get(other)
                if t is None:
                    self._xid += 1
                    t = groups[other] = Transfer(self._xid, other, transfer.target, [], 0.0,
                                                 cursor=transfer.cursor,
                                                 covering=transfer.source)
                t.arcs.append(arc)
        # Shares are the arcs', counted once across the replicas that take them over.
        for t in groups.values():
            t.share = transfer.share / max(1, len(groups))
        if not groups:  # no other replica holds these arcs (N=1): nothing can be streamed
            transfer.error = f"{transfer.source} is down and no other replica holds its ranges"
            transfer.retry_ms = now_ms + self.retry_ms
            change.transfers[transfer.xid] = transfer
            return
        for t in groups.values():
            change.transfers[t.xid] = t

    def _publish(self, topology: Topology) -> list[Send]:
        self.topology = topology
        for coordinator in self.coordinators:
            coordinator.topology = topology
        update = topology.update(self.addresses)
        return [Send(node, update) for node in self.watched]

    # -- events -------------------------------------------------------------------------

    def receive(self, node: str, report: Report, now_ms: int) -> list[Send]:
        match report:
            case Pong():
                self.detector.heartbeat(node, now_ms)
                for coordinator in self.coordinators:  # heard: one heartbeat makes it up
                    if node in coordinator.down:
                        coordinator.down = coordinator.down - {node}
                self.ring_versions[node] = report.ring_version
                self.hints_held[node] = report.hints
                if report.ring_version == 0 and self.change is not None:
                    self._refill(self.change, node)
                if report.ring_version != self.topology.version and node in self.watched:
                    # Older: it missed an update (lost, cut off by a partition, or it
                    # restarted from an older one it kept), and this brings it up to date.
                    # Newer: this committer restarted without its state; the node answers
                    # an older update with its own, which `restore` goes on from.
                    return [Send(node, self.topology.update(self.addresses))]
                return []
            case StreamProgress():
                return self._progress(node, report, now_ms)
            case RingUpdate():
                if report.version <= self.topology.version:
                    return []
                try:
                    topology = Topology.of(report)
                except ValueError:
                    return []  # no ring at all: nothing to learn from it
                for name, address in report.addresses.items():
                    self.addresses.setdefault(name, address)
                return self.restore(topology, now_ms)

    def _refill(self, change: Change, node: str) -> None:
        """`node` came back knowing no ring at all: its store is empty (wiped, or a new
        disk). What was streamed to it is gone, so its streams start over, done or not."""
        for transfer in change.transfers.values():
            if transfer.target == node and (transfer.done or transfer.cursor >= 0):
                transfer.done, transfer.cursor, transfer.ordered_ms = False, -1, None
                transfer.attempts += 1  # what the running order still reports is void
                transfer.error = f"{node} lost its data: streaming again from the start"

    def _progress(self, node: str, report: StreamProgress, now_ms: int) -> list[Send]:
        change = self.change
        transfer = None if change is None else change.transfers.get(report.xid)
        if transfer is None or transfer.source != node or transfer.done \
                or report.attempt != transfer.attempts:
            return []  # an order of an earlier change, one taken over, or given up on
        transfer.heard_ms = now_ms
        transfer.keys = max(transfer.keys, report.keys)
        transfer.bytes = max(transfer.bytes, report.bytes)
        transfer.cursor = max(transfer.cursor, report.cursor)
        if report.error:
            transfer.error = report.error
            transfer.ordered_ms = None  # ordered again after a while, from the cursor
            transfer.retry_ms = now_ms + self.retry_ms
        elif report.done:
            transfer.done = True
            transfer.error = ""
        return []

    def get_timer(self) -> int:
        return 0 if self._next_tick is None else self._next_tick

    def handle_timer(self, now_ms: int) -> list[Send]:
        """Heartbeats, the detector's verdicts, and the next step of a change."""
        if self._next_tick is not None and now_ms < self._next_tick:
            return []
        if self._next_tick is None:
            for node in self.watched:
                self.detector.watch(node, now_ms)
        self._next_tick = now_ms + self.heartbeat_ms
        effects: list[Send] = []
        self._seq += 1
        ping = Ping(self._seq)
        effects.extend(Send(node, ping) for node in self.watched)
        down = frozenset(n for n in self.watched
                         if self.detector.health(n, now_ms) == Health.DOWN)
        for coordinator in self.coordinators:
            coordinator.down = down
        if self.change is not None:
            self._step(self.change, down, now_ms, effects)
        elif self._unclean and self._drained():
            self._unclean = False
            effects.extend(self._publish(self.topology.cleaned()))
        return effects

    def _handing_over(self, change: Change, down: frozenset[str], now_ms: int) -> bool:
        """Whether a leaving node still hands over hints it keeps (a sloppy write may live
        only there), up to `handoff_ms` after its ranges arrived. Reads move only then:
        until they do it is in the ring, and its targets take what it replays; once the
        change is over it is stopped. One held down, or past the deadline, is not waited
        for."""
        assert change.streamed_ms is not None
        if now_ms - change.streamed_ms > self.handoff_ms:
            return False
        return any(self.hints_held.get(node, 0) for node in change.leaving
                   if node not in down)

    def _drained(self) -> bool:
        version = self.topology.version
        return not any(c.in_flight_before(version) for c in self.coordinators)

    def _step(self, change: Change, down: frozenset[str], now_ms: int,
              effects: list[Send]) -> None:
        if change.phase == Phase.JOINING and self._drained():
            change.phase = Phase.STREAMING
        if change.phase == Phase.STREAMING:
            self._stream(change, down, now_ms, effects)
            if all(t.done for t in change.transfers.values()):
                if change.streamed_ms is None:
                    change.streamed_ms = now_ms
                if not self._handing_over(change, down, now_ms):
                    change.phase = Phase.SETTLING
                    effects.extend(self._publish(self.topology.settled()))
        if change.phase == Phase.SETTLING and self._drained():
            # A version of its own, rather than a message: a node that misses it gets it
            # on its next heartbeat, as any update, and one that restarts keeps it.
            effects.extend(self._publish(self.topology.cleaned()))
            change.phase = Phase.DONE
            change.finished_ms = now_ms
            self.change, self.last = None, change
            for node in change.leaving:
                if node not in self.topology.members:
                    self.detector.forget(node)
                    self.ring_versions.pop(node, None)
                    self.hints_held.pop(node, None)
            self._forget_addresses()

    def _stream(self, change: Change, down: frozenset[str], now_ms: int,
                effects: list[Send]) -> None:
        for transfer in list(change.transfers.values()):
            if transfer.done:
                continue
            if transfer.source in down:
                if transfer.covering is None:
                    self._take_over(change, transfer, now_ms)
                else:
                    # Only all the other replicas together are sure to hold every write
                    # acknowledged with the first source: one of them alone may lack a
                    # write only it and that source took. So its part waits for it.
                    transfer.error = (f"{transfer.source} is down too: its part of "
                                      f"{transfer.covering}'s ranges waits for it")
                    transfer.ordered_ms = None  # ordered again as soon as it is back
                continue
            stalled = (transfer.ordered_ms is not None
                       and now_ms - max(transfer.heard_ms, transfer.ordered_ms)
                       > self.stream_timeout_ms)
            if stalled:
                transfer.error = f"no progress from {transfer.source} in " \
                                 f"{self.stream_timeout_ms} ms"
                transfer.ordered_ms = None
            # Ordered only once the source has said (in a Pong) that it holds this
            # version: then it has the pending ring, and its channel is open. An order sent
            # earlier (a proxy just started, links still connecting) could be lost unseen.
            if transfer.ordered_ms is None and now_ms >= transfer.retry_ms \
                    and transfer.target not in down \
                    and self.ring_versions.get(transfer.source, 0) >= self.topology.version:
                transfer.ordered_ms = now_ms
                transfer.attempts += 1
                effects.append(Send(transfer.source, StreamOrder(
                    transfer.xid, transfer.target, transfer.arcs, transfer.cursor,
                    transfer.attempts)))


def _check_name(node: str, ring: Ring) -> None:
    if not NODE_NAME.fullmatch(node):
        raise BadName(f"bad node name {node!r}: n and a number from 1 to 999999 (n4, n12)")
    seats = {seat for _, seat in ring.seats}
    if node in seats:
        # Its tokens are those of the node sitting on them: the two would always be
        # neighbours, replicas of the same keys.
        raise MembershipError(f"{node} names the tokens a replacement holds: pick another")
