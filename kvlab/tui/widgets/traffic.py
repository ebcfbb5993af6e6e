"""The traffic panel: what the built-in workload's clients are getting."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label, Sparkline, Static

from kvlab.tui.source import TrafficStats
from kvlab.tui.theme import DIM

ERROR_KINDS = ("unavailable", "timeout", "connection")


def summary(stats: TrafficStats, quorum: tuple[int, int], width: int = 80) -> Text:
    """Settings, then counters, then errors by kind: a line each, in the short form when
    a line of the long one would not fit `width`.

    `quorum` is the cluster's (R, W), shown when the traffic doesn't override it.
    """
    text = _summary(stats, quorum, narrow=False)
    if max(line.cell_len for line in text.split()) <= width:
        return text
    return _summary(stats, quorum, narrow=True)


def _summary(stats: TrafficStats, quorum: tuple[int, int], narrow: bool) -> Text:
    s = stats.settings
    text = Text()
    if stats.running:
        text.append("▶ " if narrow else "▶ running  ", "bold #66bb6a")
    else:
        text.append("■ " if narrow else "■ stopped  ", f"bold {DIM}")
    r = s.r if s.r is not None else quorum[0]
    w = s.w if s.w is not None else quorum[1]
    text.append(f"{s.rate}/s · {s.read_fraction:.0%} reads · R={r} W={w}",
                "" if stats.running else DIM)
    text.append("\n")
    text.append(f"{stats.ops_per_s:.0f}", "bold")
    text.append(" ops/s · ", DIM)
    text.append(f"{stats.ok:,}", "bold #66bb6a")
    text.append(" ok · ", DIM)
    text.append(f"{stats.not_found:,}", "bold")
    text.append(" not found", DIM)
    text.append("\n")
    kinds = list(ERROR_KINDS) + sorted(set(stats.errors) - set(ERROR_KINDS))
    text.append("✗ " if narrow else "errors  ", "#ef5350" if stats.failed else DIM)
    for i, kind in enumerate(kinds):
        count = stats.errors.get(kind, 0)
        if i:
            text.append(" · ", DIM)
        text.append(f"{SHORT.get(kind, kind) if narrow else kind} ", DIM)
        text.append(f"{count:,}", "bold #ef5350" if count else DIM)
    return text


SHORT = {"unavailable": "unavail", "connection": "conn"}


class TrafficPanel(Widget):
    """Set `stats` from outside."""

    DEFAULT_CSS = """
    TrafficPanel { height: auto; layout: vertical; }
    TrafficPanel > Static { height: auto; }
    TrafficPanel Horizontal { height: 1; }
    TrafficPanel Label { width: 10; color: $text-muted; }
    TrafficPanel Sparkline { width: 1fr; }
    TrafficPanel #errors-spark > .sparkline--max-color { color: #ef5350; }
    TrafficPanel #errors-spark > .sparkline--min-color { color: #ef5350 20%; }
    """

    stats: reactive[TrafficStats] = reactive(TrafficStats, always_update=True)
    quorum: reactive[tuple[int, int]] = reactive((2, 2))

    def compose(self) -> ComposeResult:
        yield Static(id="summary")
        with Horizontal():
            yield Label("p99 -", id="latency-label")
            yield Sparkline([], id="latency-spark")
        with Horizontal():
            yield Label("errors/s")
            yield Sparkline([], id="errors-spark")

    def watch_stats(self, stats: TrafficStats) -> None:
        if not self.is_mounted:
            return
        self.query_one("#summary", Static).update(
            summary(stats, self.quorum, self.size.width))
        p99 = "-" if stats.p99_ms is None else f"{stats.p99_ms:.0f}ms"
        self.query_one("#latency-label", Label).update(f"p99 {p99}")
        self.query_one("#latency-spark", Sparkline).data = list(stats.latency_ms) or [0.0]
        self.query_one("#errors-spark", Sparkline).data = list(stats.error_rate) or [0.0]

    def on_mount(self) -> None:
        self.watch_stats(self.stats)

    def on_resize(self) -> None:
        # The summary's form depends on the width: the first stats may come before layout.
        self.watch_stats(self.stats)
