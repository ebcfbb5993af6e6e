"""The proxy's clock file: what it saves, what a restart restores, and its failure modes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kvlab.core.version import HybridClock
from kvlab.net.clock_state import FILE, LEASE_MS, ClockState, ClockStateError

NOW = 1_800_000_000_000


class Wall:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_a_first_start_restores_nothing(tmp_path: Path):
    clock = HybridClock("p")
    assert ClockState(tmp_path, clock, Wall()).restore() is None
    assert clock.high_water_ms == 0


def test_a_running_proxy_saves_a_lease_ahead_of_the_wall_clock(tmp_path: Path):
    wall, clock = Wall(), HybridClock("p")
    clock.tick(wall.now)
    ClockState(tmp_path, clock, wall).save()
    saved = json.loads((tmp_path / FILE).read_text())["high_water_ms"]
    # Until the next save (a second later) no version can pass it, even if killed now.
    assert saved == NOW + LEASE_MS
    assert [p.name for p in tmp_path.iterdir()] == [FILE], "a temporary file was left"


def test_a_clean_stop_saves_the_high_water_itself(tmp_path: Path):
    wall, clock = Wall(), HybridClock("p")
    clock.tick(wall.now)
    state = ClockState(tmp_path, clock, wall)
    state.save()
    state.save(final=True)
    assert json.loads((tmp_path / FILE).read_text())["high_water_ms"] == NOW


def test_a_restart_never_repeats_a_version_of_the_last_millisecond(tmp_path: Path):
    """Two writes in one millisecond are (t, 0) and (t, 1): a clock restored to t must not
    issue (t, 1) again, a version some other write already has."""
    wall, clock = Wall(), HybridClock("p")
    issued = [clock.tick(wall.now) for _ in range(3)]
    ClockState(tmp_path, clock, wall).save(final=True)
    again = HybridClock("p")
    ClockState(tmp_path, again, Wall(NOW - 5_000)).restore()
    assert again.tick(NOW - 5_000) > max(issued)


def test_a_restart_with_the_clock_an_hour_behind_stamps_above_every_earlier_version(
        tmp_path: Path):
    wall, clock = Wall(), HybridClock("p")
    last = clock.tick(wall.now)
    ClockState(tmp_path, clock, wall).save()  # then SIGKILL: no final save
    behind, again = Wall(NOW - 3_600_000), HybridClock("p")
    assert ClockState(tmp_path, again, behind).restore() == NOW + LEASE_MS
    assert again.tick(behind.now) > last


def test_quick_restarts_do_not_push_the_clock_into_the_future(tmp_path: Path):
    wall, clock = Wall(), HybridClock("p")
    for _ in range(20):  # killed right after each start's first save
        clock = HybridClock("p")
        state = ClockState(tmp_path, clock, wall)
        state.restore()
        clock.tick(wall.now)
        state.save()
        wall.now += 100
    assert clock.high_water_ms - wall.now <= LEASE_MS


def test_an_unreadable_file_refuses_to_start(tmp_path: Path):
    (tmp_path / FILE).write_text("{half a fi")
    with pytest.raises(ClockStateError, match="unreadable"):
        ClockState(tmp_path, HybridClock("p"), Wall()).restore()
    (tmp_path / FILE).write_text('{"high_water_ms": "soon"}')
    with pytest.raises(ClockStateError, match="integer"):
        ClockState(tmp_path, HybridClock("p"), Wall()).restore()


async def test_keep_saved_saves_until_stopped(tmp_path: Path):
    wall, clock = Wall(), HybridClock("p")
    state = ClockState(tmp_path, clock, wall)
    stopped = asyncio.Event()
    task = asyncio.create_task(state.keep_saved(stopped))
    async with asyncio.timeout(2):
        while not (tmp_path / FILE).exists():
            await asyncio.sleep(0.01)
    stopped.set()
    await asyncio.wait_for(task, 2)
    assert json.loads((tmp_path / FILE).read_text())["high_water_ms"] == NOW + LEASE_MS
