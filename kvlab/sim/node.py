"""A simulated storage node: the core's `Replica` over a `MemoryStore`, on the virtual clock.

Everything the node decides comes from `kvlab.core.replica`; this class carries out the
effects (`Send` over the network, `Persist` through a simulated disk) and keeps the one
wake-up the replica asks for (`get_timer` / `handle_timer`).

Persistence is modelled as group commit. A `Persist` waits for the commit in flight (if
any) to finish, then goes to disk with every other one waiting, in the next batch; a batch
becomes durable after a simulated fsync delay, and only then is it written to the store and
reported to the replica (`persisted`), whose acknowledgements go out. So a crash loses
exactly the writes that were never acknowledged, and nothing that was.

Lifecycle faults:
- crash: the process dies, with the replica's memory. It answers nothing; messages it held
  (queued, or waiting for their commit) are lost, and their senders see the connection
  reset. Messages still on the wire meet a dead port (refused) or, after a restart, a new
  connection (reset): either way the sender hears of it one network hop later.
- restart: the process comes back with its durable store: a fresh replica is built from
  it (`Replica.load`), on the ring version it last kept (`Replica.restore`).
- wipe: the disk is lost too (the store is emptied): a replaced machine.
- pause (SIGSTOP): the process stops but its sockets stay open, so incoming messages queue
  up; an fsync already in the kernel completes (the batch is durable) but is acknowledged
  only on resume, and timers that fall due wait for it too. On resume the node works
  through what it missed in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from kvlab.core.messages import (
    Connect,
    HintRequest,
    Message,
    Persist,
    ReadRequest,
    ReplicaEffect,
    Send,
    WriteRequest,
)
from kvlab.core.replica import Replica, ReplicaConfig
from kvlab.core.ring import Ring
from kvlab.sim.clock import US_PER_MS, EventQueue, LocalClock
from kvlab.sim.network import RESET, Network
from kvlab.storage.memory import MemoryStore

UP = "up"
DOWN = "down"
PAUSED = "paused"

# Healing counters of `Replica.snapshot` that add up across a node's restarts.
COUNTERS = ("hints_stored", "hints_replayed", "hints_expired", "ae_rounds", "ae_in_sync",
            "repair_bytes", "superseded", "refused", "purged")

# (sender, message, the sender's incarnation): a message to answer on its connection.
Origin = tuple[str, Message, int]


class SimNode(LocalClock):
    """One node process on the network, known there by its name."""

    def __init__(self, name: str, clock: EventQueue, network: Network, ring: Ring,
                 config: ReplicaConfig, fsync_us: Callable[[], int], epoch_ms: int = 0
                 ) -> None:
        self.name = name
        self._set_clock(clock, epoch_ms)
        self.network = network
        self.ring = ring
        self.config = config
        self.fsync_us = fsync_us
        self.store = MemoryStore()
        self.state = UP
        # Bumped by each crash: events this process scheduled before are void.
        self.incarnation = 0
        self._waiting: list[Persist] = []  # for the next commit
        self._committing: list[Persist] | None = None
        self._durable: list[int] = []  # batches made durable while paused, not yet reported
        # Calls that arrived while paused, in order: messages (`_handle`) and reports of
        # undeliverable ones (`_unreachable`).
        self._inbox: list[tuple[Callable[..., None], tuple]] = []
        # Persist batch -> the message whose answers wait for it.
        self._held: dict[int, Origin] = {}
        self._wake_at: int | None = None  # virtual µs of the one scheduled wake-up
        self._timer_due = False  # a wake-up fell due while paused
        self.commits = 0
        self.served = 0  # coordinator requests handled, for an ops/s figure
        self.lost_writes = 0  # records and hints received but lost to crashes before commit
        self._past: dict[str, int] = dict.fromkeys(COUNTERS, 0)  # earlier incarnations'
        self._past_repaired: dict[str, int] = {}
        self.replica: Replica
        network.register(name, self)
        self._boot()

    # -- clock ---------------------------------------------------------------------------

    def _skewed(self) -> None:
        if self.state is not DOWN:
            self._wake_at = None  # the wake-up was set on the old clock: set it again
            self._arm()

    # -- messages ------------------------------------------------------------------------

    def on_message(self, src: str, message: Message, incarnation: int) -> None:
        """A message from `src` reached this (listening) process."""
        if self.state is PAUSED:
            self._inbox.append((self._handle, (src, message, incarnation)))
        else:
            self._handle(src, message, incarnation)

    def on_unreachable(self, dst: str, message: Message, reason: str) -> None:
        """A message this node sent to `dst` was refused or reset."""
        if self.state is PAUSED:
            self._inbox.append((self._unreachable, (dst, message, reason)))
        else:
            self._unreachable(dst, message, reason)

    def _unreachable(self, dst: str, message: Message, reason: str) -> None:
        self._perform(self.replica.unreachable(dst, message, self.now_ms()), None)
        self._arm()

    def _handle(self, src: str, message: Message, incarnation: int) -> None:
        if isinstance(message, (ReadRequest, WriteRequest, HintRequest)):
            self.served += 1
        effects = self.replica.receive(src, message, self.now_ms())
        self._perform(effects, (src, message, incarnation))
        self._arm()

    def _perform(self, effects: list[ReplicaEffect], origin: Origin | None) -> None:
        """Carry out the replica's effects; answers to `origin` go on its connection."""
        network = self.network
        for effect in effects:
            match effect:
                case Send(node=dst, message=message):
                    answers = origin is not None and dst == origin[0]
                    network.send(self.name, dst, message, origin[2] if answers else None)
                case Persist():
                    if origin is not None:
                        self._held[effect.batch] = origin
                    self._waiting.append(effect)
                    if self._committing is None and self.state is UP:
                        self._start_commit()
                case Connect():
                    pass  # every simulated node reaches every other: no links to keep
                case _:
                    assert_never(effect)

    # -- group commit --------------------------------------------------------------------

    def _start_commit(self) -> None:
        self._committing, self._waiting = self._waiting, []
        self.clock.after(self.fsync_us(), self._commit_done, self.incarnation)

    def _commit_done(self, incarnation: int) -> None:
        batch = self._committing
        if incarnation != self.incarnation or batch is None:
            return  # the process died during this fsync
        self._committing = None
        for persist in batch:
            self.store.write(persist)
        self.commits += 1
        if self.state is PAUSED:
            self._durable.extend(p.batch for p in batch)
            return
        self._report([p.batch for p in batch])
        if self._waiting:
            self._start_commit()

    def _report(self, batches: list[int]) -> None:
        """Tell the replica its batches are durable, and send what waited for them."""
        replica, now = self.replica, self.now_ms()
        for batch in batches:
            self._perform(replica.persisted(batch, now), self._held.pop(batch, None))
        self._arm()

    # -- the replica's timer -------------------------------------------------------------

    def _arm(self) -> None:
        """Keep one wake-up on the virtual clock, at the replica's next deadline."""
        due = self.replica.get_timer()
        at = due * US_PER_MS - self._offset_us
        if self._wake_at is not None and self._wake_at <= at:
            return  # the wake-up already set comes first; it asks again when it runs
        self._wake_at = at
        self.clock.at(at, self._wake, self.incarnation, at)

    def _wake(self, incarnation: int, at: int) -> None:
        if incarnation != self.incarnation or at != self._wake_at:
            return  # superseded by an earlier wake-up, or set by a process that died
        self._wake_at = None
        if self.state is PAUSED:
            self._timer_due = True
            return
        self._perform(self.replica.handle_timer(self.now_ms()), None)
        self._arm()

    # -- lifecycle -----------------------------------------------------------------------

    def _boot(self) -> None:
        """A fresh replica from the durable store, its periodic work started."""
        store = self.store
        self.replica = replica = Replica(self.name, self.ring, self.config, store.get_many)
        replica.load(store.entries(), store.hints())
        kept = store.ring()
        if kept is not None:  # the membership it last heard, until the committer's next word
            self._perform(replica.restore(kept), None)
        # A new replica asks for no timer until its first `handle_timer` starts its rounds.
        self._perform(replica.handle_timer(self.now_ms()), None)
        self._arm()

    def crash(self) -> int:
        """Kill the process; returns how many writes it held that were never made durable."""
        if self.state is DOWN:
            return 0
        self.state = DOWN
        self.incarnation += 1
        self.network.stop(self.name)
        self._keep_counters()
        unpersisted = self._waiting + (self._committing or [])
        lost = sum(len(p.records) + len(p.hints) for p in unpersisted)
        queued = [args for call, args in self._inbox if call == self._handle]
        lost += sum(isinstance(m, (WriteRequest, HintRequest)) for _, m, _ in queued)
        # Durable but unreported batches (a paused node) survive; their answers don't.
        batches = [p.batch for p in unpersisted] + self._durable
        held = [self._held[b] for b in batches if b in self._held] + queued
        self._waiting, self._committing, self._durable, self._inbox = [], None, [], []
        self._held, self._wake_at, self._timer_due = {}, None, False
        for src, message, incarnation in held:
            self.network.fail(self.name, src, message, incarnation, RESET)
        self.lost_writes += lost
        return lost

    def restart(self) -> None:
        """Start the process again on its durable store."""
        if self.state is DOWN:
            self.state = UP
            self.network.start(self.name)
            self._boot()

    def wipe(self) -> None:
        """Lose the disk (the node must be down): it restarts as a replaced machine."""
        if self.state is not DOWN:
            raise ValueError(f"{self.name} must be down to lose its disk")
        self.store.wipe()

    def pause(self) -> None:
        if self.state is UP:
            self.state = PAUSED

    def resume(self) -> None:
        if self.state is not PAUSED:
            return
        self.state = UP
        durable, self._durable = self._durable, []
        self._report(durable)
        if self._committing is None and self._waiting:
            self._start_commit()
        inbox, self._inbox = self._inbox, []
        for call, args in inbox:
            call(*args)
        if self._timer_due:
            self._timer_due = False
            self._perform(self.replica.handle_timer(self.now_ms()), None)
        self._arm()

    # -- views ---------------------------------------------------------------------------

    @property
    def pending_writes(self) -> int:
        """Records and hints received but not yet durable."""
        return sum(len(p.records) + len(p.hints)
                   for p in self._waiting + (self._committing or []))

    @property
    def queued(self) -> int:
        """Messages waiting for a paused node to resume."""
        return len(self._inbox)

    def snapshot(self) -> dict | None:
        """The running process's `Replica.snapshot`, as a real node reports it in `/stats`
        (its counters start again with each process); None while it is down."""
        return None if self.state is DOWN else self.replica.snapshot(self.now_ms())

    def healing(self) -> dict:
        """The replica's healing counters since the node was built, across restarts, and
        what its current process holds (hints, tombstones); empty holdings while down."""
        counters = dict(self._past)
        repaired = dict(self._past_repaired)
        held: dict = {"hints_held": {}, "tombstones": 0}
        snap = self.snapshot()
        if snap is not None:
            for name in COUNTERS:
                counters[name] += snap[name]
            for mechanism, count in snap["repaired"].items():
                repaired[mechanism] = repaired.get(mechanism, 0) + count
            held = {"hints_held": snap["hints_held"], "tombstones": snap["tombstones"]}
        return {**counters, "repaired": repaired, **held}

    def _keep_counters(self) -> None:
        """Add the dying process's counters to the node's."""
        snap = self.replica.snapshot(self.now_ms())
        for name in COUNTERS:
            self._past[name] += snap[name]
        for mechanism, count in snap["repaired"].items():
            self._past_repaired[mechanism] = self._past_repaired.get(mechanism, 0) + count
