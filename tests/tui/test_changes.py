"""The event log's diff of two snapshots: plain functions on hand-built views, no Textual."""

from __future__ import annotations

from dataclasses import replace

from kvlab.core.ring import Ring
from kvlab.tui.changes import changes, repair_events
from kvlab.tui.source import (
    DOWN,
    SUSPECT,
    UP,
    ChangeView,
    ClusterView,
    Exchange,
    Healing,
    NodeView,
    StreamView,
)
from tests.tui.fake_source import healing

NAMES = ("n1", "n2", "n3")


def view(**by_node: Healing | None) -> ClusterView:
    """Three nodes up (pids 101..103) with the given healing counters (default: all 0)."""
    nodes = tuple(NodeView(name, 8000 + i, 100 + i, UP, 10,
                           healing=by_node.get(name, healing()))
                  for i, name in enumerate(NAMES, 1))
    return ClusterView("t", 3, 2, 2, 8, nodes, Ring(NAMES, 8))


def lines(before: ClusterView, after: ClusterView) -> list[str]:
    return [e.plain for e in repair_events(before, after)]


def test_nothing_changed_is_no_line() -> None:
    busy = view(n1=healing({"n3": 5}, read_repair=7, anti_entropy=3, hints_replayed=9,
                           exchanges={"n2": Exchange(1000, "n1,n2,n3", 3, 0, 20)}))
    assert lines(busy, busy) == []
    assert changes(busy, busy) == []
    assert lines(view(), view()) == []


def test_a_new_exchange_with_keys_in_says_how_many_from_whom_and_how_long() -> None:
    before = view(n1=healing(exchanges={"n2": Exchange(1000, "n1,n2,n3", 0, 0, 5)}))
    after = view(n1=healing(anti_entropy=312,
                            exchanges={"n2": Exchange(6000, "n1,n2,n3", 312, 0, 812)}))
    assert lines(before, after) == ["n1: 312 keys repaired by anti-entropy from n2, 0.8 s"]
    assert [e.level for e in repair_events(before, after)] == ["ok"]


def test_keys_a_peer_pushed_are_repairs_on_the_receiving_node() -> None:
    before = view()
    after = view(n2=healing(exchanges={"n3": Exchange(500, "n1,n2,n3", 0, 4, 30)}),
                 n3=healing(anti_entropy=4))
    assert lines(before, after) == ["n3: 4 keys repaired by anti-entropy from n2, 30 ms"]


def test_many_rounds_between_two_polls_count_every_key() -> None:
    # Two rounds of 1000 ran between the polls; the exchange shows only the last one.
    before = view(n1=healing(anti_entropy=100))
    after = view(n1=healing(anti_entropy=2100,
                            exchanges={"n3": Exchange(9000, "n3,n1,n2", 1000, 0, 1500)}))
    assert lines(before, after) == ["n1: 2,000 keys repaired by anti-entropy from n3, 1.5 s"]


def test_an_exchange_already_seen_or_in_sync_is_not_news() -> None:
    old = Exchange(1000, "n1,n2,n3", 50, 0, 100)
    before = view(n1=healing(anti_entropy=50, exchanges={"n2": old}))
    in_sync = view(n1=healing(anti_entropy=50, ae_rounds=1, ae_in_sync=1,
                              exchanges={"n2": replace(old, at_ms=6000, keys_in=0, ms=3)}))
    assert lines(before, in_sync) == []
    # The counter moved (keys pushed by a peer whose snapshot is unknown): still one line.
    pushed = view(n1=healing(anti_entropy=53, exchanges={"n2": old}), n2=None)
    assert lines(before, pushed) == ["n1: 3 keys repaired by anti-entropy"]


def test_hints_replayed_name_their_target() -> None:
    before = view(n3=healing({"n1": 40, "n2": 2}, hints_stored=42))
    after = view(n3=healing({"n2": 2}, hints_stored=42, hints_replayed=40),
                 n1=healing(hint=40))
    assert lines(before, after) == ["n3: 40 hints handed to n1"]


def test_hints_replayed_without_a_visible_target_are_handed_over() -> None:
    before = view(n3=healing(hints_replayed=1))
    after = view(n3=healing(hints_replayed=2))
    assert lines(before, after) == ["n3: 1 hint handed over"]


def test_a_node_starting_to_hold_hints_is_one_line_not_one_per_poll() -> None:
    first = view(n2=healing({"n3": 3}, hints_stored=3))
    more = view(n2=healing({"n3": 90}, hints_stored=90))
    assert lines(view(), first) == ["n2: holding 3 hints for n3, to hand over when it is back"]
    assert lines(first, more) == []


def test_read_repair_purges_refusals_and_expired_hints() -> None:
    before = view()
    after = view(n2=healing(read_repair=12, purged=1, refused=2, hints_expired=5))
    assert lines(before, after) == [
        "n2: 5 hints expired after the hint window; anti-entropy repairs those writes",
        "n2: 12 keys fixed by read repair",
        "n2: 1 tombstone purged (every replica had it, grace period over)",
        "n2: refused 2 writes stamped too far ahead of its clock",
    ]
    assert [e.level for e in repair_events(before, after)] == ["warn", "ok", "info", "warn"]


def test_unknown_counters_are_no_line_and_no_crash() -> None:
    known = view(n1=healing(read_repair=5))
    unknown = view(n1=None, n2=None, n3=None)
    assert lines(known, unknown) == []
    assert lines(unknown, known) == []  # back from down: what it did meanwhile is no news


def test_a_restarted_node_counts_from_zero() -> None:
    before = view(n1=healing(read_repair=1))
    after = view(n1=healing(read_repair=3))
    restarted = replace(after, nodes=tuple(replace(n, pid=999) if n.name == "n1" else n
                                           for n in after.nodes))
    assert lines(before, after) == ["n1: 2 keys fixed by read repair"]
    assert lines(before, restarted) == ["n1: 3 keys fixed by read repair"]  # a new process
    # Without a pid (the simulator), a counter that went down says it restarted.
    assert lines(view(n1=healing(read_repair=500, hints_replayed=70)),
                 view(n1=healing(read_repair=2))) == ["n1: 2 keys fixed by read repair"]


def test_states_and_repairs_come_in_one_list_states_first() -> None:
    before = view()
    after = view(n1=healing(read_repair=1))
    after = replace(after, nodes=tuple(replace(n, state=DOWN, healing=None)
                                       if n.name == "n3" else n for n in after.nodes))
    assert [e.plain for e in changes(before, after)] == [
        "n3 ● up → ✗ down", "n1: 1 key fixed by read repair"]


def test_healing_parses_the_replica_snapshot_and_tolerates_junk() -> None:
    data = {"hints_held": {"n3": 4, "n2": 0}, "hints_stored": 9, "hints_replayed": 5,
            "hints_expired": 0, "ae_rounds": 3, "ae_in_sync": 2,
            "repaired": {"read_repair": 1, "hint": 5, "anti_entropy": 7}, "repair_bytes": 99,
            "superseded": 0, "refused": 0, "purged": 1, "tombstones": 2,
            "exchanges": {"n2": {"at_ms": 10, "range": "n1,n2,n3", "keys_in": 7,
                                 "keys_out": 0, "ms": 4, "ago_ms": 250}}}
    parsed = Healing.from_snapshot(data)
    assert parsed is not None
    assert parsed.hints_pending == 4 and parsed.hints_for("n3") == 4
    assert parsed.hints_held == {"n3": 4}  # targets with nothing held are not listed
    assert parsed.repaired_by("anti_entropy") == 7 and parsed.repaired_by("nothing") == 0
    assert parsed.exchanges["n2"] == Exchange(10, "n1,n2,n3", 7, 0, 4, 250)
    assert Healing.from_snapshot(None) is None
    assert Healing.from_snapshot("junk") is None
    odd = Healing.from_snapshot({"hints_held": [1], "hints_replayed": "x", "purged": -3,
                                 "exchanges": {"n2": {"range": "no at_ms"}, "n3": None}})
    assert odd == Healing()
    hash(NodeView("n1", None, None, UP, healing=parsed))  # views stay hashable


def with_health(view: ClusterView, **health: str | None) -> ClusterView:
    phi = {UP: 0.4, SUSPECT: 3.6, DOWN: 8.3}
    return replace(view, nodes=tuple(
        replace(n, health=health.get(n.name, UP), phi=phi.get(health.get(n.name, UP)))
        for n in view.nodes))


def test_the_detector_s_verdicts_are_logged_as_they_change() -> None:
    up, base = with_health(view()), view()
    suspect = with_health(view(), n2=SUSPECT)
    down = with_health(view(), n2=DOWN)
    assert [e.plain for e in changes(up, suspect)] == [
        "n2 ♥ up → ◔ suspect (φ 3.6): no heartbeat for a while"]
    assert [(e.plain, e.level) for e in changes(suspect, down)] == [
        ("n2 ◔ suspect → ○ down (φ 8.3): the coordinator stops asking it: its part of a "
         "request fails at once", "error")]
    assert [(e.plain, e.level) for e in changes(down, up)] == [
        ("n2 ○ down → ♥ up: heartbeats are back, it is asked again", "ok")]
    # Unknown on either side (a source without a detector, the proxy not answering) is
    # not a verdict that changed.
    assert changes(base, down) == [] and changes(down, base) == []


def moving(phase: str = "streaming", started_ms: int = 5, error: str = "",
           done: bool = False) -> ChangeView:
    return ChangeView("add", "n4", phase, nodes_before=NAMES, nodes_after=NAMES + ("n4",),
                      started_ms=started_ms, elapsed_ms=3_200, keys=1_234, bytes=2_100_000,
                      moving=(StreamView("n1", "n4", ((1, 2),), 0.25, done=done),
                              StreamView("n2", "n4", ((3, 4),), 0.5, error=error)))


def test_a_membership_change_is_logged_from_start_to_end() -> None:
    idle = view()
    joining = replace(idle, change=moving("joining"))
    streaming = replace(idle, change=moving("streaming"))
    failing = replace(idle, change=moving("streaming", error="no progress from n2 in 10 s"))
    settling = replace(idle, change=moving("settling", done=True))
    over = replace(idle, ring=Ring(NAMES + ("n4",), 8),
                   last_change=moving("done", done=True))

    started = [e.plain for e in changes(idle, joining)]
    assert started[0] == "adding n4: ▒n1→n4 25%, ▒n2→n4 50%"
    assert started[1].startswith("shares of the keys n1 100%→") and "n4 0%→" in started[1]
    assert [e.plain for e in changes(joining, streaming)] == [
        "adding n4: nothing placed by the old ring is in flight any more: streaming the "
        "moving ranges"]
    assert changes(streaming, streaming) == []
    assert [(e.plain, e.level) for e in changes(streaming, failing)] == [
        ("stream !n2→n4 50%: no progress from n2 in 10 s", "warn")]
    assert changes(failing, failing) == []  # the same error is said once
    assert [e.plain for e in changes(failing, settling)] == [
        "adding n4: every range arrived: reads go to the new owners"]
    assert [(e.plain, e.level) for e in changes(settling, over)] == [
        ("n4 joined the ring", "ok"),
        ("added n4 in 3.2 s: 1,234 keys, 2.1 MB streamed", "ok")]
    assert changes(over, over) == []
    # A change that began and ended between two polls: only its totals.
    assert [e.plain for e in changes(idle, over)][-1].startswith("added n4 in 3.2 s")
    # The next change, though it names the same node, is a new one.
    again = replace(over, change=moving("joining", started_ms=9_000))
    assert [e.plain for e in changes(over, again)][0].startswith("adding n4: ")
