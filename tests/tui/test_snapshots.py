"""The main screen at a fixed size on fixed data, compared with a stored snapshot.

Regenerate after an intended change with `KVLAB_UPDATE_SNAPSHOTS=1 pytest tests/tui`, then
look at the .svg (any browser) before committing it.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kvlab.tui.app import make_app
from kvlab.tui.source import ClusterSource, Exchange
from kvlab.tui.widgets.inspector import KeyInspector
from kvlab.tui.widgets.ring import RingView
from tests.tui.fake_source import FakeSource, adding
from tests.tui.helpers import region_text, screen_text, wait_for

SNAPSHOTS = Path(__file__).with_name("snapshots")
SIZE = (100, 30)
NOON = 1_700_000_000.0  # the event log's clock


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch):
    """Timestamps render in local time: pin it so the snapshot is the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def check(name: str, actual: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("KVLAB_UPDATE_SNAPSHOTS") or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        if not os.environ.get("KVLAB_UPDATE_SNAPSHOTS"):
            pytest.fail(f"{path} did not exist; written now, check it and run again")
        return
    expected = path.read_text()
    assert actual == expected, (f"{name} differs from the stored snapshot; if the change is "
                                f"intended, rerun with KVLAB_UPDATE_SNAPSHOTS=1")


def repaired(source: FakeSource) -> None:
    """Between two polls: n1 finished an anti-entropy round with n2 that brought 312 keys,
    and n5 handed 88 of its hints to n3 ... which is still down, so in this fixed data
    only the counters moved."""
    n1, n5 = source.view.node("n1").healing, source.view.node("n5").healing
    source.set_healing("n1", replace(
        n1, ae_rounds=n1.ae_rounds + 1, repaired={**n1.repaired, "anti_entropy": 312},
        exchanges={"n2": Exchange(1_700_000_005_000, "n1,n2,n5", 312, 0, 812)}))
    source.set_healing("n5", replace(n5, hints_held={"n3": 1_224},
                                     hints_replayed=n5.hints_replayed + 88))


async def render_main(key: str | None) -> tuple[str, str]:
    source = FakeSource()
    app = make_app(source, clock=lambda: NOON, poll_s=60, inspect_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.query_one(RingView).view is not None, 5,
                       "the first snapshot")
        repaired(source)
        app.poll_now()
        await wait_for(pilot, lambda: any("hints handed" in e for e in app.events.entries), 5,
                       "the repairs logged")
        if key:
            app.key_typed(key)
            app.inspect_key(key)
            await wait_for(pilot, lambda: app.query_one(KeyInspector).view is not None, 5,
                           "the inspection")
        await pilot.pause()
        return screen_text(app), app.export_screenshot(title="kvlab")


async def test_main_screen_matches_snapshot(utc) -> None:
    text, svg = await render_main("cart:9")
    check("main_100x30.txt", text + "\n")
    check("main_100x30.svg", svg)


async def test_snapshot_is_stable() -> None:
    first = await render_main(None)
    second = await render_main(None)
    assert first == second


async def test_cut_add_and_remove_keys_on_fixed_data() -> None:
    source = FakeSource()
    assert isinstance(source, ClusterSource)
    app = make_app(source, clock=lambda: NOON, poll_s=60, inspect_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.view is not None, 5, "the first snapshot")
        await pilot.press("1", "x", "2", "x")  # heal n1 (cut in the data), cut n2
        await wait_for(pilot, lambda: app.view.partitioned == {"n2"}, 5, "n1 healed, n2 cut")
        await pilot.press("a")
        await wait_for(pilot, lambda: app.selected == "n6", 5, "the new node selected")
        await pilot.press("X")
        await wait_for(pilot, lambda: app.view.node("n6") is None, 5, "n6 removed")
        assert app.selected == "n5"  # the next one down, as far as there is one
        assert source.calls == [("heal", "n1"), ("partition", "n2"), ("add", "n6"),
                                ("remove", "n6")]
        logged = [e[9:] for e in app.events.entries]  # without the time
        for line in ("cut the link proxy ⌁ n2 (both ways)", "heal the link proxy ↔ n1",
                     "n2 ● up → ● up ⌁ cut", "add a node", "n6 added to the ring",
                     "n6 joined the ring", "remove n6 from the ring and stop it",
                     "n6 removed", "n6 left the ring"):
            assert line in logged, line


async def render_move(size: tuple[int, int]) -> tuple[str, str, list[str]]:
    """n6 joining the fixed cluster: two of its five streams arrived, the others moving."""
    source = FakeSource()
    app = make_app(source, clock=lambda: NOON, poll_s=60, inspect_s=60)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: app.view is not None, 5, "the first snapshot")
        source.set_change(adding(source.view.ring, "n6", 3, arrived=2))
        app.poll_now()
        await wait_for(pilot, lambda: app.view.change is not None, 5, "the move")
        await pilot.pause()
        ring = region_text(app, app.query_one(RingView))
        nodes = region_text(app, app.nodes)
        return screen_text(app), app.export_screenshot(title="kvlab"), [ring, nodes]


async def test_a_move_in_progress_matches_snapshot(utc) -> None:
    text, svg, (ring, nodes) = await render_move(SIZE)
    check("moving_100x30.txt", text + "\n")
    check("moving_100x30.svg", svg)
    # Arcs still streaming and arcs arrived, each flow source → target, how far it got.
    assert "▒" in ring and "▓" in ring
    assert "▓n1→n6" in ring and "▒n2→n6" in ring
    assert "adding n6" in ring and "streaming" in ring
    assert "+n6 streaming" in text  # the ring panel's caption
    row = next(line for line in nodes.splitlines() if "n6" in line)
    assert "+joining" in row and "♥ up" in row
    assert "◔ suspect" in nodes and "○ down" in nodes  # paused n4, cut-off n1


async def test_a_move_fits_80x24() -> None:
    text, _, (ring, nodes) = await render_move((80, 24))
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "▒" in ring and "→n6" in ring and "+joining" in nodes


async def test_a_wide_nodes_panel_shows_phi_too() -> None:
    _, _, (_, nodes) = await render_move((140, 30))
    assert "health φ" in nodes
    assert "◔ suspect 5.1" in nodes and "○ down 12.4" in nodes and "○ down 143" in nodes
    assert "♥ up 0.4" in nodes and "p99" in nodes


async def test_a_node_being_removed_is_marked_leaving_and_its_flows_shown() -> None:
    source = FakeSource()
    ring = source.view.ring
    change = adding(ring.without_node("n2"), "n2", 3)  # the same moves, the other way
    removing = replace(change, kind="remove", nodes_before=ring.nodes,
                       nodes_after=ring.without_node("n2").nodes, moving=tuple(
                           replace(s, source="n2", target=s.source) for s in change.moving))
    source.set_change(removing)
    app = make_app(source, clock=lambda: NOON, poll_s=60, inspect_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.view is not None, 5, "the first snapshot")
        await pilot.pause()
        row = next(line for line in region_text(app, app.nodes).splitlines() if "n2" in line)
        assert "−leaving" in row
        ring_text = region_text(app, app.query_one(RingView))
        assert "removing n2" in ring_text and "▒n2→" in ring_text
        assert "−n2 streaming" in screen_text(app)
