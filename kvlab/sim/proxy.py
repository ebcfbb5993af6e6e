"""A simulated proxy: the core `Coordinator` wired to the virtual clock and network.

Everything it decides comes from `kvlab.core.coordinator`; this class only carries out the
effects (`Send` over the network, `SetTimer` on the virtual clock, `Done` to a callback).
Its clock can be skewed: the core then sees `now_ms` offset by `skew_us`, which moves the
hybrid-clock versions it stamps on writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from kvlab.core.coordinator import Coordinator
from kvlab.core.messages import (
    TIMEOUT,
    Control,
    CoordinatorEffect,
    Done,
    Message,
    REPORTS,
    OpKind,
    Outcome,
    Reply,
    Report,
    Request,
    Send,
    SetTimer,
)
from kvlab.sim.clock import US_PER_MS, EventQueue, LocalClock
from kvlab.sim.network import RESET, Network

READ = "read"
WRITE = "write"
DELETE = "delete"
INSPECT = "inspect"

Callback = Callable[[Outcome], object]
# Where the membership reports that reach this proxy go (the committer's `receive`).
Reports = Callable[[str, Report], object]


class SimCoordinator(LocalClock):
    """One proxy process on the network, known there by its coordinator's name."""

    def __init__(self, core: Coordinator, clock: EventQueue, network: Network,
                 epoch_ms: int = 0, skew_us: int = 0, sloppy: bool = False) -> None:
        self.core = core
        self.name = core.name
        self._set_clock(clock, epoch_ms, skew_us)
        self.network = network
        self.sloppy = sloppy  # writes ask for a sloppy quorum unless told otherwise
        self._callbacks: dict[int, tuple[Callback, str, str]] = {}  # op -> (callback, kind, key)
        self.closed = False
        # Set on the proxy the committer runs on: nodes send it heartbeats and stream
        # progress besides replies.
        self.reports: Reports | None = None
        network.register(self.name, self)

    def start(self, f: str, key: str, value: bytes | None, callback: Callback,
              quorum: int | None = None, sloppy: bool | None = None) -> int:
        """Begin a client operation (`read`, `write`, `delete` or `inspect`).

        `sloppy` (writes and deletes): hints count toward W; by default, as the proxy's.
        """
        if self.closed:
            raise RuntimeError(f"{self.name} was restarted: use the new coordinator")
        core, now = self.core, self.now_ms()
        sloppy = self.sloppy if sloppy is None else sloppy
        if f == READ:
            op, effects = core.read(key, now, r=quorum)
        elif f == WRITE:
            op, effects = core.write(key, value, now, w=quorum, sloppy=sloppy)
        elif f == DELETE:
            op, effects = core.write(key, None, now, w=quorum, sloppy=sloppy)
        elif f == INSPECT:
            op, effects = core.inspect(key, now)
        else:
            raise ValueError(f"unknown operation {f!r}")
        # Registered before the effects run: an op can be Done at once (ring too small).
        self._callbacks[op] = (callback, OpKind.READ if f == READ else
                               OpKind.INSPECT if f == INSPECT else OpKind.WRITE, key)
        self._perform(effects)
        return op

    # -- events (from the network and the clock) -----------------------------------------

    def on_message(self, src: str, message: Message, incarnation: int) -> None:
        """A replica's reply arrived, or a report for the committer (`Pong`,
        `StreamProgress`)."""
        # The busiest handler: now_ms() inlined, and most late replies have no effects.
        if message.__class__ in REPORTS:
            if self.reports is not None:
                self.reports(src, message)  # type: ignore[arg-type]
            return
        reply: Reply = message  # type: ignore[assignment]
        effects = self.core.receive(src, reply, (self.clock.now + self._offset_us) // US_PER_MS)
        if effects:
            self._perform(effects)

    def on_unreachable(self, dst: str, message: Message, reason: str) -> None:
        if isinstance(message, Control):
            # The committer's Ping, RingUpdate or StreamOrder: the detector hears
            # the silence, and a stream that never started is ordered again.
            return
        request: Request = message  # type: ignore[assignment]
        self._perform(self.core.unreachable(dst, request.req, reason, self.now_ms()))

    def _timer(self, op: int) -> None:
        if not self.closed:
            self._perform(self.core.timeout(op, self.now_ms()))

    def _perform(self, effects: list[CoordinatorEffect]) -> None:
        for effect in effects:
            match effect:
                case Send(node=node, message=message):
                    self.network.send(self.name, node, message)
                case SetTimer(op=op, at_ms=at_ms):
                    # A deadline on this proxy's clock, whatever its skew: wait that long.
                    now_us = self.clock.now + self._offset_us
                    self.clock.after(at_ms * US_PER_MS - now_us, self._timer, op)
                case Done(outcome=outcome):
                    entry = self._callbacks.pop(outcome.op, None)
                    if entry is not None:
                        entry[0](outcome)
                case _:
                    assert_never(effect)

    def close(self) -> None:
        """The process stops (a restart): its clients' connections reset, so each
        operation in progress ends with an unknown outcome (a timeout) and no replicas."""
        self.closed = True
        callbacks, self._callbacks = self._callbacks, {}
        for op, (callback, kind, key) in callbacks.items():
            callback(Outcome(op=op, kind=kind, key=key, status=TIMEOUT, record=None,
                             replicas=(), acked=(), needed=0, failed={self.name: RESET},
                             answers={}))

    @property
    def pending(self) -> int:
        """Client operations started and not yet answered."""
        return len(self._callbacks)
