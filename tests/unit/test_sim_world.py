"""The stepping interface a dashboard drives, and the virtual clock and network under it."""

from __future__ import annotations

import random

from kvlab.core.messages import OK
from kvlab.sim import Latency, World, WorldConfig
from kvlab.sim.clock import EventQueue
from kvlab.sim.network import Network


def test_world_views_and_inspect():
    w = World(WorldConfig(nodes=4), seed=3)
    outcomes = []
    w.submit("write", "k1", b"v1", callback=outcomes.append)
    w.advance(5)
    assert [o.status for o in outcomes] == [OK]
    assert sorted(n.name for n in w.nodes()) == ["n1", "n2", "n3", "n4"]
    assert sum(n.keys for n in w.nodes()) == 3  # N=3 copies
    recent = w.recent_ops()
    assert [(op.f, op.key, op.value) for op in recent] == [("write", "k1", b"v1")]
    assert [(c.name, c.pending) for c in w.coordinators()] == [("c1", 0)]
    inspection = w.inspect("k1")
    assert inspection.kind == "inspect"
    assert {n: r.value for n, r in inspection.answers.items()} == \
        {n: r.value for n, r in w.replica_records("k1").items()}
    down = inspection.replicas[0]
    w.crash(down)
    assert {n.name: n.state for n in w.nodes()}[down] == "down"
    assert down in w.inspect("k1").failed


def test_event_queue_breaks_ties_in_scheduling_order():
    q = EventQueue()
    seen = []
    for i in range(5):
        q.at(10, seen.append, i)
    q.after(5, seen.append, "first")
    assert q.run_until(9) == 1 and q.now == 9
    q.run_until(10)
    assert seen == ["first", 0, 1, 2, 3, 4]


def test_network_links_are_fifo_and_cuts_drop_messages_in_flight():
    q = EventQueue()
    net = Network(q, random.Random(1), Latency(base_us=100, jitter_us=1000))
    got = []
    for i in range(50):
        net.send("a", "b", got.append, i)
    q.run_until(10**6)
    assert got == list(range(50))
    net.send("a", "b", got.append, "cut in flight")
    net.cut("a", "b", both=False)
    net.send("b", "a", got.append, "other way")
    q.run_until(2 * 10**6)
    assert got[50:] == ["other way"]
    net.heal("a")
    assert net.cuts() == []
