"""A simulated storage node: a `MemoryStore` behind the core's replica logic.

Persistence is modelled as group commit. Writes wait for the commit in flight (if any) to
finish, then go to disk together in the next batch; a batch becomes durable after a
simulated fsync delay, and only then is it applied to the store and acknowledged. So a
crash loses exactly the writes that were never acknowledged, and nothing that was.

Lifecycle faults:
- crash: the process dies. It answers nothing; requests it held (queued, or waiting for
  their commit) are lost, and their coordinators see the connection reset. Requests still
  on the wire meet a dead port (refused) or, after a restart, a new connection (reset):
  either way the coordinator hears of it one network hop later, as with a real RST.
- restart: the process comes back with its durable store.
- pause (SIGSTOP): the process stops but its sockets stay open, so incoming requests queue
  up; an fsync already in the kernel completes (the batch is durable) but is acknowledged
  only on resume. On resume the node works through the queue in arrival order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from kvlab.core import replica
from kvlab.core.messages import Reply, Request, WriteRequest
from kvlab.sim.clock import EventQueue
from kvlab.sim.network import Network
from kvlab.storage.memory import MemoryStore

if TYPE_CHECKING:
    from kvlab.sim.proxy import SimCoordinator

UP = "up"
DOWN = "down"
PAUSED = "paused"

REFUSED = "connection refused"
RESET = "connection reset"


class SimNode:
    """One node process. Its coordinators reach it through the network."""

    def __init__(self, name: str, clock: EventQueue, network: Network,
                 peers: dict[str, SimCoordinator], fsync_us: Callable[[], int]) -> None:
        self.name = name
        self.clock = clock
        self.network = network
        self.peers = peers
        self.fsync_us = fsync_us
        self.store = MemoryStore()
        self.state = UP
        # Bumped by each crash: a request addressed to an older incarnation belonged to a
        # connection that died with it.
        self.incarnation = 0
        self._waiting: list[tuple[str, WriteRequest]] = []  # for the next commit
        self._committing: list[tuple[str, WriteRequest]] | None = None
        self._unacked: list[tuple[str, Reply]] | None = None  # durable while paused
        self._inbox: list[tuple[str, Request]] = []  # arrived while paused
        self.commits = 0
        self.served = 0  # requests handled (reads and writes), for an ops/s figure
        self.lost_writes = 0  # writes received but lost to crashes before their commit

    # -- messages ------------------------------------------------------------------------

    def deliver(self, coordinator: str, request: Request, incarnation: int) -> None:
        """A request from `coordinator` reached this node's host."""
        if self.state is DOWN or incarnation != self.incarnation:
            self._fail(coordinator, request.req, REFUSED if self.state is DOWN else RESET)
        elif self.state is PAUSED:
            self._inbox.append((coordinator, request))
        else:
            self._handle(coordinator, request)

    def _handle(self, coordinator: str, request: Request) -> None:
        self.served += 1
        replies, writes = replica.serve((request,), self.store.get_many)
        if replies:
            peer = self.peers[coordinator]
            for reply in replies:
                self.network.send(self.name, coordinator, peer.receive, self.name, reply)
        if writes:
            self._waiting.append((coordinator, writes[0]))
            if self._committing is None:
                self._start_commit()

    def _fail(self, coordinator: str, req: int, reason: str) -> None:
        # What the coordinator's side of the connection reports: a refused or reset socket.
        peer = self.peers[coordinator]
        self.network.send(self.name, coordinator, peer.unreachable, self.name, req, reason)

    # -- group commit --------------------------------------------------------------------

    def _start_commit(self) -> None:
        self._committing, self._waiting = self._waiting, []
        self.clock.after(self.fsync_us(), self._commit_done, self.incarnation)

    def _commit_done(self, incarnation: int) -> None:
        batch = self._committing
        if incarnation != self.incarnation or batch is None:
            return  # the process died during this fsync
        self._committing = None
        self.store.apply([w.record for _, w in batch])
        self.commits += 1
        acks = zip([c for c, _ in batch], replica.acknowledge([w for _, w in batch]))
        if self.state is PAUSED:
            self._unacked = list(acks)
            return
        self._send_acks(acks)
        if self._waiting:
            self._start_commit()

    def _send_acks(self, acks: Iterable[tuple[str, Reply]]) -> None:
        send, name, peers = self.network.send, self.name, self.peers
        for coordinator, reply in acks:
            send(name, coordinator, peers[coordinator].receive, name, reply)

    # -- lifecycle -----------------------------------------------------------------------

    def crash(self) -> int:
        """Kill the process; returns how many writes it held that were never made durable."""
        if self.state is DOWN:
            return 0
        self.state = DOWN
        self.incarnation += 1
        unpersisted = self._waiting + (self._committing or [])
        lost = len(unpersisted) + sum(isinstance(r, WriteRequest) for _, r in self._inbox)
        # Durable but unacknowledged writes (a paused node) survive; their replies don't.
        held = [(c, r.req) for c, r in [*unpersisted, *self._inbox, *(self._unacked or ())]]
        self._waiting, self._committing, self._unacked, self._inbox = [], None, None, []
        for coordinator, req in held:
            self._fail(coordinator, req, RESET)
        self.lost_writes += lost
        return lost

    def restart(self) -> None:
        if self.state is DOWN:
            self.state = UP

    def pause(self) -> None:
        if self.state is UP:
            self.state = PAUSED

    def resume(self) -> None:
        if self.state is not PAUSED:
            return
        self.state = UP
        if self._unacked is not None:
            acks, self._unacked = self._unacked, None
            self._send_acks(acks)
        if self._committing is None and self._waiting:
            self._start_commit()
        inbox, self._inbox = self._inbox, []
        for coordinator, request in inbox:
            self._handle(coordinator, request)

    # -- views ---------------------------------------------------------------------------

    @property
    def pending_writes(self) -> int:
        """Writes received but not yet durable."""
        return len(self._waiting) + len(self._committing or ())

    @property
    def queued(self) -> int:
        """Requests waiting for a paused node to resume."""
        return len(self._inbox)
