"""What the nemesis breaks, and when: a seeded schedule of faults.

A `Fault` names a kind, a start time (ms from the start of the run), a duration and its
targets. Faults follow one another with a random gap and never overlap, so each one's
effect can be read off the history. The simulator executes the schedule on virtual time;
the real-cluster driver can execute the same schedule on the wall clock.

Kinds:
- kill: crash one node, restart it at the end (it keeps what it had made durable);
- pause: stop one node (SIGSTOP), resume it at the end;
- partition: cut one coordinator from some nodes, two-way or one-way, heal at the end;
- skew: set one coordinator's clock ahead or behind, reset it at the end;
- loss: drop a fraction of all messages, stop at the end;
- wipe: kill one node and lose its disk. It comes back empty at the end of the fault, as
  the machine that replaces a failed one does once provisioned, and refills from the
  other replicas (hinted handoff, anti-entropy, read repair). While it is away it is just
  a dead node, so its data goes when the replacement starts.

Membership changes are not faults of this schedule: they take as long as their data
takes to move, so they run on a track of their own (`MembershipNemesis`), one change at a
time, while the faults above go on. Each joins a new node, removes one (never below N
nodes), or kills one for good and replaces it with a new, empty node.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

KILL = "kill"
PAUSE = "pause"
PARTITION = "partition"
SKEW = "skew"
LOSS = "loss"
WIPE = "wipe"
MEMBERSHIP = "membership"
FAULTS = (KILL, PAUSE, PARTITION, SKEW, LOSS, WIPE)  # the kinds `schedule` draws
KINDS = (*FAULTS, MEMBERSHIP)

ADD = "add"  # membership changes
REMOVE = "remove"
REPLACE = "replace"

BOTH = "both"  # partition directions, seen from the coordinator
TO_NODES = "to"  # requests are lost, replies would get through
FROM_NODES = "from"  # requests arrive (and writes apply), replies are lost


@dataclass(frozen=True, slots=True)
class Fault:
    at_ms: int
    kind: str
    duration_ms: int
    nodes: tuple[str, ...] = ()
    coordinator: str | None = None
    direction: str = BOTH  # partitions only
    skew_ms: int = 0  # skew only
    loss: float = 0.0  # loss only
    change: str = ""  # membership only: add, remove or replace (of `nodes[0]`)

    @property
    def end_ms(self) -> int:
        return self.at_ms + self.duration_ms

    def describe(self) -> str:
        what = {
            KILL: f"kill {','.join(self.nodes)}",
            PAUSE: f"pause {','.join(self.nodes)}",
            PARTITION: f"partition {self.coordinator} {self.direction} {','.join(self.nodes)}",
            SKEW: f"skew {self.coordinator} {self.skew_ms:+d}ms",
            LOSS: f"loss {self.loss:.0%}",
            WIPE: f"wipe {','.join(self.nodes)}",
            MEMBERSHIP: f"{self.change} {' by '.join(self.nodes)}",
        }[self.kind]
        return f"{self.at_ms}ms +{self.duration_ms}ms {what}"


def parse_kinds(text: str) -> tuple[str, ...]:
    """"kill,pause" -> ("kill", "pause"); "" or "none" -> (). Raises ValueError."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip() and k.strip() != "none")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown nemesis {', '.join(unknown)} (choose from {', '.join(KINDS)})")
    return tuple(dict.fromkeys(kinds))


def schedule(kinds: Sequence[str], nodes: Sequence[str] | Callable[[], Sequence[str]],
             coordinators: Sequence[str], seed: int, first_ms: int = 100,
             gap_ms: tuple[int, int] = (100, 500),
             duration_ms: tuple[int, int] = (200, 1000), max_skew_ms: int = 2000,
             max_loss: float = 0.3, nodes_per_fault: int = 1) -> Iterator[Fault]:
    """An endless schedule of non-overlapping faults drawn from `kinds` (none if empty;
    `membership` is left out, see `MembershipNemesis`).

    `nodes` are the nodes to break, or a function giving them as each fault is drawn (the
    membership nemesis changes them). A kill, pause or wipe takes `nodes_per_fault` nodes
    at once (two of a key's three replicas down is what a sloppy quorum is for).
    """
    kinds = [k for k in kinds if k != MEMBERSHIP]
    if not kinds:
        return
    members = nodes if callable(nodes) else lambda: nodes
    if not members() or not coordinators:
        raise ValueError("the nemesis needs nodes and coordinators to break")
    if not 1 <= nodes_per_fault <= len(members()):
        raise ValueError(f"a fault can take 1 to {len(members())} nodes, not {nodes_per_fault}")
    rng = random.Random(f"{seed}:nemesis")
    at = first_ms
    while True:
        nodes = members()
        kind = rng.choice(kinds)
        duration = rng.randint(*duration_ms)
        coordinator = rng.choice(coordinators)
        if kind in (KILL, PAUSE, WIPE):
            # One node is drawn as it always was, so that earlier seeds replay the same.
            picked = ((rng.choice(nodes),) if nodes_per_fault == 1 else
                      tuple(sorted(rng.sample(list(nodes), min(nodes_per_fault, len(nodes))))))
            yield Fault(at, kind, duration, nodes=picked)
        elif kind == PARTITION:
            cut = tuple(sorted(rng.sample(list(nodes), rng.randint(1, max(1, len(nodes) - 1)))))
            direction = rng.choice((BOTH, BOTH, TO_NODES, FROM_NODES))
            yield Fault(at, kind, duration, nodes=cut, coordinator=coordinator,
                        direction=direction)
        elif kind == SKEW:
            skew = rng.randint(-max_skew_ms, max_skew_ms)
            yield Fault(at, kind, duration, coordinator=coordinator, skew_ms=skew)
        else:
            yield Fault(at, kind, duration, loss=round(rng.uniform(0.01, max_loss), 3))
        at += duration + rng.randint(*gap_ms)


class MembershipNemesis:
    """Draws the membership changes of a run, one at a time, from its own seeded stream
    (so the fault schedule of a seed is the same with or without it).

    The cluster keeps between N and `start + 2` nodes: a change is drawn among those
    that stay within bounds (an add, a removal, or a replacement, which keeps the size).
    """

    def __init__(self, seed: int, replicas: int, start: int,
                 gap_ms: tuple[int, int] = (200, 1500)) -> None:
        self.rng = random.Random(f"{seed}:membership")
        self.replicas = replicas
        self.most = max(start, replicas) + 2
        self.gap_ms = gap_ms

    def gap(self) -> int:
        """How long to wait before the next change (ms)."""
        return self.rng.randint(*self.gap_ms)

    def next(self, members: Sequence[str], spared: Sequence[str] = ()
             ) -> tuple[str, str | None]:
        """The next change, as (kind, node): ("add", None), ("remove", node), or
        ("replace", node) for a node to kill and replace. Nodes in `spared` (under
        another fault) are not killed for a replacement."""
        kinds = []
        if len(members) < self.most:
            kinds.append(ADD)
        if len(members) > self.replicas:
            kinds.append(REMOVE)
        victims = [n for n in members if n not in spared]
        if victims:
            kinds.append(REPLACE)
        kind = self.rng.choice(kinds)
        if kind == ADD:
            return kind, None
        return kind, self.rng.choice(victims if kind == REPLACE else list(members))
