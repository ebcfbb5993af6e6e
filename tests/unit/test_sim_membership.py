"""Membership and failure detection in the simulator: the core's committer on virtual time.

Joins, removals and replacements while clients write keep every acknowledged write
readable; the detector marks a paused node suspect, then down, and up again once it
resumes; a run with the membership nemesis replays exactly from its seed.
"""

from __future__ import annotations

import io
import json

import pytest

from kvlab.chaos.history import write_history
from kvlab.chaos.nemesis import MEMBERSHIP, Fault
from kvlab.chaos.simulation import SimOptions, Simulation, run
from kvlab.chaos.workload import Mix
from kvlab.cli import main
from kvlab.core.membership import MembershipError
from kvlab.core.messages import OK
from kvlab.sim import World, WorldConfig


class Traffic:
    """Writes a fresh key every few ms and remembers the acknowledged ones."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.acked: dict[str, bytes] = {}
        self.sent = 0

    def write(self, count: int = 1) -> None:
        for _ in range(count):
            self.sent += 1
            key, value = f"k{self.sent}", f"v{self.sent}".encode()
            self.world.submit("write", key, value, callback=lambda o, k=key, v=value:
                              self.acked.__setitem__(k, v) if o.status == OK else None)

    def during_change(self, limit_ms: int = 60_000) -> None:
        """Keep writing until the change in progress is done."""
        world, waited = self.world, 0
        while world.membership.change is not None:
            assert waited < limit_ms, world.membership.view(0)["change"]
            self.write(2)
            world.advance(20)
            waited += 20
        world.advance(1_100)  # the last writes end

    def misses(self) -> list[str]:
        """Acknowledged keys a quorum read does not return with their value."""
        read: dict[str, object] = {}
        for key in self.acked:
            self.world.submit("read", key, callback=lambda o, k=key: read.__setitem__(
                k, o.record.value if o.status == OK and o.record is not None else o.status))
        self.world.advance(1_100)
        return [k for k, v in self.acked.items() if read.get(k) != v]


def loaded(nodes: int = 4, keys: int = 300) -> tuple[World, Traffic]:
    world = World(WorldConfig(nodes=nodes), seed=11)
    traffic = Traffic(world)
    world.advance(300)  # the detector hears every node
    traffic.write(keys)
    world.advance(200)
    assert len(traffic.acked) == keys
    return world, traffic


def test_a_node_joins_while_clients_write_and_every_acknowledged_write_stays_readable():
    world, traffic = loaded()
    name = world.add_node()
    assert name == "n5" and name in world.node_names
    assert world.membership.topology.pending is not None
    traffic.during_change()
    assert world.ring.nodes == ("n1", "n2", "n3", "n4", "n5")
    last = world.membership.last.view(0)
    assert last["kind"] == "add" and last["keys"] > 0
    # The new node holds what it owns without any read having repaired it.
    owned = [k for k in traffic.acked if name in world.ring.preference_list(k, 3)]
    assert owned and all(world.node(name).store.get(k) is not None for k in owned)
    assert traffic.misses() == []
    assert world.under_replicated() == []


def test_a_removed_node_streams_out_first_then_stops_and_its_name_is_never_reused():
    world, traffic = loaded()
    world.remove_node("n2")
    assert world.health("n2") == "up"
    traffic.during_change()
    assert "n2" not in world.ring.nodes and "n2" not in world.node_names
    assert traffic.misses() == []
    assert world.under_replicated() == []
    assert world.add_node() == "n5"
    traffic.during_change()
    with pytest.raises(MembershipError, match="never reused"):
        world.add_node("n2")


def test_a_crashed_node_is_replaced_by_an_empty_one_from_the_other_replicas():
    world, traffic = loaded()
    world.crash("n3")
    world.advance(2_500)
    assert world.health("n3") == "down"
    traffic.write(50)  # n3 misses these
    world.advance(200)
    new = world.replace_node("n3")
    assert new == "n5"
    traffic.during_change()
    assert "n3" not in world.ring.nodes and "n3" not in world.node_names
    assert sorted(world.ring.tokens) == sorted(world.membership.last.old.tokens)
    assert traffic.misses() == []
    assert world.under_replicated() == []


def test_changes_are_refused_with_a_reason_and_start_no_node():
    world = World(WorldConfig(nodes=3), seed=1)
    with pytest.raises(MembershipError, match="fewer than N=3"):
        world.remove_node("n1")
    with pytest.raises(MembershipError, match="no node n9"):
        world.remove_node("n9")
    with pytest.raises(MembershipError, match="no node n9"):
        world.replace_node("n9")
    world.add_node()
    with pytest.raises(MembershipError, match="in progress"):
        world.add_node()
    with pytest.raises(MembershipError, match="in progress"):
        world.replace_node("n1")
    assert world.node_names == ["n1", "n2", "n3", "n4"]


def test_the_detector_marks_a_paused_node_suspect_then_down_and_up_after_resume():
    world = World(WorldConfig(nodes=4), seed=2)
    world.advance(1_000)
    assert {v.name: v.health for v in world.nodes()} == dict.fromkeys(world.node_names, "up")
    world.pause("n2")
    paused_at = world.now_ms
    seen: dict[str, float] = {}
    while "down" not in seen:
        world.advance(10)
        seen.setdefault(world.health("n2"), world.now_ms - paused_at)
    # The documented figures at 100 ms heartbeats: suspect after ~0.7 s, down ~1.85 s.
    assert 500 <= seen["suspect"] <= 1_000 and 1_600 <= seen["down"] <= 2_200, seen
    world.advance(100)  # the committer's next round hands its verdicts to the coordinators
    assert "n2" in world.coordinator(0).core.down  # which stop asking it
    world.resume("n2")
    world.advance(150)  # its next heartbeat
    assert world.health("n2") == "up" and "n2" not in world.coordinator(0).core.down


def test_the_membership_view_is_the_committer_s_as_of_now():
    # What the dashboard shows of a simulated cluster: the same view as a proxy's /cluster.
    world = World(WorldConfig(nodes=3), seed=2)
    world.advance(1_000)
    view = world.membership_view()
    assert {n: v["health"] for n, v in view["nodes"].items()} == dict.fromkeys(
        world.node_names, "up")
    assert all(v["phi"] < 3 for v in view["nodes"].values()) and view["change"] is None
    world.pause("n2")
    world.advance(2_000)
    n2 = world.membership_view()["nodes"]["n2"]
    assert n2["health"] == world.health("n2") == "down" and n2["phi"] >= 8
    assert 1_900 <= n2["silent_ms"] <= 2_100  # timed now, not at some earlier moment


def test_a_restarted_node_comes_back_on_the_ring_version_it_kept():
    world, traffic = loaded()
    world.add_node()
    traffic.during_change()
    version = world.membership.topology.version
    world.crash("n1")
    world.restart("n1")
    assert world.node("n1").replica.topology.version == version


def test_a_restarted_committer_keeps_the_membership_and_goes_on():
    world, traffic = loaded()
    world.add_node()
    world.advance(30)
    world.restart_coordinator(0)
    traffic.during_change()
    assert "n5" in world.coordinator(0).core.ring.nodes
    assert traffic.misses() == []


# About 16 s of traffic (virtual): several changes, and faults during them.
MEMBERSHIP_RUN = SimOptions(seed=3, ops=2000, nemesis=(MEMBERSHIP, "kill", "partition"),
                            mix=Mix(think_ms=80.0))


def history_bytes(options: SimOptions) -> tuple[bytes, dict]:
    result = run(options)
    out = io.BytesIO()
    write_history(result.events, out)
    return out.getvalue(), result.summary


def test_the_membership_nemesis_replays_exactly_and_keeps_every_write():
    first, summary = history_bytes(MEMBERSHIP_RUN)
    again, summary2 = history_bytes(MEMBERSHIP_RUN)
    assert first == again and summary == summary2
    changes = [f for f in summary["faults"] if f.split()[2] in ("add", "remove", "replace")]
    assert len(changes) >= 2, summary["faults"]
    assert summary["under_replicated"] == 0 and not summary["changing"]


def test_the_membership_nemesis_changes_one_at_a_time_and_never_below_n():
    sim = Simulation(MEMBERSHIP_RUN)
    sizes, busy = set(), 0
    while not sim.finished:
        sim.advance(50)
        sizes.add(len(sim.world.ring.nodes))
        busy += sim.world.membership.change is not None
    sim.quiesce()
    assert busy and min(sizes) >= 3
    changes = [f for f in sim.faults if f.kind == MEMBERSHIP]
    for before, after in zip(changes, changes[1:]):
        assert isinstance(before, Fault) and before.end_ms <= after.at_ms


def test_twenty_seeds_of_membership_kill_and_partition_keep_every_write(capsys):
    # Issue 10's acceptance run, shortened as test_sim_acceptance shortens issue 9's.
    changes = 0
    for seed in range(1, 21):
        code = main(["sim", "--seed", str(seed), "--ops", "600", "--think-ms", "50",
                     "--nemesis", "membership,kill,partition", "--json"])
        s = json.loads(capsys.readouterr().out)
        assert code == 0 and s["linearizable"] is True and s["lost_writes"] == 0, \
            (seed, s["violations"])
        assert s["under_replicated"] == 0 and not s["changing"], (seed, s)
        changes += sum(f.split()[2] in ("add", "remove", "replace") for f in s["faults"])
    assert changes >= 20
