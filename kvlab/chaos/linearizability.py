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
_REJECT = object()  # the model refuses the operation in this state


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
    ops = relevant(ops)
    need = sum(op.status == "ok" for op in ops)
    if need == 0:
        return True
    budget = budget or Budget()

    # Entries 1..n in time order; at a tie, invokes first so touching operations overlap.
    # Entry 0 is the list head. An unknown-outcome operation gets no return entry.
    marks = [(op.invoke_time, 0, index) for index, op in enumerate(ops)]
    marks += [(op.complete_time, 1, index) for index, op in enumerate(ops) if op.status == "ok"]
    marks.sort()
    count = len(marks)
    is_call = [False] * (count + 1)
    op_of = [0] * (count + 1)
    partner = [0] * (count + 1)  # call entry -> its return entry (0 for none)
    call_entry = [0] * len(ops)
    for entry, (_, kind, index) in enumerate(marks, 1):
        op_of[entry] = index
        if kind == 0:
            is_call[entry] = True
            call_entry[index] = entry
        else:
            partner[call_entry[index]] = entry
    after = list(range(1, count + 2))
    after[count] = 0  # 0 ends the list as well as heading it
    before = list(range(-1, count))

    functions = [op.f for op in ops]
    values = [op.value for op in ops]
    is_ok = [op.status == "ok" for op in ops]

    def unlink(entry: int) -> None:
        after[before[entry]] = after[entry]
        before[after[entry]] = before[entry]

    def relink(entry: int) -> None:
        after[before[entry]] = entry
        before[after[entry]] = entry

    seen: set[tuple[int, str | None]] = set()
    stack: list[tuple[int, str | None]] = []
    state: str | None = None
    placed = 0  # linearized bitmask
    placed_ok = 0
    steps = 0
    max_states = budget.max_states
    entry = after[0]
    while True:
        steps += 1
        if steps % _CLOCK_EVERY == 1 and budget.expired():
            return None
        if is_call[entry]:
            index = op_of[entry]
            function = functions[index]
            if function == "read":
                new_state = state if values[index] == state else _REJECT
            elif function == "write":
                new_state = values[index]
            else:
                new_state = None
            if new_state is not _REJECT:
                config = (placed | (1 << index), new_state)
                if config not in seen:
                    if max_states is not None and len(seen) >= max_states:
                        return None
                    seen.add(config)
                    stack.append((entry, state))
                    placed, state = config
                    unlink(entry)
                    if partner[entry]:
                        unlink(partner[entry])
                    if is_ok[index]:
                        placed_ok += 1
                        if placed_ok == need:
                            return True
                    entry = after[0]
                    continue
            entry = after[entry]
        else:
            # The return of an operation not yet placed: everything placed so far must go.
            if not stack:
                return False
            entry, state = stack.pop()
            index = op_of[entry]
            placed &= ~(1 << index)
            if is_ok[index]:
                placed_ok -= 1
            if partner[entry]:
                relink(partner[entry])
            relink(entry)
            entry = after[entry]


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
            dropped = ops[start : start + chunk]
            kept = ops[:start] + ops[start + chunk :]
            if _drop_is_sound(dropped, kept) and linearizable(kept, budget) is False:
                ops = kept
                changed = True
            else:
                start += chunk
        if chunk > 1:
            chunk //= 2
        elif not changed:
            return ops


def _drop_is_sound(dropped: Sequence[Operation], kept: Sequence[Operation]) -> bool:
    if not kept:
        return False
    written = {op.value for op in dropped if op.f != "read"}
    return not any(op.f == "read" and op.value in written for op in kept)
