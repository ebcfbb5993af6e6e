"""Drive a `Coordinator` and its `Membership` with asyncio: carry out their effects and
await the coordinator's outcomes."""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable
from typing import assert_never

from kvlab.core.coordinator import Coordinator
from kvlab.core.membership import Membership
from kvlab.core.messages import (
    CoordinatorEffect,
    Done,
    OpKind,
    Outcome,
    Reply,
    Report,
    RingUpdate,
    Send,
    SetTimer,
)
from kvlab.net.link import ReplicaLink

logger = logging.getLogger(__name__)

WRITE = OpKind.WRITE


def now_ms() -> int:
    """The wall clock in milliseconds: what versions are stamped with."""
    return time.time_ns() // 1_000_000


def wall_clock(offset_ms: int = 0) -> Callable[[], int]:
    """`now_ms`, shifted by `offset_ms` (how a test runs a proxy whose clock is wrong)."""
    if not offset_ms:
        return now_ms
    return lambda: time.time_ns() // 1_000_000 + offset_ms


class Engine:
    """The coordinator's and the membership's effects carried out on the links and the
    event loop's clock.

    The membership has one loop timer of its own, at `get_timer()` (every heartbeat): its
    pings, the detector's verdicts and the steps of a change run there. The links of nodes
    it no longer watches (a change that took them out is over) are closed on that tick.
    `keep`, if given, is handed each topology the membership publishes before any node
    is sent it (so a restarted proxy goes on from it: `kvlab.net.ring_state`).
    """

    def __init__(self, coordinator: Coordinator, membership: Membership,
                 clock: Callable[[], int] = now_ms,
                 keep: Callable[[RingUpdate], None] | None = None) -> None:
        self.coordinator = coordinator
        self.membership = membership
        self._keep = keep
        self._kept = membership.topology.version
        self.now_ms = clock
        self.links: dict[str, ReplicaLink] = {}
        self._closing: set[asyncio.Task] = set()  # links being stopped
        self._tick: asyncio.TimerHandle | None = None
        self._waiting: dict[int, asyncio.Future[Outcome]] = {}
        # op kind -> status -> operations that ended so, for /cluster and /metrics
        self.outcomes: dict[str, dict[str, int]] = {kind: {} for kind in OpKind}
        # Bytes of the values of writes waiting for their outcome: what admission bounds.
        self.value_bytes = 0
        # Deadlines of every operation behind a single loop timer, far cheaper than a
        # TimerHandle per operation (nearly all of them find the op long done). They are
        # grouped by millisecond, rounded up: an op costs one append to its millisecond's
        # list, and the heap only holds the distinct milliseconds. They are kept on the
        # loop's monotonic clock, so a wall-clock step can't stretch or cut them short (wall
        # time only stamps versions).
        self._due: dict[int, list[int]] = {}  # loop-clock millisecond -> ops due then
        self._ticks: list[int] = []  # heap of the keys of `_due`
        self._timer: asyncio.TimerHandle | None = None
        self._timer_tick = 0

    @property
    def pending(self) -> int:
        """Operations started and not answered yet."""
        return len(self._waiting)

    # Operations. Each returns a future of its outcome rather than being a coroutine: every
    # level of coroutine between a request handler and the future is walked again on each
    # resumption, which showed in the proxy's profile.

    def read(self, key: str, r: int | None = None) -> asyncio.Future[Outcome]:
        return self._start(*self.coordinator.read(key, self.now_ms(), r=r))

    def write(self, key: str, value: bytes | None, w: int | None = None,
              sloppy: bool = False) -> asyncio.Future[Outcome]:
        """Store `value` under `key`; `None` deletes it (writes a tombstone).

        `sloppy`: hints kept on fallback nodes count toward W.
        """
        op, effects = self.coordinator.write(key, value, self.now_ms(), w=w, sloppy=sloppy)
        if value is not None:
            self.value_bytes += len(value)  # given back by its outcome (its record's value)
        return self._start(op, effects)

    def inspect(self, key: str) -> asyncio.Future[Outcome]:
        return self._start(*self.coordinator.inspect(key, self.now_ms()))

    def _start(self, op: int, effects: list[CoordinatorEffect]) -> asyncio.Future[Outcome]:
        future = asyncio.get_running_loop().create_future()
        self._waiting[op] = future
        self._apply(effects)
        return future

    # Callbacks for the links.

    def on_replies(self, node: str, replies: list[Reply]) -> None:
        now = self.now_ms()
        receive = self.coordinator.receive
        for reply in replies:
            effects = receive(node, reply, now)
            if effects:
                self._apply(effects)

    def on_lost(self, node: str, reqs: list[int], reason: str) -> None:
        now = self.now_ms()
        for req in reqs:
            self._apply(self.coordinator.unreachable(node, req, reason, now))

    def on_reports(self, node: str, reports: list[Report]) -> None:
        now = self.now_ms()
        for report in reports:
            self.control(self.membership.receive(node, report, now))

    def on_connected(self, node: str) -> None:
        """`node`'s socket (re)opened: what the membership tells it goes first."""
        self.control(self.membership.connected(node, self.now_ms()))

    def control(self, effects: list[Send]) -> None:
        """Carry out the membership's effects: messages nothing waits a reply to. One that
        can't go (its link is down) is dropped: the detector notices a silent node, and a
        stream order that never arrived times out and is given again."""
        topology = self.membership.topology
        if self._keep is not None and topology.version != self._kept:
            self._keep(topology.update(self.membership.addresses))
            self._kept = topology.version
        for effect in effects:
            match effect:
                case Send():
                    link = self.links.get(effect.node)
                    if link is not None:
                        link.send_control(effect.message)  # type: ignore[arg-type]
                case _:
                    assert_never(effect)

    # The membership's timer.

    def start(self) -> None:
        """Start the membership's heartbeats (its first tick is due at once)."""
        self._tick = asyncio.get_running_loop().call_soon(self._heartbeat)

    async def stop(self) -> None:
        """Stop the heartbeats and close every link."""
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for link in self.links.values():
            await link.stop()
        if self._closing:
            await asyncio.gather(*self._closing)

    def _heartbeat(self) -> None:
        membership = self.membership
        try:
            self.control(membership.handle_timer(self.now_ms()))
            watched = membership.watched
            for name in [n for n in self.links if n not in watched]:
                self.close_link(name)
            # +1 ms: the loop may fire a timer up to a millisecond early, and a call before
            # the deadline does nothing.
            delay = max(0.0, (membership.get_timer() - self.now_ms() + 1) / 1000)
        except Exception:  # a bug: it must not stop the heartbeats for good
            logger.exception("the membership's timer failed")
            delay = membership.heartbeat_ms / 1000
        self._tick = asyncio.get_running_loop().call_later(delay, self._heartbeat)

    def close_link(self, name: str) -> None:
        """Close the link to a node that left the cluster (in the background)."""
        task = asyncio.get_running_loop().create_task(self.links.pop(name).stop())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _apply(self, effects: list[CoordinatorEffect]) -> None:
        # A match costs ~45 ns more per effect than an isinstance chain (measured), well
        # under 1% of an operation; it buys a loud failure on an effect this driver doesn't
        # know. Send comes first: it is most of the effects.
        for effect in effects:
            match effect:
                case Send():
                    # Every Send of a coordinator carries a request (a read, a write or a
                    # repair for a replica, a hint for a fallback): each goes on its node's link.
                    link = self.links.get(effect.node)
                    if link is None or not link.send(effect.message):
                        self._apply(self.coordinator.unreachable(
                            effect.node, effect.message.req, "node down", self.now_ms()))
                case SetTimer():
                    loop_ms = asyncio.get_running_loop().time() * 1000
                    # +1: uvloop's clock counts whole milliseconds, so a timer for `tick` can
                    # fire up to a millisecond before it; a deadline must never come early.
                    tick = math.ceil(loop_ms + effect.at_ms - self.now_ms()) + 1
                    ops = self._due.get(tick)
                    if ops is not None:
                        ops.append(effect.op)
                        continue
                    self._due[tick] = [effect.op]
                    heapq.heappush(self._ticks, tick)
                    if self._timer is None or tick < self._timer_tick:
                        self._arm()
                case Done():
                    outcome = effect.outcome
                    counts = self.outcomes[outcome.kind]
                    counts[outcome.status] = counts.get(outcome.status, 0) + 1
                    if outcome.kind == WRITE:
                        record = outcome.record
                        if record is not None and record.value is not None:
                            self.value_bytes -= len(record.value)
                    future = self._waiting.pop(outcome.op, None)
                    # Every operation ends in exactly one Done; its future can only have been
                    # cancelled by whoever awaited it giving up.
                    if future is not None and not future.done():
                        future.set_result(outcome)
                case _:
                    assert_never(effect)

    @property
    def served(self) -> dict[str, int]:
        """Operations by the status they ended with, whatever their kind."""
        served: dict[str, int] = {}
        for counts in self.outcomes.values():
            for status, count in counts.items():
                served[status] = served.get(status, 0) + count
        return served

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_tick = self._ticks[0]
        self._timer = asyncio.get_running_loop().call_at(self._timer_tick / 1000, self._expire)

    def _expire(self) -> None:
        self._timer = None
        loop_ms, now = asyncio.get_running_loop().time() * 1000, self.now_ms()
        ticks, timeout = self._ticks, self.coordinator.timeout
        while ticks and ticks[0] <= loop_ms:
            for op in self._due.pop(heapq.heappop(ticks)):
                try:
                    effects = timeout(op, now)
                    if effects:
                        self._apply(effects)
                except Exception:  # a bug: it must not cost the other ops their deadlines
                    logger.exception("timeout of operation %s failed", op)
        if ticks and self._timer is None:
            self._arm()
