"""Membership changes in the pure core: every acknowledged write stays readable through
joins, leaves and replacements, with writes going on during the move."""

from __future__ import annotations

import pytest

from kvlab.core.coordinator import Quorum
from kvlab.core.detector import FailureDetector, Health
from kvlab.core.membership import MembershipError, Phase
from kvlab.core.messages import OK
from kvlab.core.replica import ReplicaConfig
from kvlab.core.ring import Ring
from tests.unit.core_harness import CoreCluster

KEYS = [f"k{i}" for i in range(400)]


def _cluster(nodes=("n1", "n2", "n3"), **config) -> CoreCluster:
    c = CoreCluster(Quorum(3, 2, 2), nodes=nodes,
                    config=ReplicaConfig(n=3, anti_entropy=False, stream_batch=50, **config))
    c.tick(200)  # heartbeats start: every node is heard
    return c


def _all_readable(c: CoreCluster, acked: dict[str, bytes]) -> None:
    misses = [k for k, v in acked.items()
              if (out := c.read(k)) is None or out.status != OK or out.record.value != v]
    assert misses == []


def test_adding_a_node_moves_its_ranges_and_loses_nothing_while_writes_go_on():
    c = _cluster()
    acked = c.write_all(KEYS)
    c.join("n4")
    c.apply("p", c.membership.add("n4", c.now))
    assert c.coord.topology.pending is not None
    more = iter(range(10_000))

    def write_some():
        for _ in range(5):
            i = next(more)
            acked.update(c.write_all([f"w{i}"], b"during"))

    c.finish_change(write_some)
    assert c.coord.topology.pending is None and "n4" in c.coord.ring.nodes
    last = c.membership.last
    assert last.phase == Phase.DONE and last.view(c.now)["keys"] > 0
    # The new node holds every key it now owns, with no read repair needed.
    owned = [k for k in acked if "n4" in c.coord.ring.preference_list(k, 3)]
    assert owned and all(c.stores["n4"].get(k) is not None for k in owned)
    # Old owners dropped what moved away.
    for node in ("n1", "n2", "n3"):
        strays = [k for k in acked if node not in c.coord.ring.preference_list(k, 3)]
        assert strays and all(c.stores[node].get(k) is None for k in strays)
    _all_readable(c, acked)


def test_removing_a_node_streams_its_ranges_out_first():
    c = _cluster(("n1", "n2", "n3", "n4"))
    acked = c.write_all(KEYS)
    c.apply("p", c.membership.remove("n2", c.now))
    c.finish_change()
    c.crash("n2")  # decommissioned: stopped
    assert "n2" not in c.coord.ring.nodes
    assert all(c.stores[n].get(k) is not None for k in acked
               for n in c.coord.ring.preference_list(k, 3))
    _all_readable(c, acked)


def test_a_dead_node_is_replaced_by_an_empty_one_from_the_other_replicas():
    c = _cluster(("n1", "n2", "n3", "n4"))
    acked = c.write_all(KEYS)
    c.crash("n3")
    c.tick(3_000)  # the detector holds it down
    assert c.membership.health("n3", c.now) == Health.DOWN
    acked.update(c.write_all([f"late{i}" for i in range(50)], b"late"))  # n3 misses these
    c.join("n5")
    c.apply("p", c.membership.replace("n3", "n5", c.now))
    c.finish_change()
    ring = c.coord.ring
    assert "n3" not in ring.nodes and "n5" in ring.nodes
    # n5 sits on n3's tokens: it owns exactly what n3 did, and nobody else's ranges moved.
    assert sorted(ring.tokens) == sorted(c.membership.last.old.tokens)
    assert all(c.stores["n5"].get(k) is not None for k in acked
               if "n5" in ring.preference_list(k, 3))
    _all_readable(c, acked)


def test_a_stream_whose_source_dies_is_taken_over_by_the_other_replicas():
    c = _cluster(("n1", "n2", "n3", "n4"))
    acked = c.write_all(KEYS)
    c.join("n5")
    c.apply("p", c.membership.add("n5", c.now))
    c.silent.add("n1")  # n1 stops answering: its streams stall, then it is down
    c.finish_change()
    assert c.membership.last.view(c.now)["keys"] > 0
    c.silent.discard("n1")
    c.held.clear()
    c.crash("n1")
    # n1 is down for good: R=2 must still find every key among the others.
    _all_readable(c, acked)


def test_changes_are_refused_while_one_is_in_progress_or_below_n_nodes():
    c = _cluster()
    with pytest.raises(MembershipError, match="fewer than N=3"):
        c.membership.remove("n1", c.now)
    with pytest.raises(MembershipError, match="already in the ring"):
        c.membership.add("n2", c.now)
    c.join("n4")
    c.apply("p", c.membership.add("n4", c.now))
    with pytest.raises(MembershipError, match="in progress"):
        c.membership.add("n5", c.now)
    with pytest.raises(MembershipError, match="bad node name"):
        _cluster().membership.add("a#b", c.now)


def test_a_node_refuses_a_read_for_a_range_it_left_instead_of_saying_not_found():
    c = _cluster(("n1", "n2", "n3", "n4"))
    acked = c.write_all(KEYS[:100])
    c.apply("p", c.membership.remove("n4", c.now))
    c.finish_change()
    gone = next(k for k in acked if "n4" in c.membership.last.old.preference_list(k, 3))
    # A stale coordinator still placing by the old ring asks n4: it is refused, loudly.
    from kvlab.core.messages import ErrorReply, ReadRequest
    effects = c.replicas["n4"].receive("stale", ReadRequest(99, gone), c.now)
    assert [type(e.message) for e in effects] == [ErrorReply]


def test_the_detector_suspects_then_downs_a_silent_node_and_takes_it_back():
    d = FailureDetector(interval_ms=100)
    d.watch("a", 0)
    for t in range(100, 2_100, 100):
        d.heartbeat("a", t)
    assert d.health("a", 2_150) == Health.UP
    suspect_at = next(t for t in range(2_000, 6_000, 10) if d.health("a", t) != Health.UP)
    down_at = next(t for t in range(2_000, 6_000, 10) if d.health("a", t) == Health.DOWN)
    assert 2_000 + 500 <= suspect_at <= 2_000 + 900  # ~0.7 s of silence
    assert 2_000 + 1_600 <= down_at <= 2_000 + 2_100  # ~1.85 s
    d.heartbeat("a", 5_000)
    assert d.health("a", 5_001) == Health.UP


def test_the_coordinator_fails_fast_on_a_node_held_down():
    c = _cluster()
    c.crash("n2")
    c.tick(2_500)
    assert "n2" in c.coord.down
    key = next(k for k in KEYS if "n2" in c.prefs(k))
    out = c.read(key, r=3)  # needs n2: answered at once, not at the deadline
    assert out is not None and out.status == "unavailable" and out.failed["n2"] == "down"
    c.restart("n2")
    c.tick(300)
    assert "n2" not in c.coord.down


def test_a_node_held_down_is_taken_back_as_soon_as_its_channel_reopens():
    c = _cluster()
    c.crash("n2")
    c.tick(2_500)
    assert "n2" in c.coord.down
    c.restart("n2")
    # No heartbeat tick: the ping sent on connecting is answered, and that is enough.
    c.apply("p", c.membership.connected("n2", c.now))
    assert "n2" not in c.coord.down
    key = next(k for k in KEYS if "n2" in c.prefs(k))
    assert c.write(key, b"v").status == OK and c.read(key, r=3).status == OK


def test_a_committer_restarted_without_its_state_learns_the_ring_from_the_nodes():
    from kvlab.core.coordinator import Coordinator
    from kvlab.core.membership import Membership

    c = _cluster()
    acked = c.write_all(KEYS[:300])
    original = c.coord.ring
    for node in ("n4", "n5"):
        c.join(node)
        c.apply("p", c.membership.add(node, c.now))
        c.finish_change()
    held = c.replicas["n1"].topology.version
    grown = c.coord.ring
    # The proxy restarts with no state, from the ring it was first started with: it must
    # not put that stale ring over the nodes' (99 of these keys would be on one node).
    c.coord = Coordinator("p", original, Quorum(3, 2, 2), timeout_ms=1000)
    c.membership = Membership(c.coord)
    for node in grown.nodes:
        c.apply("p", c.membership.connected(node, c.now))  # ignored: older than theirs
    assert c.replicas["n1"].topology.version == held
    c.tick(300)  # their Pongs and answers tell it the ring they hold
    assert c.coord.topology.version == held and c.coord.ring == grown
    assert all(c.replicas[n].topology.version == held for n in grown.nodes)
    c.crash("n1")  # and one failure loses nothing
    _all_readable(c, acked)


def test_a_committer_restarted_mid_move_starts_the_move_over_and_loses_nothing():
    from kvlab.core.coordinator import Coordinator
    from kvlab.core.membership import Membership

    c = _cluster(stream_rate=2_000)  # bytes/s: the move takes seconds
    acked = c.write_all(KEYS)
    c.join("n4")
    c.apply("p", c.membership.add("n4", c.now))
    c.tick(500)  # streaming has begun
    saved = c.membership.topology
    assert saved.pending is not None
    acked.update(c.write_all([f"mid{i}" for i in range(50)], b"mid"))
    # The proxy dies; a new one starts from the topology the old one published.
    c.coord = Coordinator("p", saved.ring, Quorum(3, 2, 2), timeout_ms=1000)
    c.membership = Membership(c.coord)
    c.apply("p", c.membership.restore(saved, c.now))
    assert c.membership.change.kind == "resume"
    assert c.coord.topology.version == saved.version and c.coord.topology.pending is not None
    c.finish_change()
    assert "n4" in c.coord.ring.nodes
    _all_readable(c, acked)


def test_a_node_that_missed_a_ring_update_is_sent_it_again_on_its_next_heartbeat():
    c = _cluster(("n1", "n2", "n3", "n4"), stream_rate=2_000)  # the move takes seconds
    c.write_all(KEYS)
    c.silent.add("n4")  # cut off while the change begins: its RingUpdate is lost
    c.apply("p", c.membership.remove("n1", c.now))
    c.held.clear()
    c.silent.discard("n4")
    assert c.replicas["n4"].topology.version < c.coord.topology.version
    c.tick(200)  # its Pong says which version it holds; the committer sends it the current one
    assert c.membership.change is not None  # (no later version has been published meanwhile)
    assert c.replicas["n4"].topology.version == c.coord.topology.version


def test_the_view_carries_the_read_ring_whole_with_a_replacement_s_seat():
    # A replacement's tokens are its seat's: a reader rebuilding the ring from node names
    # alone (the dashboard) would draw it on tokens nobody holds.
    c = _cluster(("n1", "n2", "n3", "n4"))
    c.crash("n3")
    c.tick(3_000)
    c.join("n5")
    c.apply("p", c.membership.replace("n3", "n5", c.now))
    assert c.membership.view(c.now)["ring"]["nodes"] == ["n1", "n2", "n3", "n4"]
    c.finish_change()
    seen = c.membership.view(c.now)["ring"]
    assert seen == {"nodes": ["n1", "n2", "n5", "n4"], "vnodes": 16, "seats": [["n5", "n3"]]}
    rebuilt = Ring(tuple(seen["nodes"]), seen["vnodes"], tuple(map(tuple, seen["seats"])))
    assert rebuilt.tokens == c.coord.ring.tokens


def test_a_replacement_with_a_second_replica_down_waits_for_it_rather_than_lose_its_writes():
    c = CoreCluster(Quorum(3, 2, 2), nodes=("n1", "n2", "n3", "n4"), hints=False,
                    config=ReplicaConfig(n=3, anti_entropy=False, stream_batch=50))
    c.tick(200)
    x, y, z = c.prefs("k1")
    c.silent.add(y)  # y misses the write: x and z acknowledge it
    assert c.write("k1", b"on x and z").status == OK
    c.held.clear()
    c.silent.discard(y)
    c.crash(x)  # dead for good: replaced
    c.crash(z)  # down for a while
    c.tick(3_000)
    c.join("n5")
    c.apply("p", c.membership.replace(x, "n5", c.now))
    c.tick(5_000)
    # y alone can't stand in for x: n5 would own k1 without it, and a read of n5 and y
    # would say "not found" to an acknowledged write.
    assert c.membership.change is not None and c.coord.topology.pending is not None
    c.restart(z)
    c.finish_change()
    assert c.stores["n5"].get("k1") is not None
    c.crash(z)
    c.tick(3_000)
    out = c.read("k1")
    assert out.status == OK and out.record.value == b"on x and z"


def test_a_new_owner_compares_its_new_ranges_with_anti_entropy_at_once():
    c = CoreCluster(Quorum(3, 2, 2), nodes=("n1", "n2", "n3"),
                    config=ReplicaConfig(n=3, anti_entropy_ms=60_000))
    c.tick(200)
    acked = c.write_all(KEYS[:100])
    c.join("n4")
    c.apply("p", c.membership.add("n4", c.now))
    c.finish_change()
    c.tick(500)  # far less than the 60 s period: only the urgent first round can run
    stats = c.replicas["n4"].stats
    assert stats.ae_rounds >= 1 and stats.ae_in_sync >= 1
    _all_readable(c, acked)


def test_a_move_reports_how_far_its_streams_have_got_before_any_is_over():
    c = _cluster(stream_rate=4_000)  # bytes/s: each stream takes a few seconds
    c.write_all(KEYS)
    c.join("n4")
    c.apply("p", c.membership.add("n4", c.now))
    seen = []
    while c.membership.change is not None:
        view = c.membership.change.view(c.now)
        if view["streams_done"] == 0:
            seen.append(view["fraction"])
        c.tick(100)
    assert max(seen) > 0.2  # it grows with the streams' positions, not in whole streams
    assert seen == sorted(seen)


def test_arcs_coverage_follows_the_ring_order_a_stream_goes_in():
    from kvlab.core.ring import RING_SIZE
    from kvlab.core.stream import Arcs

    arcs = Arcs([(99, 199), (RING_SIZE - 101, 49)])  # the second one wraps past zero
    assert arcs.covered(-1) == 0.0
    assert arcs.covered(49) == pytest.approx(50 / 250)
    assert arcs.covered(149) == pytest.approx(100 / 250)
    assert arcs.covered(RING_SIZE - 1) == 1.0


def test_a_move_to_a_node_that_never_comes_up_can_be_aborted_and_loses_nothing():
    c = _cluster()
    acked = c.write_all(KEYS)
    c.join("n4")
    c.crash("n4")  # started, then died before it was ever heard
    c.apply("p", c.membership.add("n4", c.now))
    acked.update(c.write_all([f"during{i}" for i in range(100)], b"during"))
    c.tick(5_000)
    assert c.membership.change.phase == Phase.STREAMING  # stuck: its target is down
    c.apply("p", c.membership.abort(c.now))
    assert c.membership.change is None and c.membership.last.phase == Phase.ABORTED
    assert c.coord.topology.pending is None and "n4" not in c.coord.ring.nodes
    assert "n4" not in c.membership.watched
    _all_readable(c, acked)
    with pytest.raises(MembershipError, match="no change"):
        c.membership.abort(c.now)
    # And the next change can go ahead.
    c.join("n5")
    c.apply("p", c.membership.add("n5", c.now))
    c.finish_change()
    _all_readable(c, acked)


def test_a_change_whose_reads_have_moved_cannot_be_aborted():
    c = _cluster(stream_rate=0)
    c.write_all(KEYS[:50])
    c.join("n4")
    c.apply("p", c.membership.add("n4", c.now))
    c.tick(100)  # drained: streaming
    # One write whose message to n2 is held stays in flight (until its 1 s deadline):
    # reads move, but the cleanup waits for it.
    c.silent.add("n2")
    c.write("held", b"v")
    c.silent.discard("n2")
    while c.membership.change.phase != Phase.SETTLING:
        c.tick(10, step=10)
    with pytest.raises(MembershipError, match="reads have moved"):
        c.membership.abort(c.now)


def test_a_name_whose_tokens_a_replacement_holds_is_refused():
    c = _cluster(("n1", "n2", "n3", "n4"))
    c.crash("n3")
    c.join("n5")
    c.apply("p", c.membership.replace("n3", "n5", c.now))
    c.finish_change()
    # A new "n3" would get n5's tokens: the two would replicate the very same keys.
    with pytest.raises(MembershipError, match="tokens a replacement holds"):
        c.membership.add("n3", c.now)


def test_a_replacement_resumed_by_a_restarted_committer_never_asks_the_dead_node():
    from kvlab.core.coordinator import Coordinator
    from kvlab.core.membership import Membership

    c = _cluster(("n1", "n2", "n3", "n4"), stream_rate=2_000)
    acked = c.write_all(KEYS)
    c.crash("n3")
    c.tick(3_000)
    c.join("n5")
    c.apply("p", c.membership.replace("n3", "n5", c.now))
    c.tick(300)
    saved = c.membership.topology
    c.coord = Coordinator("p", saved.ring, Quorum(3, 2, 2), timeout_ms=1000)
    c.membership = Membership(c.coord)
    c.apply("p", c.membership.restore(saved, c.now))
    change = c.membership.change
    assert change.kind == "resume" and change.replaced == "n3"
    assert all(t.source != "n3" for t in change.transfers.values())
    c.finish_change()
    _all_readable(c, acked)


def test_a_leaving_node_hands_over_the_hints_it_keeps_before_reads_move():
    # A replay that failed is tried again only after 10 s: the window to see the wait.
    c = _cluster(("n1", "n2", "n3", "n4", "n5"), retry_ms=10_000)
    c.crash("n5")
    c.tick(3_000)  # held down: writes for it become hints on fallbacks
    hinted = c.write_all([k for k in KEYS if "n5" in c.prefs(k)][:80])
    c.tick(200)  # each fallback tries n5 once, fails, and waits
    holder = max(("n1", "n2", "n3", "n4"), key=lambda n: c.replicas[n].hints_held().get("n5", 0))
    assert c.replicas[holder].hints_held().get("n5", 0) > 0
    c.restart("n5")
    c.apply("p", c.membership.remove(holder, c.now))
    c.tick(2_000)
    change = c.membership.change
    # Its ranges have arrived, but not yet its hints for n5: reads have not moved.
    assert change is not None and all(t.done for t in change.transfers.values())
    assert change.phase == Phase.STREAMING
    c.finish_change()
    assert c.replicas[holder].hints_held() == {}
    c.crash(holder)  # decommissioned: stopped, its hints handed over first
    assert all(c.stores["n5"].get(k) is not None for k in hinted
               if "n5" in c.coord.ring.preference_list(k, 3))


def test_a_joining_node_that_loses_its_disk_mid_move_is_streamed_again_from_the_start():
    c = _cluster(stream_rate=3_000)  # bytes/s: a move of seconds
    acked = c.write_all(KEYS)
    c.join("n4")
    c.apply("p", c.membership.add("n4", c.now))
    while c.membership.change.view(c.now)["keys"] < 100:
        c.tick(100)
    c.crash("n4")
    c.wipe("n4")
    c.restart("n4")  # empty, knowing no ring: it says version 0 in its first Pong
    c.finish_change()
    owned = [k for k in acked if "n4" in c.coord.ring.preference_list(k, 3)]
    assert owned and all(c.stores["n4"].get(k) is not None for k in owned)
    _all_readable(c, acked)


def test_neither_a_slow_start_nor_an_outage_slows_the_next_detection():
    d = FailureDetector(interval_ms=100)
    d.watch("a", 0)
    t = 3_000  # the node took 3 s to start: its first heartbeat comes then
    for _ in range(10):
        d.heartbeat("a", t)
        t += 100
    t += 5_000  # down for 5 s, then back
    for _ in range(10):
        d.heartbeat("a", t)
        t += 100
    last = t - 100
    down_at = next(x for x in range(last, last + 6_000, 10) if d.health("a", x) == Health.DOWN)
    assert 1_600 <= down_at - last <= 2_100  # as for a node that was always regular
