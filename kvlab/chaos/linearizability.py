"""Is one key's history linearizable? A Wing–Gong/Lowe search over a read/write/delete register.

The model: the register starts absent; a write sets a value, a delete sets it absent, and an
ok read must return the current value. An operation `a` precedes `b` in real time only when
`a` completed strictly before `b` was invoked; equal timestamps count as concurrent, so clock
ties never produce a false violation.

The search (Wing & Gong 1993, with Lowe's memoisation, as in Knossos and Porcupine) walks the
invoke/return events in time order, tentatively linearizing any pending operation that the
model accepts, and backtracks when it meets the return of an operation it has not yet placed.
Configurations (set of linearized operations, register state) already explored are not
explored again. An operation with an unknown outcome has no return event, so it may be placed
anywhere after its invoke or left out; the search succeeds once every ok operation is placed.

Correctness does not assume write values are unique.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from kvlab.chaos.history import Operation

# How many search steps pass between looks at the clock: often enough to stop promptly,
# rarely enough that time.monotonic() stays off the profile.
_CLOCK_EVERY = 512
_DEAD = object()  # a register state that no unplaced read returns


@dataclass(slots=True)
class Budget:
    """When a search must give up: a `time.monotonic()` deadline and/or a count of states."""

    deadline: float | None = None
    max_states: int | None = None

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def relevant(ops: Sequence[Operation]) -> list[Operation]:
    """The operations that can constrain the register's order.

    Dropped: failed operations (they did not happen), reads with an unknown result (they
    observe nothing), and unknown-outcome writes and deletes whose value no ok read returned.
    Leaving such a write out of any linearization keeps it valid: no read falls in the span
    where it would have been the register's value, since no read returned that value.
    """
    observed = {op.value for op in ops if op.f == "read" and op.status == "ok"}
    return [
        op
        for op in ops
        if op.status == "ok" or (op.status == "info" and op.f != "read" and op.value in observed)
    ]


def linearizable(ops: Sequence[Operation], budget: Budget | None = None) -> bool | None:
    """Whether one key's operations can be ordered as a single register.

    Returns True or False, or None if `budget` ran out first.
    """
    ops = sorted(relevant(ops), key=lambda op: op.invoke_time)
    need = sum(op.status == "ok" for op in ops)
    if need == 0:
        return True
    return _Search(ops, budget or Budget()).run(need)


class _Search:
    """One WGL search, with two prunings that keep hot keys tractable.

    - A pending read that the current state satisfies is placed at once, and that choice is
      never revisited: in any linearization that extends the current prefix, the read can be
      moved up to right after the prefix (it changes no state, and everything that must
      precede it is already in the prefix). So if the prefix plus the read fails, so does the
      prefix.
    - A state that no unplaced read returns is as good as any other such state: they are all
      folded into `_DEAD`, so the memo recognises them as one.

    The placed set is stored as (base, rest): every operation (in invoke order) below `base`
    is placed, and bit i of `rest` marks operation base + i. Old operations are all placed, so
    the integers stay as small as the window of concurrent operations, not the history.
    """

    def __init__(self, ops: list[Operation], budget: Budget) -> None:
        self.budget = budget
        self.is_read = [op.f == "read" for op in ops]
        self.is_ok = [op.status == "ok" for op in ops]
        self.values = [op.value for op in ops]
        # Entries 1..n in time order; at a tie, invokes first so touching operations
        # overlap. Entry 0 heads the list and also ends it. Unknown outcomes never return.
        marks = [(op.invoke_time, 0, index) for index, op in enumerate(ops)]
        marks += [(op.complete_time, 1, i) for i, op in enumerate(ops) if op.status == "ok"]
        marks.sort()
        count = len(marks)
        self.is_call = [False] * (count + 1)
        self.op_of = [0] * (count + 1)
        self.partner = [0] * (count + 1)  # call entry -> its return entry, 0 for none
        call_entry = [0] * len(ops)
        for entry, (_, kind, index) in enumerate(marks, 1):
            self.op_of[entry] = index
            if kind == 0:
                self.is_call[entry] = True
                call_entry[index] = entry
            else:
                self.partner[call_entry[index]] = entry
        self.after = list(range(1, count + 2))
        self.after[count] = 0
        self.before = list(range(-1, count))
        # Unplaced ok reads by the value they returned: which states are still alive.
        self.wanted: dict[str | None, int] = {}
        for op in ops:
            if op.f == "read":
                self.wanted[op.value] = self.wanted.get(op.value, 0) + 1

    def _settle(self, value: object) -> object:
        return value if self.wanted.get(value) else _DEAD  # type: ignore[call-overload]

    def _lift(self, entry: int) -> None:
        after, before = self.after, self.before
        for node in (entry, self.partner[entry]):
            if node:
                after[before[node]] = after[node]
                before[after[node]] = before[node]

    def _restore(self, entry: int) -> None:
        after, before = self.after, self.before
        for node in (self.partner[entry], entry):
            if node:
                after[before[node]] = node
                before[after[node]] = node

    def run(self, need: int) -> bool | None:
        after, is_call, op_of = self.after, self.is_call, self.op_of
        is_read, is_ok, values, wanted = self.is_read, self.is_ok, self.values, self.wanted
        budget, max_states = self.budget, self.budget.max_states
        seen: set[tuple[int, int, object]] = set()
        # Frames: (entry placed, base, rest, state before it, whether it was forced).
        stack: list[tuple[int, int, int, object, bool]] = []
        base, rest, state = 0, 0, self._settle(None)
        placed_ok = 0
        reads_pass = True  # first place every satisfied read, then try writes
        entry = after[0]
        steps = 0
        while True:
            steps += 1
            if steps % _CLOCK_EVERY == 1 and budget.expired():
                return None
            if not is_call[entry]:
                if reads_pass:
                    reads_pass, entry = False, after[0]
                    continue
                # The return of an unplaced operation: undo back to the last free choice.
                while True:
                    if not stack:
                        return False
                    entry, base, rest, state, forced = stack.pop()
                    index = op_of[entry]
                    self._restore(entry)
                    if is_read[index]:
                        wanted[values[index]] += 1
                    placed_ok -= is_ok[index]
                    if not forced:
                        break
                entry = after[entry]
                continue
            index = op_of[entry]
            if is_read[index] != reads_pass or (reads_pass and values[index] != state):
                entry = after[entry]
                continue
            if reads_pass:
                wanted[values[index]] -= 1
            new_rest = rest | (1 << (index - base))
            shift = ((new_rest + 1) & ~new_rest).bit_length() - 1  # trailing ones
            config = (base + shift, new_rest >> shift, self._settle(values[index]))
            if config in seen:
                if not reads_pass:
                    entry = after[entry]
                    continue
                # The prefix plus this read already failed, so the prefix fails: backtrack.
                wanted[values[index]] += 1
                reads_pass, entry = False, 0
                continue
            if max_states is not None and len(seen) >= max_states:
                return None
            seen.add(config)
            stack.append((entry, base, rest, state, reads_pass))
            self._lift(entry)
            base, rest, state = config
            placed_ok += is_ok[index]
            if placed_ok == need:
                return True
            reads_pass, entry = True, after[0]


def blame(ops: Sequence[Operation], budget: Budget) -> list[Operation]:
    """A small subset of a non-linearizable key's operations that is still non-linearizable.

    Not every subset proves anything: drop the write a read returned and the read fails for
    no fault of the store. So a write or delete is only ever dropped together with every read
    that returned its value. Then the subset is a certificate: any linearization of the whole
    would restrict to one of the subset (each dropped write sets a value no remaining read
    sees), so the subset failing proves the whole fails.

    Tries dropping halves, then quarters, down to single operations, and repeats single drops
    until none helps (every operation left is needed) or the budget runs out.
    """
    ops = relevant(ops)
    chunk = max(len(ops) // 2, 1)
    while True:
        changed = False
        start = 0
        while start < len(ops):
            if budget.expired():
                return ops
            kept = _without(ops, start, chunk)
            if kept and linearizable(kept, budget) is False:
                ops = kept
                changed = True
            else:
                start += chunk
        if chunk > 1:
            chunk //= 2
        elif not changed:
            return ops


def _without(ops: list[Operation], start: int, count: int) -> list[Operation]:
    """`ops` less `ops[start:start + count]` and the reads of values those wrote."""
    written = {op.value for op in ops[start : start + count] if op.f != "read"}
    kept = ops[:start] + ops[start + count :]
    return [op for op in kept if op.f != "read" or op.value not in written]
