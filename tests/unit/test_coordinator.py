"""The coordinator state machine, wired to in-memory replicas (no IO, explicit delivery).

Every test runs on `CoreCluster` (tests/unit/core_harness.py): the real `Coordinator` and
`Replica`s on memory stores, effects delivered at once unless a node is down or silent.
"""

from __future__ import annotations

import pytest

from kvlab.core.coordinator import MAX_RESTAMPS, Coordinator, Quorum
from kvlab.core.messages import (
    NOT_FOUND,
    OK,
    Persist,
    TIMEOUT,
    UNAVAILABLE,
    ErrorReply,
    HintRequest,
    ReadReply,
    Send,
    Superseded,
    WriteReply,
    WriteRequest,
)
from kvlab.core.record import Record
from kvlab.core.ring import Ring
from kvlab.core.version import MAX_AHEAD_MS, Version
from tests.unit.core_harness import COORD, NODES, CoreCluster


def held_to(h: CoreCluster, node: str) -> list[Send]:
    return [send for _, send in h.held if send.node == node]


def value_on(h: CoreCluster, node: str, key: str) -> bytes | None:
    record = h.stores[node].get(key)
    return None if record is None else record.value


def plant(h: CoreCluster, node: str, record: Record, now_ms: int | None = None) -> None:
    """Store `record` on `node` as if another coordinator had written it there, at `now_ms`
    on the node's clock."""
    now = h.now if now_ms is None else now_ms
    replica = h.replicas[node]
    for effect in replica.receive("other", WriteRequest(10**9, record), now):
        assert isinstance(effect, Persist), effect
        h.stores[node].write(effect)
        replica.persisted(effect.batch, now)  # the acknowledgement goes nowhere


def fallbacks(h: CoreCluster, key: str) -> tuple[str, ...]:
    """The nodes past the key's preference list, clockwise: the fallbacks, in order."""
    return h.ring.preference_list(key, len(NODES))[len(h.prefs(key)):]


# -- reads and writes -----------------------------------------------------------------


def test_write_then_read_returns_the_value_with_its_replicas():
    h = CoreCluster()
    w = h.write("k", b"v1")
    assert w.status == OK and len(w.acked) == 2 and w.hinted == {}
    r = h.read("k")
    assert r.status == OK and r.record.value == b"v1" and r.record.version == w.record.version
    assert set(r.replicas) == set(h.prefs("k"))
    # All three replicas got the write, not just the two the quorum waited for.
    assert all(value_on(h, n, "k") == b"v1" for n in h.prefs("k"))


def test_read_picks_the_newest_version_and_repairs_stale_replicas():
    h = CoreCluster(hints=False)  # hints would heal `third` on their own
    first, second, third = h.prefs("k")
    h.write("k", b"old")
    h.silent.add(third)  # third misses the overwrite
    h.write("k", b"new")
    h.silent.clear()
    h.held.clear()  # the overwrite never reached it
    assert value_on(h, third, "k") == b"old"
    r = h.read("k", r=3)
    assert r.record.value == b"new"
    assert value_on(h, third, "k") == b"new", "read repair did not fix the stale replica"
    assert h.replicas[third].stats.repaired["read_repair"] == 1


def test_late_reply_after_quorum_is_repaired_too():
    h = CoreCluster(hints=False)
    a, b, c = h.prefs("k")
    h.silent.add(c)
    h.write("k", b"v")  # c holds nothing
    h.held.clear()
    r = h.read("k")  # R=2 answered by a and b, c's reply comes later
    assert r.status == OK and r.record.value == b"v"
    assert value_on(h, c, "k") is None
    h.silent.clear()
    h.release()
    assert value_on(h, c, "k") == b"v"


def test_missing_key_is_not_found_and_unreachable_is_unavailable():
    h = CoreCluster()
    assert h.read("nope").status == NOT_FOUND
    h.down.update(h.prefs("nope")[:2])
    r = h.read("nope")
    assert r.status == UNAVAILABLE
    assert set(r.failed) == set(h.prefs("nope")[:2])


def test_write_fails_fast_when_quorum_is_impossible_but_reports_partial_storage():
    h = CoreCluster()
    a, b, c = h.prefs("k")
    h.down.update({b, c})
    w = h.write("k", b"v")
    assert w.status == UNAVAILABLE and w.needed == 2
    assert value_on(h, a, "k") == b"v"  # partially applied, as in Dynamo


def test_silent_replicas_time_out():
    h = CoreCluster()
    h.silent.update(h.prefs("k")[:2])
    op, effects = h.coord.read("k", h.now)
    h.apply(COORD, effects)
    assert op not in h.done
    h.fire_timers()
    assert h.done[op].status == TIMEOUT
    assert set(h.done[op].pending) == set(h.prefs("k")[:2])


def test_delete_is_a_tombstone_that_a_stale_replica_cannot_undo():
    h = CoreCluster(hints=False)
    a, b, c = h.prefs("k")
    h.write("k", b"v")
    h.silent.add(c)
    assert h.write("k", None).status == OK
    h.held.clear()
    h.silent.clear()
    assert value_on(h, c, "k") == b"v"  # c missed the delete
    r = h.read("k", r=3)
    assert r.status == NOT_FOUND
    assert h.stores[c].get("k").tombstone, "the tombstone was not repaired onto c"


def test_a_replica_answers_superseded_to_an_older_write_and_keeps_its_value():
    h = CoreCluster()
    node = h.prefs("k")[0]
    held = h.write("k", b"new").record.version
    older = Record("k", b"older", Version(1, 0, "p"))
    effects = h.replicas[node].receive(COORD, WriteRequest(999, older), h.now)
    assert effects == [Send(COORD, Superseded(999, held))]
    assert value_on(h, node, "k") == b"new"


def test_quorum_overrides_are_validated():
    h = CoreCluster()
    with pytest.raises(ValueError):
        h.coord.read("k", 1, r=4)
    with pytest.raises(ValueError):
        h.coord.write("k", b"v", 1, w=0)
    assert len(h.write("k", b"v", w=3).acked) == 3
    with pytest.raises(ValueError):
        Quorum(3, 2, 4)
    assert Quorum(3, 2, 2).overlapping and not Quorum(3, 1, 1).overlapping


def test_error_reply_counts_as_a_failure():
    h = CoreCluster()
    a, b, c = h.prefs("k")
    h.silent.update({a, b, c})
    op, effects = h.coord.write("k", b"v", h.now)
    h.apply(COORD, effects)
    for send in h.held[:2]:
        h.apply(COORD, h.coord.receive(send[1].node, ErrorReply(send[1].message.req,
                                                                "disk full"), h.now))
    assert h.done[op].status == UNAVAILABLE
    assert "disk full" in h.done[op].failed.values()


def test_inspect_reports_each_replica_without_repairing():
    h = CoreCluster(hints=False)
    a, b, c = h.prefs("k")
    h.silent.add(c)
    h.write("k", b"v")
    h.held.clear()
    h.silent.clear()
    h.down.add(b)
    op, effects = h.coord.inspect("k", h.now)
    h.apply(COORD, effects)
    out = h.done[op]
    assert out.answers[a].value == b"v" and out.answers[c] is None and b in out.failed
    assert h.stores[c].get("k") is None


def test_finished_operations_leave_no_state_behind():
    h = CoreCluster()
    for i in range(50):
        h.write(f"k{i}", b"v")
        h.read(f"k{i}")
    assert h.coord.pending_ops() == 0


def test_a_read_writes_back_a_half_applied_write_before_answering():
    """R+W>N: once a read has returned a value, no later read may return an older one."""
    h = CoreCluster(hints=False)
    a, b, c = h.prefs("k")
    h.write("k", b"v1")
    h.down.update({b, c})
    assert h.write("k", b"v2").status == UNAVAILABLE  # only `a` stored v2
    h.down.clear()
    h.silent.add(c)
    first = h.read("k")  # answered by a (v2) and b (v1)
    assert first.status == OK and first.record.value == b"v2"
    assert value_on(h, b, "k") == b"v2", "the read answered before writing v2 back"
    h.silent.clear()
    h.held.clear()
    h.down.add(a)
    second = h.read("k")  # b and c: without the write-back this would be v1
    assert second.record.value == b"v2"


def test_weak_reads_do_not_wait_for_the_write_back():
    h = CoreCluster(Quorum(3, 1, 1), hints=False)
    a, b, c = h.prefs("k")
    h.silent.update({b, c})
    h.write("k", b"v1")
    h.silent = {c}
    h.held.clear()
    op, effects = h.coord.read("k", h.now)
    h.apply(COORD, effects)
    assert h.done[op].status == OK  # answered by the first reply


def test_a_read_whose_write_back_cannot_finish_times_out():
    h = CoreCluster(hints=False)
    a, b, c = h.prefs("k")
    h.down.update({b, c})
    h.write("k", b"v")  # only `a` has it
    h.down.clear()
    h.silent.update({b, c})
    op, effects = h.coord.read("k", h.now)
    h.apply(COORD, effects)
    # b answers "missing"; the repair to b is then held: b went quiet.
    [answer] = h.replicas[b].receive(COORD, held_to(h, b)[0].message, h.now)
    h.apply(COORD, h.coord.receive(b, answer.message, h.now))
    assert any(isinstance(s.message, WriteRequest) for s in held_to(h, b))
    assert op not in h.done, "answered before the value was on W replicas"
    h.fire_timers()
    assert h.done[op].status == TIMEOUT
    assert h.coord.pending_ops() == 0


def test_a_read_fails_fast_when_the_write_back_cannot_reach_w():
    """R=1 W=3: the value must be on all three replicas; one is down, so fail now (503)."""
    h = CoreCluster(Quorum(3, 1, 3))
    a, b, c = h.prefs("k")
    h.write("k", b"v")
    h.down.add(c)
    op, effects = h.coord.read("k", h.now)
    h.apply(COORD, effects)
    assert h.done[op].status == UNAVAILABLE and c in h.done[op].failed
    h.fire_timers()
    assert h.coord.pending_ops() == 0


def test_a_read_fails_fast_when_a_needed_repair_is_refused():
    h = CoreCluster(hints=False)
    a, b, c = h.prefs("k")
    h.down.update({b, c})
    h.write("k", b"v")  # only `a` holds it
    h.down = {c}
    h.silent.add(b)
    op, effects = h.coord.read("k", h.now)
    h.apply(COORD, effects)
    read_to_b = held_to(h, b)[0]
    h.held.clear()
    h.silent.clear()
    h.down.add(b)  # b answers "missing", then dies before the repair reaches it
    [answer] = h.replicas[b].receive(COORD, read_to_b.message, h.now)
    assert isinstance(answer.message, ReadReply) and answer.message.record is None
    h.apply(COORD, h.coord.receive(b, answer.message, h.now))
    assert h.done[op].status == UNAVAILABLE
    assert h.done[op].failed[b].startswith("repair")


# -- superseded writes: a write is acknowledged only if it took effect ------------------


def test_a_write_below_a_newer_stored_version_is_restamped_above_it():
    """Another coordinator, its clock 5 s ahead, wrote the key: ours re-stamps and wins."""
    h = CoreCluster()
    ahead = Version(h.now + 5_000, 3, "q")
    for node in h.prefs("k"):
        plant(h, node, Record("k", b"from q", ahead))
    w = h.write("k", b"ours")
    assert w.status == OK
    assert w.record.version > ahead and w.record.version.coordinator == COORD
    assert h.coord.restamped == 1
    assert all(value_on(h, n, "k") == b"ours" for n in h.prefs("k"))
    assert h.read("k", r=3).record.value == b"ours"


def test_one_replica_ahead_is_enough_to_restamp():
    h = CoreCluster()
    a, b, c = h.prefs("k")
    plant(h, c, Record("k", b"newer", Version(h.now + 2_000, 0, "q")))
    w = h.write("k", b"ours", w=3)
    assert w.status == OK and h.coord.restamped == 1
    assert all(value_on(h, n, "k") == b"ours" for n in (a, b, c))


def test_a_version_no_restamp_can_pass_fails_the_write_never_acknowledges_it():
    """A replica holds a version an hour ahead (accepted when its own clock was wrong): the
    coordinator ignores such a version, so its re-stamps stay below it; the write fails."""
    h = CoreCluster()
    far = Version(h.now + 3_600_000, 0, "q")
    for node in h.prefs("k"):
        plant(h, node, Record("k", b"future", far), now_ms=far.physical)
    w = h.write("k", b"ours")
    assert w.status == UNAVAILABLE
    assert all(reason.startswith("superseded by") for reason in w.failed.values())
    assert h.coord.restamped == MAX_RESTAMPS
    assert h.coord.clock.high_water_ms < far.physical
    assert all(value_on(h, n, "k") == b"future" for n in h.prefs("k"))


# -- hinted handoff -------------------------------------------------------------------


def test_a_missed_write_is_hinted_to_the_next_node_past_the_preference_list():
    h = CoreCluster()
    a, b, c = h.prefs("k")
    first = fallbacks(h, "k")[0]
    h.down.add(c)
    w = h.write("k", b"v")
    assert w.status == OK and set(w.acked) == {a, b}
    hints = [s for src, s in h.sent if isinstance(s.message, HintRequest)]
    assert [(s.node, s.message.target) for s in hints] == [(first, c)]
    assert h.replicas[first].hints_held() == {c: 1}
    assert h.coord.hints_sent == 1


def test_strict_hints_for_two_missed_primaries_both_go_to_the_first_fallback():
    h = CoreCluster(Quorum(3, 1, 1))
    a, b, c = h.prefs("k")
    f1, f2 = fallbacks(h, "k")
    h.down.update({b, c})
    assert h.write("k", b"v").status == OK
    assert h.replicas[f1].hints_held() == {b: 1, c: 1}
    assert h.replicas[f2].hints_held() == {}


def test_sloppy_hints_stand_in_for_distinct_primaries_on_distinct_fallbacks():
    h = CoreCluster(Quorum(3, 3, 3))
    a, b, c = h.prefs("k")
    f1, f2 = fallbacks(h, "k")
    h.down.update({b, c})
    w = h.write("k", b"v", sloppy=True)
    assert w.status == OK and w.acked == (a,) and w.hinted == {b: f1, c: f2}


@pytest.mark.parametrize("sloppy", [True, False])
def test_a_hint_skips_a_down_fallback(sloppy):
    h = CoreCluster()
    a, b, c = h.prefs("k")
    f1, f2 = fallbacks(h, "k")
    h.down.update({c, f1})
    # Sloppy with W=3: the hint on f2 is what makes the quorum; strict W=2: a and b do.
    w = h.write("k", b"v", sloppy=True, w=3) if sloppy else h.write("k", b"v")
    assert w.status == OK
    if sloppy:
        assert w.hinted == {c: f2}
    assert h.replicas[f2].hints_held() == {c: 1}


def test_strict_hints_do_not_count_toward_w():
    h = CoreCluster()
    a, b, c = h.prefs("k")
    f1, f2 = fallbacks(h, "k")
    h.down.update({b, c})
    w = h.write("k", b"v")
    assert w.status == UNAVAILABLE  # the hints, acknowledged or not, were not counted
    assert w.acked == (a,)
    # The hints were kept all the same: the write reaches b and c once they are back.
    assert h.replicas[f1].hints_held() == {b: 1, c: 1}


def test_sloppy_hints_count_toward_w():
    h = CoreCluster()
    a, b, c = h.prefs("k")
    f1, f2 = fallbacks(h, "k")
    h.down.update({b, c})
    w = h.write("k", b"v", sloppy=True)
    assert w.status == OK
    # W=2: a's acknowledgement and one hint; the other hint is kept, but not waited for.
    assert w.acked == (a,) and w.hinted == {b: f1}
    assert h.replicas[f2].hints_held() == {c: 1}


def test_sloppy_writes_fail_without_enough_nodes_even_for_hints():
    h = CoreCluster()
    a, b, c = h.prefs("k")
    f1, f2 = fallbacks(h, "k")
    h.down.update({b, c, f1, f2})
    w = h.write("k", b"v", sloppy=True)
    assert w.status == UNAVAILABLE and w.hinted == {}


def test_sloppy_needs_hints_on():
    h = CoreCluster(hints=False)
    h.down.update(h.prefs("k")[1:])
    w = h.write("k", b"v", sloppy=True)
    assert w.status == UNAVAILABLE and h.coord.hints_sent == 0


def test_a_silent_primary_is_hinted_at_the_deadline():
    h = CoreCluster()
    a, b, c = h.prefs("k")
    h.silent.add(c)
    assert h.write("k", b"v").status == OK
    assert h.coord.hints_sent == 0  # c may still answer
    h.fire_timers()
    assert h.replicas[fallbacks(h, "k")[0]].hints_held() == {c: 1}


def test_the_hint_is_handed_over_when_the_primary_is_back():
    h = CoreCluster()
    a, b, c = h.prefs("k")
    f1 = fallbacks(h, "k")[0]
    h.crash(c)
    h.write("k", b"v")
    h.restart(c)
    h.tick(2_000)
    assert value_on(h, c, "k") == b"v"
    assert h.replicas[f1].hints_held() == {}
    assert h.replicas[c].stats.repaired["hint"] == 1


# -- the clock ------------------------------------------------------------------------


def test_a_restored_clock_stamps_above_the_saved_high_water():
    h = CoreCluster()
    h.write("k", b"before")
    saved = h.coord.clock.high_water_ms
    # The proxy restarts on a machine whose clock is an hour behind.
    again = Coordinator(COORD, h.ring, Quorum(3, 2, 2))
    again.clock.restore(saved)
    behind = h.now - 3_600_000
    _, effects = again.write("k", b"after", behind)
    version = next(e.message.record.version for e in effects if isinstance(e, Send))
    assert version.physical >= saved
    assert version > h.stores[h.prefs("k")[0]].get("k").version
    mark = again.clock.high_water_ms
    again.clock.restore(saved - 10)  # an older mark never moves the clock back
    assert again.clock.high_water_ms == mark


def test_a_restored_clock_never_repeats_a_version_so_no_acknowledged_write_is_lost():
    h = CoreCluster()
    at = h.now + 10
    h.run(h.coord.write("a", b"a", at))
    h.run(h.coord.write("k", b"old", at))  # the same millisecond: (at, 1)
    again = Coordinator(COORD, h.ring, Quorum(3, 2, 2))
    again.clock.restore(h.coord.clock.high_water_ms)
    h.coord = again
    assert h.run(again.write("k", b"new", at - 5_000)).status == OK
    assert h.read("k").record.value == b"new"


def test_without_a_restore_a_clock_behind_is_rescued_by_superseded():
    """5 s behind (inside the clock bound): replicas say what they hold; re-stamped above."""
    h = CoreCluster()
    first = h.write("k", b"before").record.version
    h.coord = Coordinator(COORD, h.ring, Quorum(3, 2, 2))
    h.now -= 5_000
    w = h.write("k", b"after")
    assert w.status == OK and w.record.version > first
    assert h.coord.restamped == 1


def test_observe_ignores_versions_far_ahead_of_now():
    clock = Coordinator(COORD, Ring(NODES, 16), Quorum(3, 2, 2)).clock
    now = 1_000_000
    clock.observe(Version(now + MAX_AHEAD_MS + 1, 0, "q"), now)
    assert clock.high_water_ms == 0
    assert clock.tick(now).physical == now
    clock.observe(Version(now + MAX_AHEAD_MS, 7, "q"), now)  # at the bound: taken
    assert clock.tick(now) == Version(now + MAX_AHEAD_MS, 8, COORD)


def test_a_read_of_a_far_future_version_does_not_drag_the_clock():
    h = CoreCluster()
    far = Version(h.now + 10 * MAX_AHEAD_MS, 0, "q")
    for node in h.prefs("k"):
        plant(h, node, Record("k", b"future", far), now_ms=far.physical)
    assert h.read("k").record.value == b"future"
    assert h.coord.clock.high_water_ms < far.physical
    assert h.write("other", b"v").record.version.physical <= h.now


def test_replies_from_unexpected_nodes_are_refused():
    h = CoreCluster()
    a, b, c = h.prefs("k")
    h.silent.add(a)
    op, effects = h.coord.write("k", b"v", h.now)
    h.apply(COORD, effects)
    req = held_to(h, a)[0].message.req
    with pytest.raises(ValueError):
        h.coord.receive(b, WriteReply(req), h.now)
