"""The `?` screen says what the dashboard's new words mean: health and membership moves."""

from __future__ import annotations

from kvlab.tui.app import make_app
from kvlab.tui.screens.help import HelpScreen, help_text
from tests.tui.fake_source import FakeSource
from tests.tui.helpers import wait_for


def test_help_explains_node_health_with_the_detector_s_figures() -> None:
    text = help_text(3, 2, 2, None, None).plain
    health = text[text.index("\nNode health\n"):text.index("\nHow membership changes\n")]
    for words in ("every 100 ms", "♥ up", "◔ suspect", "0.7 s", "○ down", "1.85 s",
                  "fails at once", "first heartbeat"):
        assert words in health, words


def test_help_explains_how_membership_changes_step_by_step() -> None:
    text = help_text(3, 2, 2, None, None).plain
    steps = text[text.index("\nHow membership changes\n"):text.index("\nKeys\n")]
    # The steps in the order the coordinator takes them, and what the screen shows of each.
    order = [steps.index(step) for step in ("plans", "Joining", "Streaming", "Settling")]
    assert order == sorted(order)
    for words in ("▒", "▓", "+joining", "−leaving", "fewer nodes than N"):
        assert words in steps, words


async def test_question_mark_opens_it_over_the_dashboard() -> None:
    app = make_app(FakeSource(), clock=lambda: 0.0, poll_s=60, inspect_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.view is not None, 5, "the first snapshot")
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), 5, "the help")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), 5,
                       "the help closed")
