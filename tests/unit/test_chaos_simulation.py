"""Full simulated runs: the workload, the nemesis schedule and the history they produce."""

from __future__ import annotations

import itertools

import pytest

from kvlab.chaos.checker import check
from kvlab.chaos.nemesis import FAULTS, KINDS, PARTITION, SKEW, WIPE, parse_kinds, schedule
from kvlab.chaos.simulation import SimOptions, Simulation, run
from kvlab.chaos.workload import Mix, Workload
from kvlab.sim import WorldConfig


def test_default_settings_without_faults_are_linearizable():
    result = run(SimOptions(ops=2000))
    assert result.summary["ops"] == result.summary["ok"] == 2000
    verdict = check(result.events)
    assert verdict.linearizable is True
    assert verdict.lost_writes == 0 and verdict.stale_reads == 0


def test_history_pairs_every_invoke_with_a_completion():
    result = run(SimOptions(ops=500, nemesis=KINDS, nemesis_gap_ms=(10, 30),
                            fault_ms=(30, 100)))
    types = [e.type for e in result.events]
    assert types.count("invoke") == 500
    assert len(types) == 1000
    assert result.summary["ok"] + result.summary["fail"] + result.summary["info"] == 500
    times = [e.time for e in result.events]
    assert times == sorted(times)


def test_weak_quorums_with_partitions_are_caught_by_the_checker():
    options = SimOptions(ops=1500, nemesis=(PARTITION,), world=WorldConfig(r=1, w=1),
                         nemesis_gap_ms=(20, 50), fault_ms=(100, 200), seed=2)
    verdict = check(run(options).events)
    assert verdict.linearizable is False
    assert verdict.stale_reads > 0


def test_a_skewed_second_coordinator_loses_no_writes():
    # Skews of up to 2 s: a write stamped behind what a replica holds is answered
    # Superseded and re-stamped above it, so the later write still wins.
    options = SimOptions(ops=1500, nemesis=(SKEW,), world=WorldConfig(coordinators=2),
                         nemesis_gap_ms=(20, 50), fault_ms=(200, 400), seed=3)
    sim = Simulation(options)
    verdict = check(sim.run().events)
    assert verdict.linearizable is True and verdict.lost_writes == 0
    assert sum(n.healing["superseded"] for n in sim.world.nodes()) > 0  # the skew bit


def test_a_wiped_node_is_down_for_the_fault_then_back_empty_and_refilled():
    options = SimOptions(ops=2000, nemesis=(WIPE,), fault_ms=(300, 300), seed=4,
                         mix=Mix(think_ms=20.0))
    sim = Simulation(options)
    sim.advance(150)  # the first fault starts at 100 ms
    fault = sim.faults[0]
    victim = sim.world.node(fault.nodes[0])
    assert fault.kind == WIPE and victim.state == "down" and victim.store.count() > 0
    sim.advance(fault.end_ms - 150 + 0.001)
    assert victim.state == "up" and victim.store.count() == 0  # a replacement machine
    result = sim.run()
    assert result.summary["under_replicated"] == 0
    assert sum(result.summary["healing"]["repaired"].values()) > 0
    assert check(result.events).linearizable is True


def test_quiescence_ends_the_fault_in_progress_once():
    # A wipe that would last far beyond the run: quiescence ends it, and its scheduled
    # end, when it comes, does nothing (the refilled node is not wiped again).
    options = SimOptions(ops=300, nemesis=(WIPE,), fault_ms=(10**6, 10**6), seed=1)
    sim = Simulation(options)
    result = sim.run()
    assert [f.kind for f in sim.faults] == [WIPE]
    assert all(n.state == "up" for n in sim.world.nodes())
    assert result.summary["under_replicated"] == 0 and result.summary["quiesce_s"] == 10
    victim = sim.world.node(sim.faults[0].nodes[0])
    held = victim.store.count()
    assert held > 0
    sim.world.advance(10**6)
    assert victim.store.count() == held and sim.world.under_replicated() == []


def test_stepping_a_simulation():
    sim = Simulation(SimOptions(ops=200))
    sim.advance(10)
    assert 0 < len(sim.recorder.events) and not sim.finished
    assert sim.world.now_ms == 10
    result = sim.run()
    assert sim.finished and result.summary["ops"] == 200


def test_workload_is_per_client_deterministic_and_unique_valued():
    a = Workload(seed=1, clients=3, keys=5, ops=100)
    b = Workload(seed=1, clients=3, keys=5, ops=100)
    # Different interleavings of the clients: each client still gets the same operations.
    ops_a = [a.next_op(p) for p in itertools.islice(itertools.cycle([0, 1, 2]), 30)]
    ops_b = [b.next_op(p) for p in [0] * 10 + [1] * 10 + [2] * 10]
    strip = lambda ops, p: [(o.f, o.key) for o in ops if o.process == p]  # noqa: E731
    assert all(strip(ops_a, p) == strip(ops_b, p) for p in range(3))
    values = [o.value for o in ops_a if o.value is not None]
    assert len(values) == len(set(values)) and {o.key for o in ops_a} <= {f"k{i}" for i in range(5)}
    assert Workload(seed=1, clients=1, ops=2).next_op(0) is not None
    done = Workload(seed=1, clients=1, ops=0)
    assert done.next_op(0) is None


def test_nemesis_schedule_is_seeded_and_never_overlaps():
    faults = list(itertools.islice(schedule(KINDS, ["n1", "n2", "n3"], ["c1", "c2"], 5), 50))
    again = list(itertools.islice(schedule(KINDS, ["n1", "n2", "n3"], ["c1", "c2"], 5), 50))
    assert faults == again
    assert {f.kind for f in faults} == set(FAULTS)  # membership changes run on their own track
    assert all(b.at_ms > a.end_ms for a, b in itertools.pairwise(faults))
    assert list(schedule((), ["n1"], ["c1"], 5)) == []


def test_parse_kinds():
    assert parse_kinds("kill, pause,kill") == ("kill", "pause")
    assert parse_kinds("none") == ()
    with pytest.raises(ValueError, match="unknown nemesis bogus"):
        parse_kinds("kill,bogus")
