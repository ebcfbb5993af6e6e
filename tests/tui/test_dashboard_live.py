"""The dashboard against a real local cluster, driven with Textual's pilot."""

from __future__ import annotations

import asyncio
import functools
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvlab.client import AsyncKV
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.spec import ClusterSpec
from kvlab.cluster.supervisor import Cluster
from kvlab.tui.app import KvlabApp, make_app
from kvlab.tui.live import LiveSource, attach_or_start
from kvlab.tui.widgets.inspector import KeyInspector, verdicts
from kvlab.tui.widgets.ring import RingView
from tests.cluster_helpers import real_cluster
from tests.tui.helpers import region_text, screen_text, wait_for

SIZE = (100, 30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One 3-node cluster for the module; each test leaves every node up again."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVLAB_HOME", str(tmp_path_factory.mktemp("kvlab-home")))
        # Ports for two more nodes than it starts with, for the one a test adds.
        with real_cluster(nodes=3, port=free_port_block(6)) as running:
            yield running
            # Nodes restarted by the tests have PIDs only cluster.json knows.
            Cluster.load(running.spec.name).stop()


@pytest.fixture(autouse=True)
def every_node_up(cluster: Cluster) -> None:
    """Each test starts with every node up, even after one that failed half-way."""
    current = Cluster.load(cluster.spec.name)
    for member in current.nodes:
        if current.state(member) != "up":
            current.restart(member.name)


def live_app(cluster: Cluster) -> KvlabApp:
    return make_app(LiveSource(cluster.spec.name), poll_s=0.2, inspect_s=0.3)


def state(app: KvlabApp, node: str) -> str | None:
    view = app.view and app.view.node(node)
    return view.state if view else None


def all_up(app: KvlabApp) -> bool:
    return app.view is not None and all(n.state == "up" for n in app.view.nodes)


def logged(app: KvlabApp, text: str) -> bool:
    return any(text in line for line in app.events.entries)


def cut(app: KvlabApp, node: str) -> bool:
    return app.view is not None and node in app.view.partitioned


async def proxy_partitions(cluster: Cluster) -> dict[str, str | None]:
    """Each node's `partitioned` field in the proxy's own `GET /cluster`."""
    async with AsyncKV(cluster.url) as kv:
        return {n.name: n.partitioned for n in (await kv.cluster()).nodes}


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
        # Up, then down; a poll can catch it in between (alive, not answering: starting).
        assert logged(app, "n3 ● up → ") and logged(app, " → ✗ down")
        await wait_for(pilot, lambda: "✗ down" in screen_text(app), 5, "✗ down shown")

        ok_before = app.source.traffic_stats().ok
        await wait_for(pilot, lambda: app.source.traffic_stats().ok > ok_before + 20, 10,
                       "traffic succeeding with one replica down")

        await pilot.press("r")
        await wait_for(pilot, lambda: state(app, "n3") == "up", 10, "n3 up again")
        await wait_for(pilot, lambda: logged(app, "n3 restarted"), 5, "the restart logged")
        await pilot.press("t")
        await wait_for(pilot, lambda: not app.source.traffic_stats().running, 5,
                       "traffic stopped")


async def test_a_node_failed_on_a_damaged_database_shows_why_and_how_to_recover(
        cluster: Cluster) -> None:
    Cluster.load(cluster.spec.name).kill("n3")
    for path in (cluster.dir / "n3").glob("data.db-*"):  # its pages may all be in the WAL
        path.unlink()
    (cluster.dir / "n3" / "data.db").write_bytes(b"not a database " * 512)
    app = live_app(cluster)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: state(app, "n3") == "down", 10, "n3 down")
            await pilot.press("3", "r")  # the restart: the node finds its database damaged
            await wait_for(pilot, lambda: state(app, "n3") == "failed", 15, "n3 failed")
            n3 = app.view.node("n3")
            assert n3.pid is None and "recover: kvlab wipe n3" in (n3.last_error or "")
            assert "⊘ failed" in screen_text(app)
    finally:
        Cluster.load(cluster.spec.name).wipe("n3")  # the way back; the next test needs n3


def pids(cluster: Cluster) -> dict[str, int | None]:
    current = Cluster.load(cluster.spec.name)
    return {m.name: m.proc.pid if m.proc else None for m in current.members()}


async def test_restart_only_the_proxy_from_the_dashboard(cluster: Cluster) -> None:
    before = pids(cluster)
    app = live_app(cluster)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: all_up(app), 10, "every node up")
        await pilot.press("P")
        await wait_for(pilot, lambda: logged(app, "proxy restarted"), 10, "the restart logged")
        after = pids(cluster)
        assert after.pop("proxy") != before.pop("proxy")
        assert after == before  # every node runs on, the same process
        await wait_for(pilot, lambda: app.view.proxy_state == "up" and all_up(app), 10,
                       "the proxy and every node up")
        async with AsyncKV(cluster.url) as kv:
            await kv.set("after-proxy-restart", "v")
            assert await kv.get("after-proxy-restart") == "v"


async def test_pause_and_resume_from_the_dashboard(cluster: Cluster) -> None:
    app = live_app(cluster)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: all_up(app), 10, "every node up")
        await pilot.press("2", "p")
        await wait_for(pilot, lambda: state(app, "n2") == "paused", 5, "n2 paused")
        await wait_for(pilot, lambda: "‖ paused" in screen_text(app), 5, "‖ paused shown")
        await pilot.press("p")
        await wait_for(pilot, lambda: state(app, "n2") == "up", 5, "n2 resumed")
        assert logged(app, "n2 resumed")


async def test_cut_and_heal_the_link_to_a_node(cluster: Cluster) -> None:
    app = live_app(cluster)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: all_up(app), 10, "every node up")
            await pilot.press("2", "x")
            await wait_for(pilot, lambda: cut(app, "n2"), 5, "n2 cut")
            await wait_for(pilot, lambda: logged(app, "n2 cut off"), 5, "the cut logged")
            assert any(re.fullmatch(r"\d\d:\d\d:\d\d cut the link proxy ⌁ n2 \(both ways\)", e)
                       for e in app.events.entries)
            assert logged(app, "n2 ● up → ● up ⌁ cut")
            assert state(app, "n2") == "up"  # the process runs on: only the link is cut
            assert "n2  " in region_text(app, app.nodes)  # the row: "▸n2  <port> <pid> ● up ⌁ cut"
            assert "● up ⌁ cut" in region_text(app, app.nodes)
            ring = region_text(app, app.query_one(RingView))
            assert "⌁n2" in ring and "⌁" in ring.splitlines()[0]  # its legend and its arcs
            assert (await proxy_partitions(cluster))["n2"] == "both"

            await pilot.press("x")
            await wait_for(pilot, lambda: app.view and not cut(app, "n2"), 5, "n2 healed")
            await wait_for(pilot, lambda: logged(app, "n2 healed"), 5, "the heal logged")
            assert logged(app, "n2 ● up ⌁ cut → ● up")
            assert "⌁" not in region_text(app, app.query_one(RingView))
            assert "⌁" not in region_text(app, app.nodes)
            assert (await proxy_partitions(cluster))["n2"] is None
    finally:  # the other tests need the link whatever happened here
        async with AsyncKV(cluster.url, secret=cluster.secret) as kv:
            await kv.partition("n2", on=False)


needs_membership = pytest.mark.skipif(
    not hasattr(Cluster, "add_node") or not hasattr(Cluster, "remove_node"),
    reason="the supervisor has no Cluster.add_node / remove_node yet")


@needs_membership
async def test_add_a_node_then_remove_it(cluster: Cluster) -> None:
    app = live_app(cluster)
    name = cluster.spec.name
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: all_up(app), 10, "every node up")
        await pilot.press("a")
        await wait_for(pilot, lambda: state(app, "n4") == "up", 30, "n4 up")
        await wait_for(pilot, lambda: logged(app, "n4 added to the ring"), 30, "the add logged")
        await wait_for(pilot, lambda: app.view.ring.nodes == ("n1", "n2", "n3", "n4"), 5,
                       "n4 on the ring")
        await wait_for(pilot, lambda: logged(app, "added n4 in"), 5, "the move's totals")
        assert logged(app, "n4 joined the ring")
        assert "n4" in region_text(app, app.query_one(RingView))
        assert "n4" in region_text(app, app.nodes)
        proc = Cluster.load(name).node("n4").proc
        assert proc is not None and proc.alive()
        await wait_for(pilot, lambda: app.selected == "n4", 5, "the new node selected")

        await pilot.press("X")
        await wait_for(pilot, lambda: app.view.node("n4") is None, 30, "n4 gone")
        await wait_for(pilot, lambda: logged(app, "n4 removed"), 5, "the removal logged")
        await wait_for(pilot, lambda: logged(app, "removed n4 in"), 5, "the move's totals")
        assert logged(app, "n4 left the ring")
        assert app.view.ring.nodes == ("n1", "n2", "n3")
        assert "n4" not in region_text(app, app.query_one(RingView))
        assert "n4" not in region_text(app, app.nodes)
        assert app.selected == "n3"
    assert not proc.alive() and not _alive(proc.pid), "the removed node's process lives on"
    assert [m.name for m in Cluster.load(name).nodes] == ["n1", "n2", "n3"]


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
        # Only then restart: a write still in flight would reach the restarted node too.
        await wait_for(pilot, lambda: logged(app, "write user:42 = 'value-2' (acked"), 5,
                       "value-2 acknowledged")
        await pilot.press("r")
        await wait_for(pilot, lambda: copies()[-1][1:] == ("stale", "value-1"), 10,
                       f"{last} back with its stale copy")
        await wait_for(pilot, lambda: "⚠ stale" in screen_text(app), 5, "⚠ stale shown")

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


@functools.cache
def _node_option(option: str) -> bool:
    """Whether `python -m kvlab.net.node` takes `option` (the one this checkout has)."""
    usage = subprocess.run([sys.executable, "-m", "kvlab.net.node", "--help"],
                           capture_output=True, text=True)
    return option in usage.stdout


def _needs_peers() -> None:
    if not _node_option("--peer"):
        pytest.skip("the nodes don't talk to each other yet (no `kvlab.net.node --peer`), "
                    "so nothing heals")


@pytest.fixture
def four_nodes(kvlab_home: Path) -> Iterator[Cluster]:
    """4 nodes for N=3: a key's writes have a fallback node past its 3 replicas."""
    _needs_peers()
    with real_cluster(nodes=4, port=free_port_block(5)) as running:
        yield running


@pytest.fixture
def no_hints(kvlab_home: Path) -> Iterator[Cluster]:
    """3 nodes without hinted handoff and with anti-entropy every half second."""
    _needs_peers()
    with real_cluster(nodes=3, port=free_port_block(4), hints=False,
                      anti_entropy_s=0.5) as running:
        yield running


HANDED_TO_N3 = re.compile(r"\d\d:\d\d:\d\d (n\d): ([\d,]+) hints? handed to n3$")


async def test_hints_for_a_killed_node_are_handed_over_when_it_is_back(four_nodes: Cluster
                                                                        ) -> None:
    app = live_app(four_nodes)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: all_up(app), 10, "every node up")
        await wait_for(pilot, lambda: all(n.healing is not None for n in app.view.nodes), 10,
                       "every node's healing counters")
        await pilot.press("3", "k")
        await wait_for(pilot, lambda: state(app, "n3") == "down", 5, "n3 down")
        async with AsyncKV(four_nodes.url) as kv:
            for i in range(40):  # about 3 in 4 of them have n3 among their replicas
                await kv.set(f"handoff:{i}", f"v{i}")

        def held() -> int:
            return sum(n.hints or 0 for n in app.view.nodes)

        await wait_for(pilot, lambda: held() > 0, 10, "hints held for n3")
        holders = [n.name for n in app.view.nodes if n.hints]
        assert all(app.view.node(h).healing.hints_for("n3") for h in holders)
        assert any(re.search(rf"{h}: holding [\d,]+ hints? for n3", e)
                   for h in holders for e in app.events.entries)

        await pilot.press("r")
        await wait_for(pilot, lambda: any(HANDED_TO_N3.search(e) for e in app.events.entries),
                       20, "the hint replay in the event log")
        await wait_for(pilot, lambda: held() == 0, 20, "every hint handed over")
        handed = [m for e in app.events.entries if (m := HANDED_TO_N3.search(e))]
        assert {m.group(1) for m in handed} <= set(holders)
        # The coordinator answered its /cluster throughout (it once failed after a write).
        assert app.view.proxy_state == "up" and not logged(app, "proxy up →")


# "from n1, 0.8 s" only when the exchange that repaired is still each node's last one
# with that peer when the dashboard polls: a round that repaired is followed at once by
# one that finds the replicas in sync, so the peer is rarely known.
AE_INTO_N3 = re.compile(r"\d\d:\d\d:\d\d n3: ([\d,]+) keys? repaired by anti-entropy"
                        r"( from n[12](, n[12])?, [\d.]+ m?s)?$")


async def test_anti_entropy_repairs_a_node_that_missed_writes(no_hints: Cluster) -> None:
    app = live_app(no_hints)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: all_up(app), 10, "every node up")
        await pilot.press("3", "k")
        await wait_for(pilot, lambda: state(app, "n3") == "down", 5, "n3 down")
        async with AsyncKV(no_hints.url) as kv:
            for i in range(30):  # every key has all 3 nodes as replicas
                await kv.set(f"ae:{i}", f"v{i}")
        await pilot.press("r")
        await wait_for(pilot, lambda: state(app, "n3") == "up", 10, "n3 up again")
        await wait_for(pilot, lambda: any(AE_INTO_N3.search(e) for e in app.events.entries),
                       20, "anti-entropy's repair of n3 in the event log")
        await wait_for(pilot, lambda: app.view.node("n3").healing.repaired_by("anti_entropy")
                       >= 30, 20, "all 30 keys repaired on n3")
        repaired = sum(int(m.group(1).replace(",", "")) for e in app.events.entries
                       if (m := AE_INTO_N3.search(e)))
        assert repaired == 30  # each key once, however many rounds and polls it took
        assert not any("hint" in e for e in app.events.entries)  # hints are off


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


# The screen shows a new view only at its next refresh (a row added needs a new layout
# first): what it shows is waited for, as the view is, never asserted on at once.
def nodes_text(app: KvlabApp) -> str:
    return region_text(app, app.nodes)


def ring_text(app: KvlabApp) -> str:
    return region_text(app, app.query_one(RingView))


def health(app: KvlabApp, node: str) -> str | None:
    view = app.view and app.view.node(node)
    return view.health if view else None


async def test_a_move_in_progress_and_node_health_on_a_real_cluster(kvlab_home: Path) -> None:
    # Throttled to 20 kB/s per source, the ~100 kB that move to n4 take a few seconds.
    with real_cluster(nodes=3, port=free_port_block(5), stream_rate_mb_s=0.02) as running:
        async with AsyncKV(running.url) as kv:
            for i in range(1000):
                await kv.set(f"move:{i}", "x" * 100)
        app = live_app(running)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: all_up(app) and all(
                n.health == "up" for n in app.view.nodes), 10, "every node up and heard")
            await wait_for(pilot, lambda: "♥ up" in nodes_text(app), 5, "♥ up shown")

            await pilot.press("a")
            await wait_for(pilot, lambda: app.view.change is not None
                           and app.view.change.phase == "streaming", 20, "n4 streaming")
            assert logged(app, "adding n4: ")
            assert "n4" in app.view.joining
            # Ranges in motion and where they go, and the ring panel's caption.
            await wait_for(pilot, lambda: "+joining" in nodes_text(app)
                           and "▒" in ring_text(app) and "→n4" in ring_text(app)
                           and "+n4 streaming" in screen_text(app), 5, "the move shown")
            await wait_for(pilot, lambda: logged(app, "added n4 in"), 60, "the move done")
            await wait_for(pilot, lambda: "▒" not in ring_text(app)
                           and "+joining" not in nodes_text(app), 5, "the move's end shown")
            # Selected once the add is done: only then may a key pick another node.
            await wait_for(pilot, lambda: app.selected == "n4", 5, "the new node selected")

            # The detector's verdicts on a paused node, apart from its process state.
            await pilot.press("2", "p")
            await wait_for(pilot, lambda: health(app, "n2") == "suspect", 5, "n2 suspect")
            await wait_for(pilot, lambda: health(app, "n2") == "down", 5, "n2 down")
            assert state(app, "n2") == "paused"
            await wait_for(pilot, lambda: "○ down" in nodes_text(app), 5, "○ down shown")
            await pilot.press("p")
            await wait_for(pilot, lambda: health(app, "n2") == "up", 3, "n2 up again")
            assert logged(app, "n2 ◔ suspect → ○ down")
            assert logged(app, "n2 ○ down → ♥ up: heartbeats are back")


async def test_quit_after_adding_a_node_keeps_it_in_cluster_json(kvlab_home: Path) -> None:
    # Quitting once wrote the membership the dashboard started with back to cluster.json,
    # orphaning the added node and its data.
    spec = ClusterSpec(name="grown", nodes=3, port=free_port_block(5), durability="none")
    with attach_or_start(spec, announce=lambda _: None) as (_, started):
        assert started
        app = make_app(LiveSource(spec.name), poll_s=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: all_up(app), 10, "every node up")
            await pilot.press("a")
            await wait_for(pilot, lambda: logged(app, "n4 added to the ring"), 30,
                           "n4 added")
            pids = [m.proc.pid for m in Cluster.load(spec.name).members()]
            await pilot.press("q")
            await wait_for(pilot, lambda: app.return_code is not None, 5, "the app to exit")
    assert not [pid for pid in pids if _alive(pid)], "a cluster process outlived the app"
    after = Cluster.load(spec.name)
    assert [m.name for m in after.nodes] == ["n1", "n2", "n3", "n4"]
    assert after.leaving == []
