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
from kvlab.sim.world import WorldConfig
from kvlab.tui.app import KvlabApp
from kvlab.tui.sim_source import MAX_STEP_S, SimSource
from kvlab.tui.source import (
    DOWN, MISSING, OK, PAUSED, UNREACHABLE, UP, ClusterSource, SourceError, TrafficSettings,
)
from tests.tui.helpers import screen_text, wait_for

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


async def test_membership_is_not_simulated(source: SimSource) -> None:
    with pytest.raises(SourceError, match="adding and removing nodes is not simulated"):
        await source.add_node()
    with pytest.raises(SourceError, match="adding and removing nodes is not simulated"):
        await source.remove_node("n1")
    assert len((await source.snapshot()).nodes) == 5


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
        await pilot.press("a")
        await wait_for(pilot, lambda: any("add a node failed: adding and removing nodes is "
                                          "not simulated" in e for e in app.events.entries),
                       5, "the refusal logged")
        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_code is not None, 5, "the app to exit")
    assert not kvlab_home.exists(), "--sim must not create a cluster folder"
