"""The event log: every action taken and every state change seen, with a timestamp."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual.widgets import RichLog

from kvlab.tui.theme import DIM

LEVEL_STYLE = {"info": "", "action": "bold #4fc3f7", "ok": "#66bb6a", "warn": "#fdd835",
               "error": "#ef5350"}


class EventLog(RichLog):
    """A RichLog of timestamped lines; `entries` keeps their plain text (for tests)."""

    def __init__(self, clock: Callable[[], float] = time.time, **kwargs) -> None:
        super().__init__(wrap=True, markup=False, max_lines=500, min_width=20, **kwargs)
        self._clock = clock
        self.entries: list[str] = []

    def add(self, message: str | Text, level: str = "info") -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self._clock()))
        body = Text(message, style=LEVEL_STYLE.get(level, "")) if isinstance(message, str) \
            else message
        line = Text.assemble((stamp + " ", DIM), body)
        self.entries.append(line.plain)
        self.write(line)
