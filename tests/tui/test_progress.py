"""A membership change as the dashboard reads it: parsed from the core's own view, and said
in words. Plain functions, no Textual; the change in progress comes from a real `Membership`
driven in memory by the core harness."""

from __future__ import annotations

import pytest

from kvlab.core.coordinator import Quorum
from kvlab.core.replica import ReplicaConfig
from kvlab.core.ring import RING_SIZE, Ring
from kvlab.tui.progress import (
    caption,
    duration,
    figures,
    flows,
    headline,
    rings,
    shares_text,
    size,
    summary,
)
from kvlab.tui.source import ChangeView, MembershipView, StreamView
from kvlab.tui.widgets.ring import Motion
from tests.unit.core_harness import CoreCluster


def mid_move() -> tuple[CoreCluster, dict]:
    """n4 joining three nodes, streams throttled so that the view is taken mid-move."""
    c = CoreCluster(Quorum(3, 2, 2), nodes=("n1", "n2", "n3"),
                    config=ReplicaConfig(n=3, anti_entropy=False, stream_batch=20,
                                         stream_rate=2000))
    c.tick(200)
    for i in range(300):
        c.write(f"k{i}", b"v" * 20)
    c.join("n4")
    c.apply("p", c.membership.add("n4", c.now))
    while not any(m["done"] for m in (c.membership.view(c.now)["change"] or {}).get(
            "moving", [])):
        c.tick(100)
    return c, c.membership.view(c.now)


def test_the_core_s_view_of_a_move_in_progress_parses_whole() -> None:
    c, view = mid_move()
    parsed = MembershipView.from_view(view)
    change = parsed.change
    assert change is not None and parsed.last_change is None
    assert (change.kind, change.node, change.phase) == ("add", "n4", "streaming")
    assert change.nodes_before == ("n1", "n2", "n3") and change.joining == ("n4",)
    assert change.leaving == ()
    assert 0 < change.fraction < 1 and change.eta_ms is not None and change.keys > 0
    assert {s.target for s in change.moving} == {"n4"}
    assert any(s.done for s in change.moving) and not all(s.done for s in change.moving)
    assert parsed.ring == c.coord.ring  # reads still go by the ring being left
    assert set(parsed.health) == {"n1", "n2", "n3", "n4"}
    assert all(health == "up" and phi is not None for health, phi in parsed.health.values())


def test_each_moving_arc_is_found_at_its_positions_and_nowhere_else() -> None:
    _, view = mid_move()
    change = MembershipView.from_view(view).change
    motion = Motion(change)
    for stream in change.moving:
        for start, end in stream.arcs:
            found = motion.at(end)
            assert found is not None and (found.source, found.target) == (
                stream.source, stream.target)
    arcs = [arc for s in change.moving for arc in s.arcs]
    inside = [(end - start) % RING_SIZE for start, end in arcs]
    # n4 takes on a replica of what moves: about 3/4 of the key space (on 16 vnodes, 58%).
    assert sum(inside) / RING_SIZE == pytest.approx(sum(s.share for s in change.moving))
    assert sum(inside) / RING_SIZE > 0.5
    outside = next(p for p in range(0, RING_SIZE, RING_SIZE // 997)
                   if not any(s < p <= e if s < e else p > s or p <= e for s, e in arcs))
    assert motion.at(outside) is None


def test_an_arc_wrapping_past_zero_holds_both_ends() -> None:
    stream = StreamView("n1", "n2", ((RING_SIZE - 10, 5),), 0.1)
    motion = Motion(ChangeView("add", "n2", "streaming", moving=(stream,)))
    assert motion.at(RING_SIZE - 1) is stream and motion.at(0) is stream
    assert motion.at(5) is stream and motion.at(6) is None
    assert motion.at(RING_SIZE - 10) is None  # (start, end]: the start is not in it


def test_malformed_views_parse_as_unknown_not_as_errors() -> None:
    assert MembershipView.from_view(None) == MembershipView()
    assert MembershipView.from_view({"nodes": {"n1": {"health": "sleepy"}},
                                     "ring": {"nodes": ["a", "a"], "vnodes": 4},
                                     "change": {"kind": "add"}}) == MembershipView()
    change = ChangeView.from_view({"kind": "add", "node": "n4", "fraction": 7,
                                   "eta_ms": True, "keys": -3,
                                   "moving": [{"source": "n1"}, "junk",
                                              {"source": "n1", "target": "n4",
                                               "arcs": [[1, 2], [3], "x"]}]})
    assert change is not None and change.fraction == 1.0 and change.eta_ms is None
    assert change.keys == 0 and change.moving == (StreamView("n1", "n4", ((1, 2),)),)


def test_a_change_in_words() -> None:
    change = ChangeView("add", "n4", "streaming", nodes_before=("n1", "n2", "n3"),
                        nodes_after=("n1", "n2", "n3", "n4"), elapsed_ms=2_400, keys=1_234,
                        bytes=2_100_000, fraction=0.45, rate_bytes_s=875_000, eta_ms=2_933,
                        moving=(StreamView("n1", "n4", ((1, 2),), 0.25, done=True),
                                StreamView("n2", "n4", ((3, 4),), 0.25),
                                StreamView("n2", "n4", ((5, 6),), 0.125, error="timeout")))
    assert headline(change).plain == "adding n4"
    assert caption(change).plain == "+n4 streaming 45% · ETA 2.9 s"
    early = ChangeView("add", "n4", "streaming", keys=800, moving=change.moving)
    assert caption(early).plain == "+n4 streaming 0% · 800 keys"  # no ETA yet
    assert figures(change) == ["streaming 45%", "1,234 keys", "2.1 MB", "875.0 kB/s",
                               "ETA 2.9 s"]
    assert [(f.source, f.target, f.share, f.done, f.error) for f in flows(change)] == [
        ("n1", "n4", 0.25, True, ""), ("n2", "n4", 0.375, False, "timeout")]
    done = ChangeView("replace", "n6", "done", replaced="n3", elapsed_ms=65_000, keys=12,
                      bytes=999)
    assert headline(done).plain == "n6 replacing n3" and caption(done).plain.startswith(
        "n3→n6 done")
    assert summary(done) == "n6 replaced n3 in 1 min 05 s: 12 keys, 999 B streamed"
    assert summary(ChangeView("remove", "n2", "done", elapsed_ms=350)).startswith(
        "removed n2 in 350 ms")
    assert [size(b) for b in (0, 999, 1000, 1_500_000, 3_200_000_000)] == [
        "0 B", "999 B", "1.0 kB", "1.5 MB", "3.2 GB"]
    assert [duration(ms) for ms in (0, 999, 1000, 59_949, 60_000)] == [
        "0 ms", "999 ms", "1.0 s", "59.9 s", "1 min 00 s"]


def test_shares_before_and_after_are_the_core_s_plan() -> None:
    ring = Ring(("n1", "n2", "n3"), 16)
    add = ChangeView("add", "n4", "streaming", nodes_before=ring.nodes,
                     nodes_after=ring.nodes + ("n4",))
    before, after = rings(add, ring)
    assert before == ring and after == ring.with_node("n4")
    # With N=3 every key is on all three nodes before; after, each of four holds 3/4.
    text = shares_text(add, ring, 3).plain
    assert text.startswith("n1 100%→") and "n4 0%→" in text
    replaced = ring.replacing("n3", "n5")
    swap = ChangeView("replace", "n6", "streaming", replaced="n5",
                      nodes_before=replaced.nodes, nodes_after=("n1", "n2", "n6"))
    old, new = rings(swap, replaced)
    assert old == replaced and sorted(new.tokens) == sorted(replaced.tokens)  # n3's seat
