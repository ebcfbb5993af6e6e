"""The app's own life cycle: starting, polling, shutting down."""

from __future__ import annotations

from kvlab.tui.app import make_app
from tests.tui.fake_source import FakeSource
from tests.tui.helpers import wait_for


async def test_polls_answered_while_the_app_shuts_down_are_dropped() -> None:
    # Textual removes the panels before the app stops dispatching; a Polled handled in
    # between raised NoMatches. Quitting while polls come fast hits that window (before
    # the fix, within about five runs).
    for _ in range(12):
        app = make_app(FakeSource(), clock=lambda: 0.0, poll_s=0.001, inspect_s=60)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.view is not None, 5, "the first snapshot")
            await pilot.pause(0.01)
