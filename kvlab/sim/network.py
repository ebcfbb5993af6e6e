"""A seeded network between simulated endpoints (coordinators and nodes).

The network owns its endpoints: each registers under its name (`register`), and anyone
sends to a name (`send`). Each directed link has a latency distribution and a loss
probability. Links are FIFO, like the persistent channels they stand for (one connection
per pair of processes): a message never overtakes an earlier one on the same link.

Connections: each registration, and each `stop`, starts a new incarnation of the name. A
message is addressed to the incarnation of its destination at the time it was sent; an
answer goes back on the connection its question came in on (`send(..., incarnation=)`), so
it never reaches a later process of the same name (whose request numbers start again).
- a message that reaches a stopped endpoint (no process listening) is refused;
- one that reaches a later incarnation than it was sent to meets a reset connection;
either way the sender hears of it one hop later (`Endpoint.on_unreachable`), as with a
real RST, unless the sender itself has died meanwhile.

Faults:
- loss: a lost message simply never arrives; the sender learns nothing until its own timer
  fires, as with a real packet dropped on a path that never recovers;
- partition: a cut link drops every message sent over it, and every message already on the
  wire when it arrives (`cut(a, b)` is two-way, `cut(a, b, both=False)` only a -> b).
  Nothing is reported either: a partition looks like silence, not like an error. Links are
  between names, so a coordinator can be cut from a node while the nodes still talk.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from heapq import heappush
from typing import Protocol

from kvlab.core.messages import Message
from kvlab.sim.clock import EventQueue

REFUSED = "connection refused"
RESET = "connection reset"


class Endpoint(Protocol):
    """A process on the network: a simulated coordinator or node."""

    def on_message(self, src: str, message: Message, incarnation: int) -> None:
        """`message` from `src` arrived; `incarnation` is the sender's, to answer on."""

    def on_unreachable(self, dst: str, message: Message, reason: str) -> None:
        """`message`, sent to `dst`, was refused or its connection was reset."""


@dataclass(frozen=True, slots=True)
class Latency:
    """One-way delay: `base_us` plus a random jitter with mean `jitter_us`.

    `shape` is "exp" (exponential jitter) or "lognormal" (heavier tail; `sigma` sets how
    heavy), the usual shapes of queueing delay in a data centre.
    """

    base_us: int = 200
    jitter_us: int = 100
    shape: str = "exp"
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.base_us < 0 or self.jitter_us < 0:
            raise ValueError("latency must not be negative")
        if self.shape not in ("exp", "lognormal"):
            raise ValueError(f"latency shape must be exp or lognormal, not {self.shape!r}")

    def sampler(self, rng: random.Random) -> Callable[[], int]:
        """A function drawing one delay in microseconds from `rng`."""
        base, mean = self.base_us, self.jitter_us
        if mean == 0:
            return lambda: base
        if self.shape == "exp":
            # Random.expovariate's formula, inlined: this runs for every message.
            rnd, log = rng.random, math.log
            return lambda: base + int(-log(1.0 - rnd()) * mean)
        # Choose mu so that the jitter's mean is `mean`: E = exp(mu + sigma^2 / 2).
        sigma = self.sigma
        mu = math.log(mean) - sigma * sigma / 2
        logn = rng.lognormvariate
        return lambda: base + int(logn(mu, sigma))


class Network:
    """Carries messages between named endpoints on the virtual clock."""

    def __init__(self, clock: EventQueue, rng: random.Random, latency: Latency = Latency(),
                 loss: float = 0.0) -> None:
        self.clock = clock
        self.rng = rng
        self.default_latency = latency
        self.default_loss = loss
        self._default_sample = latency.sampler(rng)
        self._default = (self._default_sample, loss)
        self._heap, self._seq = clock.heap, clock.seq
        # Per directed link: (sample, loss) overriding the defaults, and last arrival time.
        self._links: dict[tuple[str, str], tuple[Callable[[], int], float]] = {}
        self._last: dict[tuple[str, str], int] = {}
        self._cuts: set[tuple[str, str]] = set()
        self._endpoints: dict[str, Endpoint] = {}
        self._incarnations: dict[str, int] = {}
        self._listening: set[str] = set()
        self.sent = 0
        self.dropped = 0

    # -- endpoints ---------------------------------------------------------------------

    def register(self, name: str, endpoint: Endpoint) -> None:
        """Attach `endpoint` as `name`, listening: a new incarnation (a new process, if
        `name` was registered before: its predecessor's connections are gone)."""
        self._endpoints[name] = endpoint
        self._incarnations[name] = self._incarnations.get(name, -1) + 1
        self._listening.add(name)

    def stop(self, name: str) -> None:
        """The process behind `name` died: refuse what arrives, reset its connections."""
        self._listening.discard(name)
        self._incarnations[name] += 1

    def start(self, name: str) -> None:
        """The endpoint listens again (a restarted process, in the incarnation `stop` began)."""
        self._listening.add(name)

    def incarnation(self, name: str) -> int:
        return self._incarnations[name]

    # -- configuration and faults ------------------------------------------------------

    def set_link(self, src: str, dst: str, latency: Latency | None = None,
                 loss: float | None = None, both: bool = True) -> None:
        """Give the link src -> dst (and dst -> src unless `both=False`) its own behaviour.

        The link keeps the loss given here (or the default loss at the time of this call):
        a later `set_loss` no longer reaches it.
        """
        _check_loss(loss)
        for link in ((src, dst), (dst, src)) if both else ((src, dst),):
            sample, old_loss = self._links.get(link, self._default)
            if latency is not None:
                sample = latency.sampler(self.rng)
            self._links[link] = (sample, old_loss if loss is None else loss)

    def set_loss(self, loss: float) -> None:
        """Loss probability on every link without its own setting."""
        _check_loss(loss)
        self.default_loss = loss
        self._default = (self._default_sample, loss)

    def cut(self, a: str, b: str, both: bool = True) -> None:
        """Partition a from b: drop messages a -> b (and b -> a when `both`)."""
        self._cuts.add((a, b))
        if both:
            self._cuts.add((b, a))

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Restore a <-> b, or every link touching `a`, or (no arguments) all links."""
        if a is None:
            self._cuts.clear()
            return
        self._cuts = {(s, d) for s, d in self._cuts
                      if not ({s, d} == {a, b} if b is not None else a in (s, d))}

    def is_cut(self, src: str, dst: str) -> bool:
        return (src, dst) in self._cuts

    def cuts(self) -> list[tuple[str, str]]:
        return sorted(self._cuts)

    # -- carrying messages -------------------------------------------------------------

    def send(self, src: str, dst: str, message: Message, incarnation: int | None = None
             ) -> None:
        """Carry `message` from src to dst, unless it is lost or the link is cut.

        `incarnation`: the incarnation of dst that this answers (given to the endpoint
        with the question); by default, dst's current one.
        """
        incarnations = self._incarnations
        if incarnation is None:
            incarnation = incarnations[dst]
        self._carry(src, dst, self._arrive, (message, incarnations[src], incarnation))

    def fail(self, at: str, src: str, message: Message, incarnation: int, reason: str
             ) -> None:
        """`at` dropped `message` from `src` (incarnation `incarnation`) with its
        connection: tell the sender, one hop later, as its side of the socket would."""
        self._carry(at, src, self._bounced, (message, incarnation, reason))

    def _carry(self, src: str, dst: str, arrive: Callable[..., object], args: tuple) -> None:
        self.sent += 1
        link = (src, dst)
        cuts = self._cuts
        if cuts and link in cuts:
            self.dropped += 1
            return
        sample, loss = self._links.get(link, self._default) if self._links else self._default
        if loss and self.rng.random() < loss:
            self.dropped += 1
            return
        at = self.clock.now + sample()
        last = self._last.get(link, 0)
        if at < last:
            at = last  # FIFO: wait behind the previous message on this link
        self._last[link] = at
        # The hot path: push onto the clock's heap directly (`at` is never in the past).
        heappush(self._heap, (at, next(self._seq), arrive, (link, *args)))

    def _arrive(self, link: tuple[str, str], message: Message, src_incarnation: int,
                dst_incarnation: int) -> None:
        cuts = self._cuts
        if cuts and link in cuts:  # a link cut while the message was on the wire drops it
            self.dropped += 1
            return
        src, dst = link
        if dst not in self._listening:
            self._carry(dst, src, self._bounced, (message, src_incarnation, REFUSED))
        elif dst_incarnation != self._incarnations[dst]:
            self._carry(dst, src, self._bounced, (message, src_incarnation, RESET))
        else:
            self._endpoints[dst].on_message(src, message, src_incarnation)

    def _bounced(self, link: tuple[str, str], message: Message, incarnation: int,
                 reason: str) -> None:
        """A refusal or reset reached the sender of `message` (link: receiver -> sender)."""
        cuts = self._cuts
        if cuts and link in cuts:
            self.dropped += 1
            return
        dst, src = link
        # Only the process that sent the message has the socket that hears of it.
        if src in self._listening and incarnation == self._incarnations[src]:
            self._endpoints[src].on_unreachable(dst, message, reason)


def _check_loss(loss: float | None) -> None:
    if loss is not None and not 0.0 <= loss <= 1.0:
        raise ValueError(f"loss must be between 0 and 1, got {loss}")
