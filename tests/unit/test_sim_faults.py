"""Each fault the simulator models, shown by its effect on operations and histories."""

from __future__ import annotations

from kvlab.chaos.checker import check
from kvlab.chaos.history import Recorder
from kvlab.core.messages import NOT_FOUND, OK, TIMEOUT, UNAVAILABLE, Outcome
from kvlab.sim import Latency, World, WorldConfig
from kvlab.sim.network import REFUSED, RESET
from kvlab.sim.node import PAUSED

STEADY = Latency(base_us=200, jitter_us=0)  # every hop takes exactly 0.2 ms


def world(**config: object) -> World:
    settings = {"nodes": 3, "latency": STEADY, "fsync": Latency(500, 0)} | config
    return World(WorldConfig(**settings), seed=1)  # type: ignore[arg-type]


class Ops:
    """Start operations on a world and collect their outcomes and a history."""

    def __init__(self, w: World) -> None:
        self.world = w
        self.recorder = Recorder()
        self.outcomes: dict[int, Outcome] = {}
        self.finished_at: dict[int, float] = {}
        self._next = 0

    def start(self, f: str, key: str, value: str | None = None, coordinator: int = 0,
              quorum: int | None = None) -> int:
        process = self._next
        self._next += 1
        self.recorder.invoke(process, f, key, value, self._ns())

        def done(outcome: Outcome) -> None:
            self.outcomes[process] = outcome
            self.finished_at[process] = self.world.now_ms
            status = outcome.status
            kind = "ok" if status in (OK, NOT_FOUND) else "fail" if f == "read" else "info"
            read = outcome.record.value.decode() if f == "read" and status == OK else None
            self.recorder.complete(process, kind, read, self._ns())

        self.world.submit(f, key, value.encode() if value else None, coordinator=coordinator,
                          quorum=quorum, callback=done)
        return process

    def run(self, f: str, key: str, value: str | None = None, **kw: object) -> Outcome:
        process = self.start(f, key, value, **kw)  # type: ignore[arg-type]
        self.world.advance(self.world.config.timeout_ms + 10)
        return self.outcomes[process]

    def _ns(self) -> int:
        return self.world.clock.now * 1000


def test_two_way_partition_makes_r1_reads_stale():
    w = world(replicas=3, r=1, w=1, coordinators=2)
    a, b, c = w.ring.preference_list("k", 3)
    # c1 reaches only a; c2 reaches everything but a.
    w.partition("c1", b)
    w.partition("c1", c)
    w.partition("c2", a)
    ops = Ops(w)
    assert ops.run("write", "k", "v1", coordinator=0).status == OK
    read = ops.run("read", "k", coordinator=1)
    assert read.status == NOT_FOUND  # the acknowledged write is invisible to c2
    verdict = check(ops.recorder.events)
    assert verdict.stale_reads == 1 and verdict.linearizable is False
    # Healing lets read repair (or the next quorum read) see it again, once c1's failure
    # detector (which held b and c down for every coordinator) hears them again.
    w.heal()
    w.advance(300)
    assert ops.run("read", "k", coordinator=1, quorum=3).record.value == b"v1"


def test_partition_is_silent_so_operations_time_out():
    w = world()
    for node in w.ring.preference_list("k", 3):
        w.partition("c1", node)
    ops = Ops(w)
    process = ops.start("write", "k", "v1")
    w.advance(999)
    assert process not in ops.outcomes  # nothing reported before the deadline
    w.advance(2)
    assert ops.outcomes[process].status == TIMEOUT


def test_one_way_partition_loses_replies_but_writes_apply():
    w = world()
    replicas = w.ring.preference_list("k", 3)
    for node in replicas:
        w.partition(node, "c1", both=False)
    ops = Ops(w)
    assert ops.run("write", "k", "v1").status == TIMEOUT  # recorded as info
    assert ops.recorder.events[-1].type == "info"
    assert all(r is not None and r.value == b"v1" for r in w.replica_records("k").values())


def test_crashed_node_fails_in_the_outcome_but_quorum_operations_succeed():
    w = world(replicas=3, r=2, w=2)
    dead = w.ring.preference_list("k", 3)[0]
    w.crash(dead)
    ops = Ops(w)
    write = ops.run("write", "k", "v1")
    assert write.status == OK
    assert write.failed == {dead: REFUSED}
    read = ops.run("read", "k")
    assert read.status == OK and read.record.value == b"v1" and dead not in read.acked
    assert [n.state for n in w.nodes() if n.name == dead] == ["down"]


def test_crash_loses_the_unacknowledged_write_but_never_an_acknowledged_one():
    w = world(nodes=1, replicas=1, r=1, w=1, fsync=Latency(5000, 0))
    ops = Ops(w)
    first = ops.start("write", "k", "v1")
    w.advance(1)  # the write reached the node; its 5 ms fsync is under way
    assert w.node("n1").pending_writes == 1
    assert w.crash("n1") == 1
    w.advance(1)
    assert ops.outcomes[first].status == UNAVAILABLE
    assert ops.outcomes[first].failed == {"n1": RESET}
    w.restart("n1")
    assert ops.run("read", "k").status == NOT_FOUND

    assert ops.run("write", "k", "v2").status == OK
    w.crash("n1")
    w.restart("n1")
    assert ops.run("read", "k").record.value == b"v2"
    assert w.nodes()[0].lost_writes == 1


def test_pause_delays_replies_until_resume():
    w = world(replicas=3, r=3, w=3)
    slow = w.ring.preference_list("k", 3)[1]
    ops = Ops(w)
    w.pause(slow)
    process = ops.start("write", "k", "v1")
    w.advance(300)
    assert process not in ops.outcomes
    # The write waits in its queue (with the committer's heartbeats).
    assert [n.queued >= 1 for n in w.nodes() if n.name == slow] == [True]
    assert [n.state for n in w.nodes() if n.name == slow] == [PAUSED]
    w.resume(slow)
    w.advance(5)
    assert ops.outcomes[process].status == OK
    assert 300 <= ops.finished_at[process] < 305


def test_pause_past_the_deadline_times_out():
    w = world(replicas=3, r=3, w=3)
    w.pause(w.ring.preference_list("k", 3)[0])
    assert Ops(w).run("read", "k").status == TIMEOUT


def test_a_later_write_from_a_clock_behind_is_restamped_and_wins():
    w = world(coordinators=2)
    w.skew(1, -5000)  # c2's clock is 5 s behind
    ops = Ops(w)
    assert ops.run("write", "k", "v1", coordinator=0).status == OK
    assert ops.run("write", "k", "v2", coordinator=1).status == OK
    # The replicas held a newer version than c2 stamped: they said so (Superseded), and
    # c2 stamped the write again above it instead of acknowledging a write that lost.
    assert sum(n.healing["superseded"] for n in w.nodes()) == 3
    assert ops.run("read", "k", coordinator=0).record.value == b"v2"
    assert check(ops.recorder.events).linearizable is True


def test_a_write_stamped_far_ahead_of_the_replicas_clocks_is_refused():
    w = world()
    w.skew(0, 120_000)  # two minutes ahead: beyond the replicas' 60 s bound
    ops = Ops(w)
    write = ops.run("write", "k", "v1")
    assert write.status == UNAVAILABLE
    assert all("ahead of" in why for why in write.failed.values())
    assert all(r is None for r in w.replica_records("k").values())
    assert sum(n.healing["refused"] for n in w.nodes()) == 3


def test_message_loss_leaves_operations_unknown():
    w = world(loss=1.0)
    ops = Ops(w)
    assert ops.run("write", "k", "v1").status == TIMEOUT
    assert w.network.dropped >= 3  # the write's three requests, and heartbeats
