"""The simulated source: the dashboard's views of a `World`, on a clock the test moves.

The source turns wall time into virtual time; here the wall clock is a number the tests
advance and no CPU budget cuts a step short, so each test is a deterministic script. The
last test drives `kvlab ui --sim` itself, built by the CLI's own factory, with the pilot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from kvlab.cli import EXIT_USAGE, build_parser, main
from kvlab.cli.ui_cmd import sim_app
from kvlab.sim.proxy import WRITE
from kvlab.sim.world import WorldConfig
from kvlab.tui.app import KvlabApp
from kvlab.tui.sim_source import MAX_STEP_S, SimSource
from kvlab.tui.source import (
    DOWN, MISSING, OK, PAUSED, UNREACHABLE, UP, ClusterSource, SourceError, TrafficSettings,
)
from kvlab.tui.widgets.ring import RingView
from tests.tui.helpers import region_text, screen_text, wait_for

T = TypeVar("T")
STEP_S = 0.05


class Clock:
    """A wall clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def source(clock: Clock) -> AsyncIterator[SimSource]:
    made = SimSource(WorldConfig(nodes=5), seed=7, clock=clock, budget_s=None)
    yield made
    await made.close()


async def run(source: SimSource, clock: Clock, seconds: float) -> None:
    """Let `seconds` of wall time pass, polled as the dashboard would."""
    for _ in range(round(seconds / STEP_S)):
        clock.now += STEP_S
        await source.snapshot()


async def settle(source: SimSource, clock: Clock, call: Awaitable[T]) -> T:
    """Await `call` (a read or a write) while wall time passes in small steps."""
    task = asyncio.ensure_future(call)
    while not task.done():
        await asyncio.sleep(0)  # the call starts, or takes its outcome
        clock.now += 0.01
        await source.snapshot()
    return task.result()


async def test_it_is_a_cluster_source_with_every_node_up(source: SimSource) -> None:
    assert isinstance(source, ClusterSource)
    view = await source.snapshot()
    assert view.name.startswith("sim (seed 7)") and "virtual t=0.0s" in view.name
    assert view.states == {f"n{i}": UP for i in range(1, 6)}
    assert (view.n, view.r, view.w) == (3, 2, 2)
    assert view.ring is source.world.ring
    assert all(n.port is None and n.pid is None and n.keys == 0 for n in view.nodes)


async def test_virtual_time_follows_the_wall_clock_at_speed_and_never_jumps(clock: Clock
                                                                           ) -> None:
    slow = SimSource(seed=7, speed=0.5, clock=clock, budget_s=None)
    try:
        await run(slow, clock, 1.0)
        assert slow.world.now_ms == pytest.approx(500)
        clock.now += 60  # a stalled poll
        await slow.snapshot()
        assert slow.world.now_ms == pytest.approx(500 + MAX_STEP_S * 0.5 * 1000)
        assert "×0.5" in (await slow.snapshot()).name
    finally:
        await slow.close()


async def test_chaos_actions_crash_pause_resume_and_restart(source: SimSource) -> None:
    await source.kill("n3")
    assert (await source.snapshot()).states["n3"] == DOWN
    assert (await source.snapshot()).node("n3").keys is None
    with pytest.raises(SourceError, match="n3 is not running"):
        await source.kill("n3")
    await source.restart("n3")
    await source.pause("n2")
    assert (await source.snapshot()).states == {"n1": UP, "n2": PAUSED, "n3": UP, "n4": UP,
                                                "n5": UP}
    with pytest.raises(SourceError, match="not paused"):
        await source.resume("n1")
    await source.resume("n2")
    assert set((await source.snapshot()).states.values()) == {UP}
    with pytest.raises(SourceError, match="no node 'n9'"):
        await source.kill("n9")


async def test_traffic_counts_ok_and_then_unavailable_with_two_replicas_down(
        source: SimSource, clock: Clock) -> None:
    await source.start_traffic(TrafficSettings(rate=200, read_fraction=0.5))
    await run(source, clock, 2.2)
    stats = source.traffic_stats()
    assert stats.running and stats.ok > 300 and stats.failed == 0
    assert stats.ops_per_s == 200 and stats.throughput[-1] == 200
    assert stats.p99_ms is not None and stats.p99_ms < 10  # virtual ms: a few hops and fsyncs
    view = await source.snapshot()
    assert all(n.ops_per_s and n.ops_per_s > 0 for n in view.nodes)
    assert sum(n.keys for n in view.nodes) > 0

    await source.kill("n1")
    await source.kill("n2")  # W=R=2 of N=3: keys with both among their replicas fail
    await run(source, clock, 1.0)
    stats = source.traffic_stats()
    assert stats.errors.get("unavailable", 0) > 0 and stats.ok > 300

    await source.stop_traffic()
    done = source.traffic_stats().ok + source.traffic_stats().failed
    await run(source, clock, 0.5)
    assert not source.traffic_stats().running
    assert source.traffic_stats().ok + source.traffic_stats().failed == done
    with pytest.raises(SourceError, match="R=4"):
        await source.start_traffic(TrafficSettings(r=4))


async def test_reads_writes_and_inspection_of_each_replica(source: SimSource,
                                                          clock: Clock) -> None:
    key = "user:42"
    inspected = await source.inspect(key)
    assert [r.state for r in inspected.replicas] == [MISSING] * 3
    assert (await settle(source, clock, source.read(key))).text == f"read {key}: not found"
    written = await settle(source, clock, source.write(key, "blue"))
    assert written.ok and written.text.startswith(f"write {key} = 'blue' (acked: ")

    replicas = source.world.ring.preference_list(key, 3)
    sent = source.world.network.sent
    inspected = await source.inspect(key)
    assert source.world.network.sent == sent, "an inspection must not disturb the run"
    assert [r.node for r in inspected.replicas] == list(replicas)
    assert {(r.state, r.value) for r in inspected.replicas} == {(OK, "blue")}
    assert len({r.version for r in inspected.replicas}) == 1

    await source.kill(replicas[0])
    await source.pause(replicas[1])
    inspected = await source.inspect(key)
    assert [(r.state, r.reason) for r in inspected.replicas[:2]] == [
        (UNREACHABLE, "node down"), (UNREACHABLE, "node paused")]
    read = await settle(source, clock, source.read(key))
    assert not read.ok and "timeout" in read.text  # R=2: one down, one silent
    await source.resume(replicas[1])
    read = await settle(source, clock, source.read(key))
    assert read.ok and read.text.startswith(f"read {key} = 'blue'")


async def test_a_partition_cuts_a_replica_off_from_the_coordinator(source: SimSource,
                                                                  clock: Clock) -> None:
    key = "user:42"
    assert (await settle(source, clock, source.write(key, "blue"))).ok
    first, second, third = source.world.ring.preference_list(key, 3)

    await source.partition(first, on=True)
    view = await source.snapshot()
    assert view.partitioned == {first} and view.states[first] == UP  # the node runs on
    assert source.world.network.is_cut("c1", first) and source.world.network.is_cut(first, "c1")
    inspected = await source.inspect(key)
    assert (inspected.replicas[0].state, inspected.replicas[0].reason) == (UNREACHABLE,
                                                                          "partitioned")
    # R=2 of N=3: the other two answer.
    read = await settle(source, clock, source.read(key))
    assert read.ok and read.text.startswith(f"read {key} = 'blue' (replied: ")
    assert sorted(read.text.split("replied: ")[1].rstrip(")").split(", ")) == sorted(
        [second, third])

    await source.partition(second, on=True)
    read = await settle(source, clock, source.read(key))
    assert not read.ok and "timeout: 1 of 2 replicas replied" in read.text

    await source.partition(first, on=False)
    await source.partition(second, on=False)
    assert (await source.snapshot()).partitioned == frozenset()
    assert (await settle(source, clock, source.read(key))).ok
    with pytest.raises(SourceError, match="no node 'n9'"):
        await source.partition("n9", on=True)


async def load(source: SimSource, clock: Clock, keys: int) -> None:
    """`keys` keys written (one after another), so a move has something to stream."""
    for i in range(keys):
        result = await settle(source, clock, source.write(f"load-{i}", f"v{i}"))
        assert result.ok, result.text


async def test_a_node_added_and_removed_through_the_core_with_its_move_in_view(
        source: SimSource, clock: Clock) -> None:
    await load(source, clock, 60)
    await run(source, clock, 0.5)  # every node heard: the detector has a verdict on each
    assert all(n.health == UP and n.phi is not None for n in (await source.snapshot()).nodes)

    adding = asyncio.ensure_future(source.add_node())
    await asyncio.sleep(0)  # the change begins
    view = await source.snapshot()
    change = view.change
    assert change is not None and (change.kind, change.node) == ("add", "n6")
    assert change.phase in ("joining", "streaming") and change.moving
    assert all(s.target == "n6" and s.arcs for s in change.moving)
    assert view.joining == ("n6",) and view.node("n6") is not None  # its row, before reads
    assert "n6" not in view.ring.nodes  # reads still go by the ring being left

    assert await settle(source, clock, adding) == "n6"
    view = await source.snapshot()
    assert view.change is None and "n6" in view.ring.nodes
    done = view.last_change
    assert (done.kind, done.node, done.phase) == ("add", "n6", "done")
    assert done.keys > 0 and done.bytes > 0 and done.fraction == 1.0
    # The keys it owns now arrived by streaming: the new node answers for them.
    assert view.node("n6").keys > 0

    await settle(source, clock, source.remove_node("n6"))
    view = await source.snapshot()
    assert view.node("n6") is None and "n6" not in view.ring.nodes
    assert (view.last_change.kind, view.last_change.node) == ("remove", "n6")
    for i in range(0, 60, 7):  # what was written before both moves reads back
        result = await settle(source, clock, source.read(f"load-{i}"))
        assert result.text.startswith(f"read load-{i} = 'v{i}'"), result.text


async def test_membership_changes_the_core_refuses_are_source_errors(clock: Clock) -> None:
    three = SimSource(WorldConfig(nodes=3), seed=7, clock=clock, budget_s=None)
    try:
        with pytest.raises(SourceError, match="fewer than N=3"):
            await three.remove_node("n1")
        with pytest.raises(SourceError, match="no node n9"):
            await three.remove_node("n9")
        adding = asyncio.ensure_future(three.add_node())
        await asyncio.sleep(0)
        with pytest.raises(SourceError, match="a change is in progress"):
            await three.add_node()
        assert await settle(three, clock, adding) == "n4"
        assert [n.name for n in (await three.snapshot()).nodes] == ["n1", "n2", "n3", "n4"]
    finally:
        await three.close()


async def test_a_paused_node_turns_suspect_then_down_and_up_at_its_first_heartbeat(
        source: SimSource, clock: Clock) -> None:
    await run(source, clock, 0.5)
    await source.pause("n2")
    seen: list[str | None] = []
    for _ in range(50):  # 2.5 s: past the ~1.85 s to `down`
        clock.now += STEP_S
        n2 = (await source.snapshot()).node("n2")
        if not seen or seen[-1] != n2.health:
            seen.append(n2.health)
    assert seen == [UP, "suspect", DOWN]
    assert n2.phi >= 8 and n2.state == PAUSED  # past the threshold; the process is apart
    await source.resume("n2")
    await run(source, clock, 0.3)
    assert (await source.snapshot()).node("n2").health == UP
async def script(clock: Clock) -> tuple:
    """A fixed run: traffic, a crash, a pause, writes, inspections; everything it shows."""
    source = SimSource(seed=11, clock=clock, budget_s=None)
    try:
        await source.start_traffic(TrafficSettings(rate=300, read_fraction=0.7))
        await run(source, clock, 1.0)
        await source.kill("n2")
        await settle(source, clock, source.write("k", "one"))
        await run(source, clock, 0.5)
        await source.pause("n4")
        await run(source, clock, 1.5)
        await source.restart("n2")
        await source.resume("n4")
        await run(source, clock, 0.5)
        return (await source.snapshot(), source.traffic_stats(),
                await source.inspect("k"), await source.inspect("key-001"))
    finally:
        await source.close()


async def test_one_seed_and_the_same_calls_give_the_same_run() -> None:
    first, second = await script(Clock()), await script(Clock())
    assert first == second
    stats = first[1]
    assert stats.ok > 500 and stats.failed > 0  # the run did something worth comparing


async def test_seed_and_speed_without_sim_are_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ui", "--seed", "3"]) == EXIT_USAGE
    assert "add --sim" in capsys.readouterr().err


def ui_sim(*options: str) -> KvlabApp:
    """What `kvlab ui --sim ...` runs, polled faster for the test."""
    args = build_parser().parse_args(["ui", "--sim", *options])
    return sim_app(args, poll_s=0.1, inspect_s=0.2)


async def test_kvlab_ui_sim_kill_a_node_from_the_keyboard(kvlab_home) -> None:
    app = ui_sim("--seed", "7", "--nodes", "5")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and set(app.view.states.values())
                       == {UP}, 5, "every node up")
        assert "sim (seed 7)" in screen_text(app)

        await pilot.press("3", "k")
        await wait_for(pilot, lambda: app.view.states["n3"] == DOWN, 5, "n3 down")
        await wait_for(pilot, lambda: any("n3 killed" in e for e in app.events.entries), 5,
                       "the kill logged")
        assert any("n3 ● up → ✗ down" in e for e in app.events.entries)
        assert "✗ down" in screen_text(app)

        await pilot.press("2", "x")
        await wait_for(pilot, lambda: "n2" in app.view.partitioned, 5, "n2 cut")
        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_code is not None, 5, "the app to exit")
    assert not kvlab_home.exists(), "--sim must not create a cluster folder"


async def test_kvlab_ui_sim_add_and_remove_a_node_from_the_keyboard(kvlab_home) -> None:
    # A tenth of real speed: the move (about 200 ms of virtual time for these keys) stays
    # on screen for a couple of seconds.
    app = ui_sim("--seed", "7", "--nodes", "4", "--speed", "0.1")
    source = app.source
    assert isinstance(source, SimSource)
    for i in range(300):
        source.world.submit(WRITE, f"k{i}", b"x" * 100)
    source.world.advance(2000)

    def logged(text: str) -> bool:
        return any(text in e for e in app.events.entries)

    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and all(
            n.health == UP for n in app.view.nodes), 5, "every node up and heard")
        await pilot.press("a")
        await wait_for(pilot, lambda: app.view.change is not None, 5, "the move in view")
        assert logged("add a node")
        ring = region_text(app, app.query_one(RingView))
        assert ("▒" in ring or "▓" in ring) and "→n5" in ring  # its arcs, and its flows
        assert "+joining" in region_text(app, app.nodes)
        assert "+n5 " in screen_text(app)  # the ring panel's caption
        await wait_for(pilot, lambda: logged("n5 added to the ring"), 20, "the add done")
        await wait_for(pilot, lambda: logged("added n5 in"), 5, "its totals logged")
        assert logged("n5 joined the ring")
        await wait_for(pilot, lambda: app.selected == "n5", 5, "the new node selected")
        assert app.view.node("n5").keys > 0  # its ranges arrived by streaming

        await pilot.press("X")
        await wait_for(pilot, lambda: logged("n5 removed"), 20, "the removal done")
        await wait_for(pilot, lambda: logged("removed n5 in"), 5, "its totals logged")
        assert logged("n5 left the ring")
        await wait_for(pilot, lambda: app.view.node("n5") is None, 5, "n5 gone")
        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_code is not None, 5, "the app to exit")
