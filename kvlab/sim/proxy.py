"""A simulated proxy: the core `Coordinator` wired to the virtual clock and network.

Everything it decides comes from `kvlab.core.coordinator`; this class only carries out the
effects (`Send` over the network, `SetTimer` on the virtual clock, `Done` to a callback).
Its clock can be skewed: the core then sees `now_ms` offset by `skew_us`, which moves the
hybrid-clock versions it stamps on writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvlab.core.coordinator import Coordinator
from kvlab.core.messages import Outcome, Reply, Send, SetTimer
from kvlab.sim.clock import US_PER_MS, EventQueue
from kvlab.sim.network import Network

if TYPE_CHECKING:
    from kvlab.sim.node import SimNode

READ = "read"
WRITE = "write"
DELETE = "delete"
INSPECT = "inspect"

Callback = Callable[[Outcome], object]


class SimCoordinator:
    def __init__(self, core: Coordinator, clock: EventQueue, network: Network,
                 nodes: dict[str, SimNode], epoch_ms: int = 0) -> None:
        self.core = core
        self.name = core.name
        self.clock = clock
        self.network = network
        self.nodes = nodes
        self._epoch_us = epoch_ms * US_PER_MS
        self._offset_us = self._epoch_us  # epoch + skew, added to virtual time
        self._callbacks: dict[int, Callback] = {}

    @property
    def skew_us(self) -> int:
        """How far this proxy's clock runs ahead of true time (negative: behind)."""
        return self._offset_us - self._epoch_us

    @skew_us.setter
    def skew_us(self, skew: int) -> None:
        self._offset_us = self._epoch_us + skew

    def now_ms(self) -> int:
        """This proxy's own idea of the time (epoch and skew included), as the core takes it."""
        return (self.clock.now + self._offset_us) // US_PER_MS

    def start(self, f: str, key: str, value: bytes | None, callback: Callback,
              quorum: int | None = None) -> int:
        """Begin a client operation (`read`, `write`, `delete` or `inspect`)."""
        core, now = self.core, self.now_ms()
        if f == READ:
            op, effects = core.read(key, now, r=quorum)
        elif f == WRITE:
            op, effects = core.write(key, value, now, w=quorum)
        elif f == DELETE:
            op, effects = core.write(key, None, now, w=quorum)
        elif f == INSPECT:
            op, effects = core.inspect(key, now)
        else:
            raise ValueError(f"unknown operation {f!r}")
        # Registered before the effects run: an op can be Done at once (ring too small).
        self._callbacks[op] = callback
        self._perform(effects)
        return op

    # -- events (scheduled by the network and the clock) ---------------------------------

    def receive(self, node: str, reply: Reply) -> None:
        # The busiest handler: now_ms() inlined, and most late replies have no effects.
        effects = self.core.receive(node, reply, (self.clock.now + self._offset_us) // US_PER_MS)
        if effects:
            self._perform(effects)

    def unreachable(self, node: str, req: int, reason: str) -> None:
        self._perform(self.core.unreachable(node, req, reason, self.now_ms()))

    def _timer(self, op: int) -> None:
        self._perform(self.core.timeout(op, self.now_ms()))

    def _perform(self, effects: list) -> None:
        for effect in effects:
            kind = effect.__class__
            if kind is Send:
                node = self.nodes[effect.node]
                self.network.send(self.name, effect.node, node.deliver, self.name,
                                  effect.request, node.incarnation)
            elif kind is SetTimer:
                # A deadline on this proxy's clock, whatever its skew: wait that long.
                now_us = self.clock.now + self._offset_us
                self.clock.after(effect.at_ms * US_PER_MS - now_us, self._timer, effect.op)
            else:
                outcome = effect.outcome
                callback = self._callbacks.pop(outcome.op, None)
                if callback is not None:
                    callback(outcome)

    @property
    def pending(self) -> int:
        """Client operations started and not yet answered."""
        return len(self._callbacks)
