"""The coordinator state machine, wired to in-memory replicas (no IO, explicit delivery)."""

from __future__ import annotations

import msgspec

import pytest

from kvlab.core import replica
from kvlab.core.coordinator import Coordinator, Quorum
from kvlab.core.record import Record
from kvlab.core.messages import (
    NOT_FOUND,
    OK,
    TIMEOUT,
    UNAVAILABLE,
    Done,
    ErrorReply,
    Send,
    SetTimer,
    WriteRequest,
)
from kvlab.core.ring import Ring
from kvlab.storage.memory import MemoryStore

NODES = ("n1", "n2", "n3", "n4", "n5")


class Harness:
    """Delivers the coordinator's sends to in-memory replicas, with nodes that can be down
    (sends fail at once) or silent (requests are held until released)."""

    def __init__(self, quorum: Quorum = Quorum(3, 2, 2)) -> None:
        self.coord = Coordinator("p", Ring(NODES, 16), quorum, timeout_ms=1000)
        self.stores = {n: MemoryStore() for n in NODES}
        self.down: set[str] = set()
        self.silent: set[str] = set()
        self.held: list[Send] = []
        self.done: dict[int, object] = {}
        self.timers: list[SetTimer] = []
        self.now = 1000

    def run(self, started) -> object:
        op, effects = started
        self.apply(effects)
        return self.done.get(op)

    def apply(self, effects) -> None:
        for effect in effects:
            if isinstance(effect, Done):
                self.done[effect.outcome.op] = effect.outcome
            elif isinstance(effect, SetTimer):
                self.timers.append(effect)
            elif effect.node in self.down:
                self.apply(self.coord.unreachable(effect.node, effect.request.req, "down",
                                                  self.now))
            elif effect.node in self.silent:
                self.held.append(effect)
            else:
                self.deliver(effect)

    def deliver(self, send: Send) -> None:
        store = self.stores[send.node]
        replies, writes = replica.serve([send.request], store.get_many)
        store.apply([w.record for w in writes])
        for reply in replies + replica.acknowledge(writes):
            self.apply(self.coord.receive(send.node, reply, self.now))

    def release(self) -> None:
        held, self.held = self.held, []
        for send in held:
            self.deliver(send)

    def fire_timers(self) -> None:
        timers, self.timers = self.timers, []
        for t in timers:
            self.now = max(self.now, t.at_ms)
            self.apply(self.coord.timeout(t.op, self.now))

    def replicas(self, key: str) -> tuple[str, ...]:
        return self.coord.ring.preference_list(key, 3)

    def write(self, key, value, **kw):
        self.now += 1
        return self.run(self.coord.write(key, value, self.now, **kw))

    def read(self, key, **kw):
        self.now += 1
        return self.run(self.coord.read(key, self.now, **kw))


def test_write_then_read_returns_the_value_with_its_replicas():
    h = Harness()
    w = h.write("k", b"v1")
    assert w.status == OK and len(w.acked) == 2
    r = h.read("k")
    assert r.status == OK and r.record.value == b"v1" and r.record.version == w.record.version
    assert set(r.replicas) == set(h.replicas("k"))
    # All three replicas got the write, not just the two the quorum waited for.
    assert all(h.stores[n].get("k").value == b"v1" for n in h.replicas("k"))


def test_read_picks_the_newest_version_and_repairs_stale_replicas():
    h = Harness()
    first, second, third = h.replicas("k")
    h.write("k", b"old")
    h.silent.add(third)  # third misses the overwrite
    h.write("k", b"new")
    h.silent.clear()
    h.held.clear()  # the overwrite never reached it
    assert h.stores[third].get("k").value == b"old"
    r = h.read("k", r=3)
    assert r.record.value == b"new"
    assert h.stores[third].get("k").value == b"new", "read repair did not fix the stale replica"


def test_late_reply_after_quorum_is_repaired_too():
    h = Harness()
    a, b, c = h.replicas("k")
    h.silent.add(c)
    h.write("k", b"v")  # c holds nothing
    h.held.clear()
    h.silent = {c}
    r = h.read("k")  # R=2 answered by a and b, c's reply comes later
    assert r.status == OK and r.record.value == b"v"
    assert h.stores[c].get("k") is None
    h.silent.clear()
    h.release()
    assert h.stores[c].get("k").value == b"v"


def test_missing_key_is_not_found_and_unreachable_is_unavailable():
    h = Harness()
    assert h.read("nope").status == NOT_FOUND
    h.down.update(h.replicas("nope")[:2])
    r = h.read("nope")
    assert r.status == UNAVAILABLE
    assert set(r.failed) == set(h.replicas("nope")[:2])


def test_write_fails_fast_when_quorum_is_impossible_but_reports_partial_storage():
    h = Harness()
    a, b, c = h.replicas("k")
    h.down.update({b, c})
    w = h.write("k", b"v")
    assert w.status == UNAVAILABLE and w.needed == 2
    assert h.stores[a].get("k").value == b"v"  # partially applied, as in Dynamo


def test_silent_replicas_time_out():
    h = Harness()
    h.silent.update(h.replicas("k")[:2])
    op, effects = h.coord.read("k", h.now)
    h.apply(effects)
    assert op not in h.done
    h.fire_timers()
    assert h.done[op].status == TIMEOUT
    assert set(h.done[op].pending) == set(h.replicas("k")[:2])


def test_delete_is_a_tombstone_that_a_stale_replica_cannot_undo():
    h = Harness()
    a, b, c = h.replicas("k")
    h.write("k", b"v")
    h.silent.add(c)
    assert h.write("k", None).status == OK
    h.held.clear()
    h.silent.clear()
    assert h.stores[c].get("k").value == b"v"  # c missed the delete
    r = h.read("k", r=3)
    assert r.status == NOT_FOUND
    assert h.stores[c].get("k").tombstone, "the tombstone was not repaired onto c"


def test_replicas_never_apply_an_older_version():
    h = Harness()
    h.write("k", b"new")
    stale = h.stores["n1"].get("k") or h.stores[h.replicas("k")[0]].get("k")
    older = WriteRequest(999, Record("k", b"older", msgspec.structs.replace(stale.version,
                                                                             physical=1)))
    node = h.replicas("k")[0]
    replies, writes = replica.serve([older], h.stores[node].get_many)
    assert h.stores[node].apply([w.record for w in writes]) == [False]
    assert h.stores[node].get("k").value == b"new"


def test_quorum_overrides_are_validated():
    h = Harness()
    with pytest.raises(ValueError):
        h.coord.read("k", 1, r=4)
    with pytest.raises(ValueError):
        h.coord.write("k", b"v", 1, w=0)
    assert h.write("k", b"v", w=3).acked.__len__() == 3
    with pytest.raises(ValueError):
        Quorum(3, 2, 4)
    assert Quorum(3, 2, 2).overlapping and not Quorum(3, 1, 1).overlapping


def test_error_reply_counts_as_a_failure():
    h = Harness()
    a, b, c = h.replicas("k")
    h.silent.update({a, b, c})
    op, effects = h.coord.write("k", b"v", h.now)
    h.apply(effects)
    for send in h.held[:2]:
        h.apply(h.coord.receive(send.node, ErrorReply(send.request.req, "disk full"), h.now))
    assert h.done[op].status == UNAVAILABLE
    assert "disk full" in h.done[op].failed.values()


def test_inspect_reports_each_replica_without_repairing():
    h = Harness()
    a, b, c = h.replicas("k")
    h.silent.add(c)
    h.write("k", b"v")
    h.held.clear()
    h.silent.clear()
    h.down.add(b)
    op, effects = h.coord.inspect("k", h.now)
    h.apply(effects)
    out = h.done[op]
    assert out.answers[a].value == b"v" and out.answers[c] is None and b in out.failed
    assert h.stores[c].get("k") is None


def test_finished_operations_leave_no_state_behind():
    h = Harness()
    for i in range(50):
        h.write(f"k{i}", b"v")
        h.read(f"k{i}")
    assert h.coord.pending_ops() == 0


def test_a_read_writes_back_a_half_applied_write_before_answering():
    """R+W>N: once a read has returned a value, no later read may return an older one."""
    h = Harness()
    a, b, c = h.replicas("k")
    h.write("k", b"v1")
    h.down.update({b, c})
    assert h.write("k", b"v2").status == UNAVAILABLE  # only `a` stored v2
    h.down.clear()
    h.silent.add(c)
    first = h.read("k")  # answered by a (v2) and b (v1)
    assert first.status == OK and first.record.value == b"v2"
    assert h.stores[b].get("k").value == b"v2", "the read answered before writing v2 back"
    h.silent.clear()
    h.held.clear()
    h.down.add(a)
    second = h.read("k")  # b and c: without the write-back this would be v1
    assert second.record.value == b"v2"


def test_weak_reads_do_not_wait_for_the_write_back():
    h = Harness(Quorum(3, 1, 1))
    a, b, c = h.replicas("k")
    h.silent.update({b, c})
    h.write("k", b"v1")
    h.silent = {c}
    h.held.clear()
    op, effects = h.coord.read("k", h.now)
    h.apply(effects)
    assert h.done[op].status == OK  # answered by the first reply


def test_a_read_whose_write_back_cannot_finish_times_out():
    h = Harness()
    a, b, c = h.replicas("k")
    h.down.update({b, c})
    h.write("k", b"v")  # only `a` has it
    h.down.clear()
    h.silent.update({b, c})
    op, effects = h.coord.read("k", h.now)
    h.apply(effects)
    read_to_b = next(s for s in h.held if s.node == b)
    h.deliver(read_to_b)  # b answers "missing"; the repair to b is then held: b went quiet
    assert any(isinstance(s.request, WriteRequest) and s.node == b for s in h.held)
    assert op not in h.done, "answered before the value was on W replicas"
    h.fire_timers()
    assert h.done[op].status == TIMEOUT
    assert h.coord.pending_ops() == 0


def test_a_read_fails_fast_when_the_write_back_cannot_reach_w():
    """R=1 W=3: the value must be on all three replicas; one is down, so fail now (503)."""
    h = Harness(Quorum(3, 1, 3))
    a, b, c = h.replicas("k")
    h.write("k", b"v")
    h.down.add(c)
    op, effects = h.coord.read("k", h.now)
    h.apply(effects)
    assert h.done[op].status == UNAVAILABLE and c in h.done[op].failed
    h.fire_timers()
    assert h.coord.pending_ops() == 0


def test_a_read_fails_fast_when_a_needed_repair_is_refused():
    h = Harness()
    a, b, c = h.replicas("k")
    h.down.update({b, c})
    h.write("k", b"v")  # only `a` holds it
    h.down = {c}
    h.silent.add(b)
    op, effects = h.coord.read("k", h.now)
    h.apply(effects)
    read_to_b = next(s for s in h.held if s.node == b)
    h.held.clear()
    h.silent.clear()
    h.down.add(b)  # b answers "missing", then dies before the repair reaches it
    store = h.stores[b]
    replies, _ = replica.serve([read_to_b.request], store.get_many)
    h.apply(h.coord.receive(b, replies[0], h.now))
    assert h.done[op].status == UNAVAILABLE
    assert h.done[op].failed[b].startswith("repair")
