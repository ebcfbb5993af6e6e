"""The dashboard against a real local cluster, driven with Textual's pilot."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvlab.cluster.ports import free_port_block
from kvlab.cluster.spec import ClusterSpec
from kvlab.cluster.supervisor import Cluster
from kvlab.tui.app import KvlabApp, make_app
from kvlab.tui.live import LiveSource, attach_or_start
from kvlab.tui.widgets.inspector import KeyInspector, verdicts
from tests.cluster_helpers import real_cluster
from tests.tui.helpers import screen_text, wait_for

SIZE = (100, 30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One 3-node cluster for the module; each test leaves every node up again."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVLAB_HOME", str(tmp_path_factory.mktemp("kvlab-home")))
        with real_cluster(nodes=3) as running:
            yield running
            # Nodes restarted by the tests have PIDs only cluster.json knows.
            Cluster.load(running.spec.name).stop()


def live_app(cluster: Cluster) -> KvlabApp:
    return make_app(LiveSource(cluster.spec.name), poll_s=0.2, inspect_s=0.3)


def state(app: KvlabApp, node: str) -> str | None:
    view = app.view and app.view.node(node)
    return view.state if view else None


def all_up(app: KvlabApp) -> bool:
    return app.view is not None and all(n.state == "up" for n in app.view.nodes)


def logged(app: KvlabApp, text: str) -> bool:
    return any(text in line for line in app.events.entries)


async def test_kill_and_restart_from_the_dashboard(cluster: Cluster) -> None:
    app = live_app(cluster)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: all_up(app), 10, "every node up")
        await pilot.press("t")  # traffic: clients should keep succeeding with n3 down
        await wait_for(pilot, lambda: app.source.traffic_stats().ok > 20, 10, "traffic")

        await pilot.press("3", "k")
        await wait_for(pilot, lambda: state(app, "n3") == "down", 5, "n3 down")
        await wait_for(pilot, lambda: logged(app, "n3 killed"), 5, "the kill logged")
        assert logged(app, "kill n3 (SIGKILL)")
        assert logged(app, "n3 ● up → ✗ down")
        assert "✗ down" in screen_text(app)

        ok_before = app.source.traffic_stats().ok
        await wait_for(pilot, lambda: app.source.traffic_stats().ok > ok_before + 20, 10,
                       "traffic succeeding with one replica down")

        await pilot.press("r")
        await wait_for(pilot, lambda: state(app, "n3") == "up", 10, "n3 up again")
        await wait_for(pilot, lambda: logged(app, "n3 restarted"), 5, "the restart logged")
        await pilot.press("t")
        await wait_for(pilot, lambda: not app.source.traffic_stats().running, 5,
                       "traffic stopped")


async def test_pause_and_resume_from_the_dashboard(cluster: Cluster) -> None:
    app = live_app(cluster)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: all_up(app), 10, "every node up")
        await pilot.press("2", "p")
        await wait_for(pilot, lambda: state(app, "n2") == "paused", 5, "n2 paused")
        assert "‖ paused" in screen_text(app)
        await pilot.press("p")
        await wait_for(pilot, lambda: state(app, "n2") == "up", 5, "n2 resumed")
        assert logged(app, "n2 resumed")


async def test_a_kill_from_another_terminal_shows_up(cluster: Cluster) -> None:
    app = live_app(cluster)
    name = cluster.spec.name
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: all_up(app), 10, "every node up")
        # In a thread, as another terminal would: the app's loop keeps running meanwhile.
        await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "kvlab", "kill", "n3",
                                "--name", name], check=True, capture_output=True)
        await wait_for(pilot, lambda: state(app, "n3") == "down", 5, "n3 down")
        # The change is logged, whatever state a slow poll may have caught in between.
        assert any("n3" in line and "→ ✗ down" in line for line in app.events.entries)
        await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "kvlab", "restart",
                                "n3", "--name", name], check=True, capture_output=True)
        await wait_for(pilot, lambda: state(app, "n3") == "up", 5, "n3 up again")


async def test_inspect_a_key_then_watch_a_stale_replica_get_repaired(cluster: Cluster
                                                                     ) -> None:
    app = live_app(cluster)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: all_up(app), 10, "every node up")
        inspector = app.query_one(KeyInspector)

        def copies() -> list[tuple[str, str, str | None]]:
            view = inspector.view
            if view is None or view.key != "user:42":
                return []
            return [(r.node, verdict, r.value) for r, verdict in verdicts(view)]

        await pilot.press("slash", *"user:42", "enter")
        await wait_for(pilot, lambda: len(copies()) == 3, 5, "the inspection")
        await pilot.press("u")  # write value-1 to all three
        await wait_for(pilot, lambda: [c[1:] for c in copies()] == [("current", "value-1")] * 3,
                       5, "three current copies")
        last = copies()[-1][0]

        await pilot.press(last[-1], "k")
        await wait_for(pilot, lambda: copies()[-1][1] == "unreachable", 5, f"{last} unreachable")
        await pilot.press("u")  # value-2 reaches the other two only
        await pilot.press("r")
        await wait_for(pilot, lambda: copies()[-1][1:] == ("stale", "value-1"), 10,
                       f"{last} back with its stale copy")
        assert "⚠ stale" in screen_text(app)

        await pilot.press("g")  # a read repairs it
        await wait_for(pilot, lambda: [c[1:] for c in copies()] == [("current", "value-2")] * 3,
                       5, "the stale copy repaired")
        assert logged(app, "read user:42 = 'value-2'")


async def test_attaching_leaves_the_cluster_running(cluster: Cluster) -> None:
    with attach_or_start(cluster.spec, announce=lambda _: None) as (_, started):
        assert not started
        app = live_app(cluster)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.view is not None, 10, "the first snapshot")
            await pilot.press("q")
    assert len(Cluster.load(cluster.spec.name).running()) == 4


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except FileNotFoundError:
        return False


async def test_quit_stops_the_cluster_it_started(kvlab_home: Path) -> None:
    spec = ClusterSpec(name="own", nodes=3, port=free_port_block(4), durability="none")
    with attach_or_start(spec, announce=lambda _: None) as (started_cluster, started):
        assert started
        pids = [m.proc.pid for m in started_cluster.members()]
        app = make_app(LiveSource(spec.name), poll_s=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: all_up(app), 10, "every node up")
            # A node restarted from the dashboard gets a PID the starter never saw.
            await pilot.press("2", "r")
            await wait_for(pilot, lambda: logged(app, "n2 restarted"), 10, "n2 restarted")
            pids.append(Cluster.load(spec.name).node("n2").proc.pid)
            await pilot.press("q")
            await wait_for(pilot, lambda: app.return_code is not None, 5, "the app to exit")
    assert not [pid for pid in pids if _alive(pid)], "a cluster process outlived the app"
