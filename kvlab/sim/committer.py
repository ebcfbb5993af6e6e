"""The committer in the simulator: the core `Membership` on the first coordinator's process.

Everything it decides (plans, steps of a change, heartbeats, the detector's verdicts)
comes from `kvlab.core.membership`; this class keeps its one timer on the virtual clock,
sends its messages over the network from the proxy it runs on, and hands it the reports
(`Pong`, `StreamProgress`) that reach that proxy.

Its clock is the process's monotonic one: true virtual time plus the epoch, never the
skew a nemesis gives the proxy's wall clock. A real proxy times heartbeats on a monotonic
clock too, and a skewed one would make every node look down at once (or never).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from kvlab.core.membership import Change, Membership
from kvlab.core.messages import Report, Send
from kvlab.sim.clock import US_PER_MS, EventQueue
from kvlab.sim.proxy import SimCoordinator


class SimCommitter:
    """`membership` driven on `proxy`'s process; `on_done(change)` when a change ends."""

    def __init__(self, membership: Membership, proxy: SimCoordinator, clock: EventQueue,
                 epoch_ms: int, on_done: Callable[[Change], None]) -> None:
        self.membership = membership
        self.clock = clock
        self._epoch_us = epoch_ms * US_PER_MS
        self._on_done = on_done
        self._wake_at: int | None = None  # virtual µs of the one scheduled wake-up
        self.proxy = proxy
        self.move_to(proxy)

    def now_ms(self) -> int:
        return (self.clock.now + self._epoch_us) // US_PER_MS

    def move_to(self, proxy: SimCoordinator) -> None:
        """The proxy restarted: the committer goes on in the new process."""
        self.proxy.reports = None
        self.proxy = proxy
        proxy.reports = self.receive

    def receive(self, node: str, report: Report) -> None:
        self.perform(self.membership.receive(node, report, self.now_ms()))

    def perform(self, effects: list[Send]) -> None:
        """Send the committer's messages, from its proxy, and keep its timer set."""
        network, name = self.proxy.network, self.proxy.name
        for effect in effects:
            match effect:
                case Send(node=node, message=message):
                    network.send(name, node, message)
                case _:
                    assert_never(effect)
        self._arm()

    def _arm(self) -> None:
        at = max(self.clock.now, self.membership.get_timer() * US_PER_MS - self._epoch_us)
        if self._wake_at is not None and self._wake_at <= at:
            return
        self._wake_at = at
        self.clock.at(at, self._wake, at)

    def _wake(self, at: int) -> None:
        if at != self._wake_at:
            return  # superseded by an earlier wake-up
        self._wake_at = None
        change = self.membership.change
        self.perform(self.membership.handle_timer(self.now_ms()))
        if change is not None and self.membership.change is not change:
            self._on_done(change)
