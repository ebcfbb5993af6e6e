"""A seeded network between simulated endpoints (coordinators and nodes).

Each directed link has a latency distribution and a loss probability. Links are FIFO, like
the persistent replica channel they stand for (one TCP connection per coordinator-node
pair): a message never overtakes an earlier one on the same link.

Faults:
- loss: a lost message simply never arrives; the sender learns nothing until its own timer
  fires, as with a real packet dropped on a path that never recovers;
- partition: a cut link drops every message sent over it, and every message already on the
  wire when it arrives (`cut(a, b)` is two-way, `cut(a, b, both=False)` only a -> b).
  Nothing is reported either: a partition looks like silence, not like an error.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from heapq import heappush

from kvlab.sim.clock import EventQueue


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
        self.sent = 0
        self.dropped = 0

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

    def send(self, src: str, dst: str, deliver: Callable[..., object], *args: object) -> None:
        """Call `deliver(*args)` when a message from src reaches dst, unless it is lost."""
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
        arrive = self.clock.now + sample()
        last = self._last.get(link, 0)
        if arrive < last:
            arrive = last  # FIFO: wait behind the previous message on this link
        self._last[link] = arrive
        # The hot path: push onto the clock's heap directly (`arrive` is never in the past).
        heappush(self._heap, (arrive, next(self._seq), self._arrive, (link, deliver, args)))

    def _arrive(self, link: tuple[str, str], deliver: Callable[..., object], args: tuple) -> None:
        # A link cut while the message was on the wire drops it too.
        cuts = self._cuts
        if cuts and link in cuts:
            self.dropped += 1
            return
        deliver(*args)


def _check_loss(loss: float | None) -> None:
    if loss is not None and not 0.0 <= loss <= 1.0:
        raise ValueError(f"loss must be between 0 and 1, got {loss}")
