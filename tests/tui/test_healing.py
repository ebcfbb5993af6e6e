"""The dashboard's view of self-healing, on a fake source that acts hinted handoff out.

The same scenario against real processes is in test_dashboard_live.py.
"""

from __future__ import annotations

from dataclasses import replace

from kvlab.tui.app import make_app
from kvlab.tui.source import DOWN, UP, Healing, NodeView
from kvlab.tui.widgets.nodes import NodesPanel
from tests.tui.fake_source import FakeSource, healing
from tests.tui.helpers import region_text, screen_text, wait_for

NOON = 1_700_000_000.0


class HandoffSource(FakeSource):
    """Five nodes up and healthy. While n3 is down each write leaves a hint for it on n2;
    when n3 restarts, n2 hands them all over (and n3 counts them as repaired)."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshots = 0
        self._nodes(NodeView(n.name, n.port, 4100 + i, UP, 100, healing=healing())
                    for i, n in enumerate(self.view.nodes, 1))

    async def snapshot(self):
        self.snapshots += 1
        return await super().snapshot()

    def _set(self, name: str, **changes: object) -> None:
        self._nodes(replace(n, **changes) if n.name == name else n for n in self.view.nodes)

    def _healing(self, name: str) -> Healing:
        found = self.view.node(name)
        assert found is not None and found.healing is not None
        return found.healing

    async def act(self, action: str, node: str) -> None:
        await super().act(action, node)
        if action == "kill":
            self._set(node, state=DOWN, pid=None, healing=None)
        elif action == "restart":
            held = self._healing("n2").hints_for(node)
            n2 = self._healing("n2")
            self._set("n2", healing=replace(n2, hints_held={},
                                            hints_replayed=n2.hints_replayed + held))
            self._set(node, state=UP, pid=4999, healing=healing(hint=held))

    async def write(self, key: str, value: str):
        if self.view.states["n3"] == DOWN:
            n2 = self._healing("n2")
            self._set("n2", healing=replace(
                n2, hints_held={"n3": n2.hints_for("n3") + 1}, hints_stored=n2.hints_stored + 1))
        return await super().write(key, value)


async def test_hints_pile_up_while_a_node_is_down_and_the_replay_is_logged() -> None:
    source = HandoffSource()
    app = make_app(source, clock=lambda: NOON, poll_s=0.05, inspect_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.view is not None, 5, "the first snapshot")
        await pilot.press("3", "k")
        await wait_for(pilot, lambda: app.view.states["n3"] == DOWN, 5, "n3 down")
        await pilot.press("slash", *"cart:1", "enter", "u", "u", "u")
        await wait_for(pilot, lambda: app.view.node("n2").hints == 3, 5, "3 hints on n2")
        assert any(e.endswith("n2: holding 1 hint for n3, to hand over when it is back")
                   for e in app.events.entries)
        nodes = region_text(app, app.nodes)
        assert "hints" in nodes.splitlines()[0]
        assert [row.split()[-1] for row in nodes.splitlines()[1:]] == ["0", "3", "-", "0", "0"]
        await pilot.press("2")
        await wait_for(pilot, lambda: "hints for n3 3" in screen_text(app), 5,
                       "the hints by target in the panel's subtitle")

        await pilot.press("3", "r")
        await wait_for(pilot, lambda: any(e.endswith("n2: 3 hints handed to n3")
                                          for e in app.events.entries), 5, "the replay logged")
        assert app.view.node("n2").hints == 0
        # Polls go on; nothing else happened, so nothing more is logged.
        count, polled = len(app.events.entries), source.snapshots
        await wait_for(pilot, lambda: source.snapshots >= polled + 3, 5, "three more polls")
        assert len(app.events.entries) == count


async def test_the_nodes_panel_fits_80_columns_with_its_hints_and_health_columns() -> None:
    app = make_app(FakeSource(), clock=lambda: NOON, poll_s=60, inspect_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view is not None, 5, "the first snapshot")
        await pilot.pause()
        panel = app.query_one(NodesPanel)
        lines = region_text(app, panel).splitlines()
        # phi, p99 and ops/s give way to the detector's verdict (the traffic panel sums up
        # the throughput and latency).
        assert lines[0].split() == ["node", "state", "health", "keys", "hints", "error"]
        assert [line.split()[0].lstrip("▸") for line in lines[1:6]] == [
            "n1", "n2", "n3", "n4", "n5"]
        assert "1,312" in lines[5] and "conn" in lines[3]  # n5's hints, n3's error, cut short
        assert "◔ suspect" in lines[4] and "○ down" in lines[1]  # paused n4, cut-off n1
        assert all(len(line) <= 80 for line in screen_text(app).splitlines())
