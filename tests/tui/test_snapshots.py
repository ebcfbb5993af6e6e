"""The main screen at a fixed size on fixed data, compared with a stored snapshot.

Regenerate after an intended change with `KVLAB_UPDATE_SNAPSHOTS=1 pytest tests/tui`, then
look at the .svg (any browser) before committing it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kvlab.tui.app import make_app
from kvlab.tui.widgets.inspector import KeyInspector
from kvlab.tui.widgets.ring import RingView
from tests.tui.fake_source import FakeSource
from tests.tui.helpers import screen_text, wait_for

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


async def render_main(key: str | None) -> tuple[str, str]:
    app = make_app(FakeSource(), clock=lambda: NOON, poll_s=60, inspect_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.query_one(RingView).view is not None, 5,
                       "the first snapshot")
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
