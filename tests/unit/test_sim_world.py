"""The stepping interface a dashboard drives, and the virtual clock and network under it."""

from __future__ import annotations

import random

from kvlab.core.messages import OK
from kvlab.sim import Latency, World, WorldConfig
from kvlab.sim.clock import EventQueue
from kvlab.sim.network import REFUSED, RESET, Network


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


class Recorder:
    """An endpoint that writes down what reaches it."""

    def __init__(self, net: Network, name: str) -> None:
        self.got: list = []
        self.bounced: list = []
        net.register(name, self)

    def on_message(self, src, message, incarnation):
        self.got.append((src, message, incarnation))

    def on_unreachable(self, dst, message, reason):
        self.bounced.append((dst, message, reason))


def test_network_links_are_fifo_and_cuts_drop_messages_in_flight():
    q = EventQueue()
    net = Network(q, random.Random(1), Latency(base_us=100, jitter_us=1000))
    a, b = Recorder(net, "a"), Recorder(net, "b")
    for i in range(50):
        net.send("a", "b", i)  # any value travels: the network never looks inside
    q.run_until(10**6)
    assert [m for _, m, _ in b.got] == list(range(50))
    net.send("a", "b", "cut in flight")
    net.cut("a", "b", both=False)
    net.send("b", "a", "other way")
    q.run_until(2 * 10**6)
    assert [m for _, m, _ in b.got[50:]] == [] and [m for _, m, _ in a.got] == ["other way"]
    net.heal("a")
    assert net.cuts() == []


def test_a_stopped_endpoint_refuses_and_a_restarted_one_resets_old_connections():
    q = EventQueue()
    net = Network(q, random.Random(1), Latency(base_us=100, jitter_us=0))
    a, b = Recorder(net, "a"), Recorder(net, "b")
    net.stop("b")
    net.send("a", "b", "while down")
    q.run_until(1000)
    assert a.bounced == [("b", "while down", REFUSED)]
    net.start("b")
    net.send("a", "b", "to the new process")
    net.send("a", "b", "an answer to the old one", incarnation=0)
    q.run_until(2000)
    assert [m for _, m, _ in b.got] == ["to the new process"]
    assert a.bounced[1:] == [("b", "an answer to the old one", RESET)]
    # A report of a message sent by an earlier incarnation of `a` is lost with it.
    net.send("a", "b", "from the old a")
    net.stop("b")
    net.register("a", a)  # a restarts too
    q.run_until(3000)
    assert len(a.bounced) == 2
