"""Attacks on membership changes in the pure core, from a review: randomized changes of
every kind under writes, deletes and crashes; forged and malformed control messages; a
node that misses the clean-up after a move."""
from __future__ import annotations

import random

import pytest

from kvlab.core.coordinator import Quorum
from kvlab.core.messages import NOT_FOUND, OK, RingUpdate
from kvlab.core.replica import ReplicaConfig
from kvlab.core.ring import Ring
from kvlab.core.topology import Topology
from tests.unit.core_harness import CoreCluster

KEYS = [f"k{i}" for i in range(300)]


def _cluster(nodes=("n1", "n2", "n3"), q=Quorum(3, 2, 2), vnodes=16, hints=True, **config):
    c = CoreCluster(q, nodes=nodes, vnodes=vnodes, hints=hints,
                    config=ReplicaConfig(n=q.n, anti_entropy=config.pop("anti_entropy", False),
                                         stream_batch=50, **config))
    c.tick(200)
    return c


def _misses(c, acked):
    return [(k, getattr(out, "status", None)) for k, v in acked.items()
            if (out := c.read(k)) is None or out.status != OK or out.record.value != v]


# Rings are the committer's to give: a peer's (a node name, ?from=n2) are ignored.
def test_a_peer_cannot_give_a_replica_a_ring_that_drops_its_data():
    c = _cluster()
    acked = c.write_all(KEYS[:60])
    r1 = c.replicas["n1"]
    held_before = sum(1 for k in acked if c.stores["n1"].get(k) is not None)
    assert held_before > 0
    forged = Topology(10**6, Ring(("n2", "n3", "zz"), 16), clean=True)
    # src "n2" is a peer node name (a peer channel, ?from=n2), not a coordinator
    c.apply("n1", r1.receive("n2", forged.update(), c.now))
    held_after = sum(1 for k in acked if c.stores["n1"].get(k) is not None)
    assert held_after == held_before, (held_before, held_after)


# Randomized: changes of every kind with writes, deletes and crashes going on.
def _scenario(seed, n, nodes, vnodes, w, r, kinds, crash_during=True, sloppy=False):
    rng = random.Random(seed)
    q = Quorum(n, w, r)
    c = _cluster(tuple(f"n{i}" for i in range(1, nodes + 1)), q=q, vnodes=vnodes)
    live, gone, ambiguous = {}, set(), set()
    seq = iter(range(10**6))

    def traffic():
        for _ in range(4):
            i = next(seq)
            key = f"x{i}"
            out = c.write(key, b"v%d" % i, sloppy=sloppy)
            if out is not None and out.status == OK:
                live[key] = b"v%d" % i
            else:
                ambiguous.add(key)
        if live and rng.random() < 0.3:
            key = rng.choice(sorted(live))
            out = c.write(key, None, sloppy=sloppy)
            del live[key]
            (gone.add if out is not None and out.status == OK else ambiguous.add)(key)

    for _ in range(60):
        traffic()
    extra = nodes + 1
    for step, kind in enumerate(kinds):
        ring = c.coord.ring
        crashed = None
        if kind == "add":
            new = f"n{extra}"; extra += 1
            c.join(new)
            c.apply("p", c.membership.add(new, c.now))
            target = new
        elif kind == "remove":
            victim = rng.choice(ring.nodes)
            c.apply("p", c.membership.remove(victim, c.now))
            target = None
        elif kind == "replace_up":
            victim = rng.choice(ring.nodes)
            new = f"n{extra}"; extra += 1
            c.join(new)
            c.apply("p", c.membership.replace(victim, new, c.now))
            target = new
        else:  # replace a dead node
            victim = rng.choice(ring.nodes)
            c.crash(victim)
            c.tick(3_000)
            for _ in range(20):
                traffic()
            new = f"n{extra}"; extra += 1
            c.join(new)
            c.apply("p", c.membership.replace(victim, new, c.now))
            target = new
        waited = 0
        while c.membership.change is not None:
            assert waited < 60_000, c.membership.view(c.now)["change"]
            traffic()
            if crash_during and crashed is None and n >= 3 and rng.random() < 0.05:
                members = [m for m in c.membership.change.new.nodes
                           if m != target and m not in c.down]
                crashed = rng.choice(members)
                c.crash(crashed)
                crash_at = waited
            if crashed is not None and waited - crash_at > rng.choice((500, 2500, 4000)):
                c.restart(crashed)
                crashed = None
            c.tick(100)
            waited += 100
        if crashed is not None:
            c.restart(crashed)
        if kind in ("remove", "replace_up"):
            c.crash(victim)  # decommissioned
        c.tick(1_000)
    c.tick(3_000)
    bad = []
    for key, value in live.items():
        out = c.read(key)
        if out.status != OK or out.record.value != value:
            bad.append((key, str(out.status)))
    for key in gone:
        out = c.read(key)
        if out.status != NOT_FOUND:
            bad.append((key, "resurrected", str(out.status)))
    return bad


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [
    (3, 4, 16, 2, 2), (3, 3, 1, 2, 2), (5, 6, 8, 3, 3), (1, 2, 4, 1, 1), (3, 5, 2, 2, 2),
    (2, 3, 4, 2, 1),
])
def test_random_changes_under_writes_deletes_and_crashes_lose_nothing(seed, shape):
    n, nodes, vnodes, w, r = shape
    kinds = ["add", "remove", "replace", "add"] if n > 1 else ["add", "remove", "add"]
    assert _scenario(seed, n, nodes, vnodes, w, r, kinds) == []


# A RingUpdate the replica can't build a ring from is ignored: raising out of receive would
# stop the node (its driver treats that as fatal).
@pytest.mark.parametrize("spec", [
    dict(nodes=["n1", "n1"], vnodes=16, seats=[]),
    dict(nodes=["n1", "n2"], vnodes=0, seats=[]),
    dict(nodes=["n1", "n2"], vnodes=16, seats=[("zz", "n1")]),
])
def test_a_malformed_ring_update_does_not_raise_out_of_receive(spec):
    from kvlab.core.messages import RingSpec
    c = _cluster()
    update = RingUpdate(99, RingSpec(spec["nodes"], spec["vnodes"],
                                     [tuple(s) for s in spec["seats"]]))
    replica = c.replicas["n1"]
    before, ignored = replica.topology, replica.stats.ignored
    assert replica.receive("#7", update, c.now) == []
    assert replica.topology == before and replica.stats.ignored == ignored + 1


# A node that misses the clean version catches up on its next heartbeat, clean-up included.
def test_a_node_that_missed_the_clean_up_drops_its_strays_when_it_catches_up():
    c = _cluster(("n1", "n2", "n3"))
    acked = c.write_all(KEYS)
    c.join("n4")
    c.apply("p", c.membership.add("n4", c.now))
    while c.membership.change is not None and c.membership.change.phase != "settling":
        c.tick(50)
        if c.membership.change is not None and all(
                t.done for t in c.membership.change.transfers.values()):
            break
    c.silent.add("n1")  # a short partition right around the switch
    c.finish_change()
    c.held.clear()  # what was sent to n1 meanwhile is lost
    c.silent.discard("n1")
    c.tick(5_000)  # n1 is brought up to date (RingUpdate on its Pong)...
    assert c.replicas["n1"].topology.version == c.coord.topology.version
    strays = [k for k in acked if "n1" not in c.coord.ring.preference_list(k, 3)
              and c.stores["n1"].get(k) is not None]
    assert strays == [], len(strays)  # ...and told to clean up


# A node that missed the clean version holds strays for a while: they must never come
# back to life when a later change gives their range back.
def test_strays_of_a_node_that_missed_the_clean_up_never_resurrect_a_deleted_key():
    c = _cluster(("n1", "n2", "n3"), anti_entropy=True, anti_entropy_ms=200,
                 tombstone_grace_ms=0, hint_window_ms=0, max_ahead_ms=100, purge_every_ms=100)
    acked = c.write_all(KEYS[:100])
    c.join("n4")
    c.apply("p", c.membership.add("n4", c.now))
    while c.membership.change is not None and not all(
            t.done for t in c.membership.change.transfers.values()):
        c.tick(50)
    c.silent.add("n1")
    c.finish_change()
    stale = [k for k in acked if "n1" not in c.coord.ring.preference_list(k, 3)
             and c.stores["n1"].get(k) is not None]
    assert stale  # n1 missed the clean version: it still holds these
    c.held.clear()
    c.silent.discard("n1")
    key = stale[0]
    assert c.write(key, None).status == OK  # deleted: on its new replicas only
    c.tick(20_000)  # grace over, every replica confirmed the tombstone: purged
    assert all(c.stores[n].get(key) is None for n in c.coord.ring.preference_list(key, 3))
    c.apply("p", c.membership.remove("n4", c.now))  # n1 gets the range back
    c.finish_change()
    c.tick(5_000)
    assert c.read(key).status == NOT_FOUND
