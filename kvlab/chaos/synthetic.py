"""Synthetic histories from a simulated linearizable store, with anomalies on request.

Each client runs operations back to back on random keys; every operation that takes effect does
so atomically at a random instant inside its invoke..complete window, against one in-memory
register per key. The result is linearizable by construction unless anomalies are injected:

- `lost_writes`: that many acknowledged writes never reach the register;
- `stale_reads`: that many reads return a value that was certainly overwritten before they
  began (when the key's past offers one).

Used by the tests and as a benchmark: `python -m kvlab.chaos.synthetic --ops 10000 > h.jsonl`.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass

from kvlab.chaos.history import Event, Function, Status, write_history

_MS = 1_000_000  # nanoseconds


@dataclass(slots=True)
class _Op:
    process: int
    f: Function
    key: str
    value: str | None
    invoke: int
    complete: int
    status: Status
    effect: int | None  # when it takes effect; None if never


def synthetic_history(
    ops: int = 10_000,
    keys: int = 100,
    clients: int = 10,
    *,
    seed: int = 0,
    reads: float = 0.5,
    deletes: float = 0.1,
    fails: float = 0.0,
    infos: float = 0.0,
    lost_writes: int = 0,
    stale_reads: int = 0,
) -> list[Event]:
    """A history of `ops` operations by `clients` processes over `keys` keys.

    `reads` and `deletes` are the shares of each kind (the rest are writes, of unique values);
    `fails` and `infos` the shares of operations that fail or end with an unknown outcome (half
    of the unknown writes and deletes still take effect, possibly after the client gave up).
    """
    rng = random.Random(seed)
    history = _schedule(rng, ops, keys, clients, reads, deletes, fails, infos)
    writes = [op for op in history if op.f == "write" and op.status == "ok"]
    for op in rng.sample(writes, min(lost_writes, len(writes))):
        op.effect = None
    _apply(history)
    ok_reads = [op for op in history if op.f == "read" and op.status == "ok"]
    for op in rng.sample(ok_reads, min(stale_reads, len(ok_reads))):
        _make_stale(op, history)
    return _events(history)


def _schedule(
    rng: random.Random,
    count: int,
    keys: int,
    clients: int,
    reads: float,
    deletes: float,
    fails: float,
    infos: float,
) -> list[_Op]:
    history: list[_Op] = []
    clocks = [rng.randrange(_MS) for _ in range(clients)]
    for number in range(count):
        process = number % clients
        invoke = clocks[process]
        complete = invoke + rng.randrange(_MS, 5 * _MS)
        clocks[process] = complete + rng.randrange(1, _MS)
        roll = rng.random()
        f: Function = "read" if roll < reads else "delete" if roll < reads + deletes else "write"
        value = f"v{number}" if f == "write" else None
        effect: int | None = rng.randrange(invoke, complete + 1)
        roll = rng.random()
        status: Status = "fail" if roll < fails else "info" if roll < fails + infos else "ok"
        if status == "fail" or (status == "info" and rng.random() < 0.5):
            effect = None
        elif status == "info":
            effect = rng.randrange(invoke, complete + 10 * _MS)  # maybe after the timeout
        key = f"k{rng.randrange(keys)}"
        history.append(_Op(process, f, key, value, invoke, complete, status, effect))
    return history


def _apply(history: list[_Op]) -> None:
    """Run the operations that take effect, in effect order, filling in what reads saw."""
    register: dict[str, str | None] = {}
    for op in sorted((op for op in history if op.effect is not None), key=lambda op: op.effect):
        if op.f == "read":
            op.value = register.get(op.key) if op.status == "ok" else None
        else:
            register[op.key] = op.value


def _make_stale(read: _Op, history: list[_Op]) -> None:
    """Make `read` return the latest value that an acknowledged write certainly displaced."""
    acked = [
        op
        for op in history
        if op.key == read.key and op.f != "read" and op.status == "ok" and op.effect is not None
    ]
    displaced = [
        earlier
        for earlier in acked
        if earlier.f == "write"
        and any(
            later.invoke > earlier.complete and later.complete < read.invoke
            for later in acked
        )
    ]
    if displaced:
        read.value = max(displaced, key=lambda op: op.complete).value


def _events(history: list[_Op]) -> list[Event]:
    timed: list[tuple[int, int, Event]] = []
    for order, op in enumerate(history):
        sent = op.value if op.f == "write" else None
        timed.append((op.invoke, order, Event(op.process, "invoke", op.f, op.key, sent, op.invoke)))
        done = Event(op.process, op.status, op.f, op.key, op.value, op.complete)
        timed.append((op.complete, order, done))
    timed.sort(key=lambda item: item[:2])
    return [event for _, _, event in timed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvlab.chaos.synthetic",
        description="Write a synthetic history (JSON lines) to standard output.",
    )
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--infos", type=float, default=0.0, help="share of unknown outcomes")
    parser.add_argument("--fails", type=float, default=0.0, help="share of failed operations")
    parser.add_argument("--lost-writes", type=int, default=0)
    parser.add_argument("--stale-reads", type=int, default=0)
    args = parser.parse_args(argv)
    events = synthetic_history(
        args.ops, args.keys, args.clients, seed=args.seed, fails=args.fails, infos=args.infos,
        lost_writes=args.lost_writes, stale_reads=args.stale_reads,
    )
    write_history(events, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
