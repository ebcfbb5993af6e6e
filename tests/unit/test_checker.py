"""The checker: per-key linearizability, blame, budgets, and the anomaly counts."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlab.chaos.checker import check
from kvlab.chaos.history import Event, Operation
from kvlab.chaos.linearizability import Budget, linearizable
from kvlab.chaos.synthetic import synthetic_history

_processes = itertools.count()


def op(f, value, start, end, *, key="k", status="ok", process=None) -> Operation:
    """An operation over [start, end]; `end=None` means its outcome is unknown."""
    if end is None and status == "ok":
        status = "info"
    process = next(_processes) if process is None else process
    return Operation(process, f, key, value, start, end, status)


def w(value, start, end, **kw) -> Operation:
    return op("write", value, start, end, **kw)


def r(value, start, end, **kw) -> Operation:
    return op("read", value, start, end, **kw)


def d(start, end, **kw) -> Operation:
    return op("delete", None, start, end, **kw)


def verdict(*ops: Operation) -> bool | None:
    return check(list(ops)).linearizable


def test_sequential_history_passes() -> None:
    result = check([r(None, 0, 1), w("a", 2, 3), r("a", 4, 5), w("b", 6, 7), r("b", 8, 9)])
    assert result.linearizable is True
    assert (result.ops, result.ok, result.violations) == (5, 5, [])


def test_reading_an_overwritten_value_fails_and_names_the_key() -> None:
    result = check([w("a", 0, 1, key="x"), r("a", 0, 1, key="y"), w("a", 0, 1, key="y"),
                    w("b", 2, 3, key="x"), r("a", 4, 5, key="x"), r("a", 6, 7, key="y")])
    assert result.linearizable is False
    [violation] = result.violations
    assert violation["key"] == "x"
    assert [(o["f"], o["value"]) for o in violation["operations"]] == [
        ("write", "a"), ("write", "b"), ("read", "a")
    ]


def test_concurrent_operations_may_order_either_way() -> None:
    assert verdict(w("a", 0, 10), w("b", 1, 11), r("a", 12, 13)) is True
    assert verdict(w("a", 0, 10), w("b", 1, 11), r("b", 12, 13)) is True
    assert verdict(w("a", 0, 10), r("a", 1, 2), r(None, 3, 4)) is False  # no going back
    assert verdict(w("a", 0, 10), r(None, 1, 2), r("a", 3, 4)) is True


def test_touching_intervals_count_as_concurrent() -> None:
    # The write completes at the instant the read begins: a clock tie, not an order.
    assert verdict(w("a", 0, 5), w("b", 5, 9), r("a", 9, 12)) is True
    assert verdict(w("a", 0, 5), w("b", 6, 8), r("a", 9, 12)) is False


def test_unknown_write_may_take_effect_late_or_never() -> None:
    assert verdict(w("a", 0, 1), w("b", 2, None), r("a", 10, 11)) is True
    assert verdict(w("a", 0, 1), w("b", 2, None), r("b", 10, 11)) is True
    assert verdict(w("a", 0, 1), w("b", 2, None), r("a", 10, 11), r("b", 12, 13)) is True
    # but once seen it stays, and never before its invoke
    assert verdict(w("a", 0, 1), w("b", 2, None), r("b", 10, 11), r("a", 12, 13)) is False
    assert verdict(r("b", 0, 1), w("b", 2, None)) is False


def test_unknown_reads_constrain_nothing() -> None:
    assert verdict(w("a", 0, 1), r("zzz", 2, None)) is True


def test_failed_operations_are_ignored() -> None:
    result = check([w("a", 0, 1), w("b", 2, 3, status="fail"), r("a", 4, 5)])
    assert (result.linearizable, result.fail, result.ok) == (True, 1, 2)
    assert verdict(w("b", 0, 1, status="fail"), r("b", 2, 3)) is False


def test_deletes() -> None:
    assert verdict(w("a", 0, 1), d(2, 3), r(None, 4, 5)) is True
    assert verdict(w("a", 0, 1), d(2, None), r(None, 4, 5)) is True
    result = check([w("a", 0, 1), r(None, 4, 5)])
    assert result.linearizable is False
    assert (result.stale_reads, result.lost_writes) == (1, 1)


def test_events_are_paired_and_counted() -> None:
    events = [
        Event(1, "invoke", "write", "k", "a", 0),
        Event(2, "invoke", "write", "k", "b", 1),
        Event(3, "invoke", "read", "k", None, 2),
        Event(1, "ok", "write", "k", "a", 3),
        Event(2, "fail", "write", "k", "b", 4),
        Event(3, "info", "read", "k", None, 5),
        Event(1, "invoke", "read", "k", None, 6),
        Event(1, "ok", "read", "k", "a", 7),
        Event(2, "invoke", "delete", "k", None, 8),
    ]
    result = check(events).to_json()
    assert {k: result[k] for k in ("ops", "ok", "fail", "info", "linearizable")} == {
        "ops": 5, "ok": 2, "fail": 1, "info": 2, "linearizable": True
    }


def test_stale_read_and_lost_write_counts() -> None:
    history = [w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)]
    result = check(history)
    assert (result.stale_reads, result.lost_writes) == (1, 1)
    # "b" shows up later: the read was stale, but the write was not lost
    result = check([*history, r("b", 6, 7)])
    assert (result.stale_reads, result.lost_writes) == (1, 0)
    # the overwrite was concurrent with the read: not certainly stale
    result = check([w("a", 0, 1), w("b", 2, 6), r("a", 4, 5), r("b", 7, 8)])
    assert (result.stale_reads, result.lost_writes, result.linearizable) == (0, 0, True)


def test_anomalies_need_certainty() -> None:
    # The overwriting write's outcome is unknown, so it proves nothing.
    result = check([w("a", 0, 1), w("b", 2, None), r("a", 4, 5)])
    assert (result.stale_reads, result.lost_writes, result.linearizable) == (0, 0, True)
    # A read of a value nothing wrote is a violation, but no stale read.
    result = check([w("a", 0, 1), r("ghost", 4, 5)])
    assert (result.stale_reads, result.linearizable) == (0, False)
    assert result.violations[0]["reason"] == "read returned 'ghost' before anything wrote it"
    # Nor is a read of a value written only later.
    result = check([w("a", 0, 1), r("b", 2, 3), w("b", 4, 5)])
    assert (result.stale_reads, result.linearizable) == (0, False)
    assert [o["f"] for o in result.violations[0]["operations"]] == ["read"]


def test_non_monotonic_reads_are_blamed_minimally() -> None:
    # No stale read (b's write is concurrent with both reads), yet no order exists.
    history = [w("a", 0, 1), w("b", 2, 20), r("b", 3, 4), r("a", 5, 6), w("z", 30, 31)]
    result = check(history)
    assert (result.stale_reads, result.linearizable) == (0, False)
    blamed = result.violations[0]["operations"]
    assert [(o["f"], o["value"]) for o in blamed] == [
        ("write", "a"), ("write", "b"), ("read", "b"), ("read", "a")
    ]


def _hard_history(width: int) -> list[Operation]:
    """Concurrent writes read back in reverse order: taking writes in invoke order (as the
    search does) dead-ends, so it tries many subsets before finding the one good order."""
    reads = [r(f"v{i}", 2 * (width - i), 2 * (width - i) + 1) for i in range(width)]
    return [w(f"v{i}", 0, 100) for i in range(width)] + reads


def test_state_budget_gives_unknown() -> None:
    ops = _hard_history(10)
    assert linearizable(ops) is True
    assert linearizable(ops, Budget(max_states=50)) is None
    result = check(ops, max_states=50)
    assert (result.linearizable, result.unknown_keys) == (None, ["k"])


def test_zero_time_limit_gives_unknown() -> None:
    result = check(synthetic_history(200, keys=3, clients=4), time_limit=0)
    assert result.linearizable is None
    assert result.unknown_keys == ["k0", "k1", "k2"]


@pytest.mark.parametrize("seed", range(3))
def test_synthetic_linearizable_history_passes(seed: int) -> None:
    history = synthetic_history(2000, keys=20, clients=10, seed=seed, infos=0.05, fails=0.05)
    result = check(history)
    assert (result.linearizable, result.stale_reads, result.lost_writes) == (True, 0, 0)
    assert result.ops == 2000 and result.fail > 0 and result.info > 0


def test_injected_anomalies_are_found_with_evidence_that_stands_alone() -> None:
    history = synthetic_history(2000, keys=20, clients=10, seed=1, stale_reads=3)
    result = check(history)
    assert result.linearizable is False
    assert result.stale_reads >= 3
    for violation in result.violations:
        blamed = [Operation(**o) for o in violation["operations"]]
        assert linearizable(blamed) is False
        assert 1 <= len(blamed) <= 4


def test_result_is_flat_json() -> None:
    data = check([w("a", 0, 1), r("b", 2, 3, process=7)]).to_json()
    assert set(data) == {
        "ops", "ok", "fail", "info", "lost_writes", "stale_reads", "linearizable",
        "violations", "unknown_keys",
    }
    assert data["violations"] == [{
        "key": "k",
        "operations": [{"process": 7, "f": "read", "key": "k", "value": "b",
                        "invoke_time": 2, "complete_time": 3, "status": "ok"}],
        "reason": "read returned 'b' before anything wrote it",
    }]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    ops=st.integers(1, 60),
    keys=st.integers(1, 3),
    clients=st.integers(1, 8),
    infos=st.sampled_from([0.0, 0.2]),
    fails=st.sampled_from([0.0, 0.2]),
)
def test_histories_from_a_register_are_linearizable(seed, ops, keys, clients, infos, fails):
    history = synthetic_history(ops, keys, clients, seed=seed, infos=infos, fails=fails)
    result = check(history)
    assert (result.linearizable, result.stale_reads, result.lost_writes) == (True, 0, 0)


def _brute_force(ops: list[Operation]) -> bool:
    """Try every order of every subset that keeps all ok operations."""
    ops = [o for o in ops if o.status == "ok" or (o.status == "info" and o.f != "read")]
    optional = [o for o in ops if o.status == "info"]
    for keep in itertools.product([False, True], repeat=len(optional)):
        chosen = [o for o in ops if o.status == "ok"]
        chosen += [o for o, k in zip(optional, keep) if k]
        for order in itertools.permutations(chosen):
            if _valid(order):
                return True
    return False


def _valid(order) -> bool:
    state = None
    for i, a in enumerate(order):
        if any(b.complete_time is not None and b.complete_time < a.invoke_time
               for b in order[i + 1:]):
            return False
        if a.f == "read":
            if a.value != state:
                return False
        else:
            state = a.value
    return True


@st.composite
def _small_op(draw) -> Operation:
    f = draw(st.sampled_from(["read", "write", "delete"]))
    # Few values, so writes repeat them: the search must not rely on uniqueness.
    value = {"read": draw(st.sampled_from([None, "a", "b"])), "write": draw(
        st.sampled_from(["a", "b"])), "delete": None}[f]
    start = draw(st.integers(0, 12))
    unknown = draw(st.integers(0, 3)) == 0
    return op(f, value, start, None if unknown else start + draw(st.integers(0, 6)))


@settings(max_examples=300, deadline=None)
@given(st.lists(_small_op(), max_size=6))
def test_search_agrees_with_brute_force(ops: list[Operation]) -> None:
    expected = _brute_force(ops)
    assert linearizable(ops) is expected
    result = check(ops)
    assert result.linearizable is expected
    if result.stale_reads or result.lost_writes:
        assert not expected
    for violation in result.violations:
        assert not _brute_force([Operation(**o) for o in violation["operations"]])
