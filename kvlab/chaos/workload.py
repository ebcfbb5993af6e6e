"""What the chaos clients do: a seeded, closed-loop mix of reads, writes and deletes.

The workload only decides *what* each client does next and how long it thinks first; the
simulator plays it on virtual time, the real-cluster driver on the wall clock. Each client
draws from its own random stream, so its sequence of operations does not depend on how the
clients interleave; written values are unique (`v1`, `v2`, ...) so a checker can tell every
write apart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

READ = "read"
WRITE = "write"
DELETE = "delete"


@dataclass(frozen=True)
class Mix:
    """The shape of a workload, shared by `kvlab sim` and `kvlab chaos`: how many clients,
    over how many keys, which fractions of reads and deletes (the rest are writes), and the
    mean think time between a client's operations."""

    clients: int = 10
    keys: int = 20
    reads: float = 0.5
    deletes: float = 0.1
    think_ms: float = 5.0

    def workload(self, seed: int, ops: int) -> Workload:
        return Workload(seed, self.clients, self.keys, ops, self.reads, self.deletes,
                        self.think_ms)


@dataclass(frozen=True, slots=True)
class Op:
    process: int
    f: str  # "read" | "write" | "delete"
    key: str
    value: str | None  # the value a write stores; None for reads and deletes


class Workload:
    """`ops` operations in all, shared by `clients` processes, over keys `k0..k{keys-1}`."""

    def __init__(self, seed: int, clients: int = 10, keys: int = 20, ops: int = 3000,
                 reads: float = 0.5, deletes: float = 0.1, think_ms: float = 1.0) -> None:
        if clients < 1:
            raise ValueError("the workload needs at least one client")
        if keys < 1:
            raise ValueError("the workload needs at least one key")
        if ops < 0:
            raise ValueError("the number of operations must not be negative")
        if not (0 <= reads and 0 <= deletes and reads + deletes <= 1):
            raise ValueError("read and delete fractions must be >= 0 and add up to <= 1")
        if think_ms < 0:
            raise ValueError("think time must not be negative")
        self.clients = clients
        self.ops = ops
        self.think_mean_ms = think_ms
        self._keys = key_names(keys)
        self._reads = reads
        self._writes_below = reads + (1 - reads - deletes)
        self._rngs = [random.Random(f"{seed}:client:{p}") for p in range(clients)]
        self.issued = 0
        self._values = 0

    @property
    def remaining(self) -> int:
        return self.ops - self.issued

    def next_op(self, process: int) -> Op | None:
        """The next operation for `process`, or None once all `ops` have been handed out."""
        if self.issued >= self.ops:
            return None
        self.issued += 1
        rng = self._rngs[process]
        roll = rng.random()
        key = self._keys[int(rng.random() * len(self._keys))]
        if roll < self._reads:
            return Op(process, READ, key, None)
        if roll < self._writes_below:
            self._values += 1
            return Op(process, WRITE, key, f"v{self._values}")
        return Op(process, DELETE, key, None)

    def think_ms(self, process: int) -> float:
        """How long `process` waits before its next operation (exponential)."""
        mean = self.think_mean_ms
        return self._rngs[process].expovariate(1.0 / mean) if mean > 0 else 0.0


def key_names(count: int) -> list[str]:
    """The keys a workload of `count` keys reads and writes."""
    return [f"k{i}" for i in range(count)]
