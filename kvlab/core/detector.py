"""A phi accrual failure detector (Hayashibara et al., 2004), one per watched node.

Instead of a yes/no time-out, each node gets a suspicion level `phi` that grows the longer
it stays silent, scaled by how regularly it has been heard from so far: phi = -log10 of
the probability that a heartbeat would still be on its way after this long. Heartbeat gaps
are taken as exponentially distributed (as Cassandra does), so

    phi(t) = t / (mean gap * ln 10)

where t is the time since the last heartbeat. At one heartbeat every 100 ms, phi reaches
3 (`suspect`) after ~0.7 s of silence and 8 (`down`, Cassandra's and Akka's threshold)
after ~1.85 s; one heartbeat brings a node back `up` at once. The gaps averaged are the
last `window`, and never taken below the heartbeat interval itself, so a burst of queued
heartbeats (a node resuming after a pause) can't make the detector jumpy. Two gaps are not
heartbeat gaps and are left out, as Cassandra leaves out gaps above its maximum interval:
the wait for a node's very first heartbeat (it was starting), and a silence longer than
`MAX_GAP` intervals (it was down, and judged so). Either would make the next failure
slower to see.
"""

from __future__ import annotations

import math
from collections import deque
from enum import StrEnum


class Health(StrEnum):
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


MAX_GAP = 10  # heartbeat intervals: a longer gap is an outage, not a heartbeat's lateness


class PhiAccrual:
    """Heartbeat arrivals from one node, and the suspicion they give at a given time."""

    __slots__ = ("interval_ms", "_gaps", "_sum", "last_ms", "_heard")

    def __init__(self, interval_ms: int, window: int = 100) -> None:
        self.interval_ms = interval_ms
        self._gaps: deque[int] = deque(maxlen=window)
        self._sum = 0
        self.last_ms: int | None = None
        self._heard = False  # `last_ms` may be when watching began, not a heartbeat

    def heartbeat(self, now_ms: int) -> None:
        heard, self._heard = self._heard, True
        if self.last_ms is not None and heard and \
                now_ms - self.last_ms <= MAX_GAP * self.interval_ms:
            gap = max(0, now_ms - self.last_ms)
            if len(self._gaps) == self._gaps.maxlen:
                self._sum -= self._gaps[0]
            self._gaps.append(gap)
            self._sum += gap
        self.last_ms = now_ms

    @property
    def mean_ms(self) -> float:
        mean = self._sum / len(self._gaps) if self._gaps else self.interval_ms
        return max(mean, self.interval_ms)

    def phi(self, now_ms: int) -> float:
        if self.last_ms is None:
            return 0.0  # never heard: judged by the first heartbeat's absence (see below)
        return max(0, now_ms - self.last_ms) / (self.mean_ms * math.log(10))


class FailureDetector:
    """Phi accrual over a set of nodes; a node never heard from is measured from `watch`."""

    def __init__(self, interval_ms: int = 100, suspect_phi: float = 3.0,
                 down_phi: float = 8.0) -> None:
        if interval_ms < 1 or not 0 < suspect_phi <= down_phi:
            raise ValueError("need interval >= 1 ms and 0 < suspect phi <= down phi")
        self.interval_ms = interval_ms
        self.suspect_phi = suspect_phi
        self.down_phi = down_phi
        self._nodes: dict[str, PhiAccrual] = {}

    def watch(self, node: str, now_ms: int) -> None:
        """Start watching `node`, as if it had been heard from at `now_ms`."""
        if node not in self._nodes:
            accrual = self._nodes[node] = PhiAccrual(self.interval_ms)
            accrual.last_ms = now_ms

    def forget(self, node: str) -> None:
        self._nodes.pop(node, None)

    def heartbeat(self, node: str, now_ms: int) -> None:
        accrual = self._nodes.get(node)
        if accrual is not None:
            accrual.heartbeat(now_ms)

    def phi(self, node: str, now_ms: int) -> float:
        accrual = self._nodes.get(node)
        return 0.0 if accrual is None else accrual.phi(now_ms)

    def health(self, node: str, now_ms: int) -> Health:
        phi = self.phi(node, now_ms)
        if phi >= self.down_phi:
            return Health.DOWN
        return Health.SUSPECT if phi >= self.suspect_phi else Health.UP

    def silent_ms(self, node: str, now_ms: int) -> int | None:
        accrual = self._nodes.get(node)
        return None if accrual is None or accrual.last_ms is None else now_ms - accrual.last_ms

    def time_to(self, phi: float) -> float:
        """Silence (ms) after which a node heard at the steady interval reaches `phi`."""
        return phi * self.interval_ms * math.log(10)
