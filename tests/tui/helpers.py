"""Waiting on a running app, and reading its screen as text."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot
from textual.widget import Widget


async def wait_for(pilot: Pilot, condition: Callable[[], object], timeout_s: float = 10.0,
                   message: str = "condition") -> None:
    """Let the app run until `condition()` holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        await pilot.pause(0.05)


def screen_text(app: App) -> str:
    """The screen as plain text, one line per terminal row (what a snapshot compares)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False,
                      safe_box=False)
    console.print(app.screen._compositor.render_update(full=True))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def region_text(app: App, widget: Widget) -> str:
    """The part of the screen `widget` covers, as plain text."""
    x, y, width, height = widget.region
    lines = screen_text(app).splitlines()[y:y + height]
    return "\n".join(line[x:x + width].rstrip() for line in lines)
