"""The nodes panel: one row per data node, and which node the chaos keys act on.

Two columns say whether a node is alive, from two places: `state` is the process (what the
supervisor sees in /proc), `health` the coordinator's failure detector (heartbeats, phi).
A paused process is `‖ paused` at once, and turns `◔ suspect` then `○ down` as its
heartbeats stay away; the coordinator stops asking a down node. A node a membership change
brings in or takes out says so after its state.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from kvlab.tui.source import DOWN, ClusterView, NodeView
from kvlab.tui.theme import DIM, health_text, node_label, state_text

HEADER_ROWS = 1
JOINING_STYLE, LEAVING_STYLE = "bold #4dd0e1", "bold #ffa726"


def _number(value: float | int | None, fmt: str) -> Text:
    return Text("-", style=DIM) if value is None else Text(format(value, fmt))


class NodesPanel(Widget, can_focus=True):
    """Node rows; up/down (or a click) moves the selection and posts `Selected`."""

    DEFAULT_CSS = """
    NodesPanel { height: auto; }
    """
    BINDINGS = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
    ]

    class Selected(Message):
        def __init__(self, node: str) -> None:
            super().__init__()
            self.node = node

    view: reactive[ClusterView | None] = reactive(None, layout=True)
    selected: reactive[str | None] = reactive(None)

    def _names(self) -> list[str]:
        return [n.name for n in self.view.nodes] if self.view else []

    def select(self, node: str) -> None:
        if node in self._names() and node != self.selected:
            self.selected = node
            self.post_message(self.Selected(node))

    def action_move(self, step: int) -> None:
        names = self._names()
        if not names:
            return
        index = names.index(self.selected) if self.selected in names else 0
        self.select(names[(index + step) % len(names)])

    def on_click(self, event: events.Click) -> None:
        row = event.y - HEADER_ROWS
        names = self._names()
        if 0 <= row < len(names):
            self.select(names[row])

    def render(self) -> Table | Text:
        if self.view is None:
            return Text("waiting for the cluster…", style=DIM)
        # Narrow (80 columns): phi goes first, then the figures the traffic panel has too.
        for phi, optional in ((True, OPTIONAL), (False, OPTIONAL + NARROW)):
            rows = [(node, self._cells(node, phi)) for node in self.view.nodes]
            columns, long, fits = _fit([cells for _, cells in rows], self.size.width,
                                       optional)
            if fits:
                break
        table = Table(box=None, padding=(0, 1, 0, 0), expand=True, show_edge=False,
                      header_style=f"bold {DIM}")
        for column in columns:
            header, wide_header, justify = COLUMNS[column]
            if column == "health" and phi:
                header = wide_header = "health φ"
            if column == "error":
                table.add_column(wide_header if long else header, ratio=1, no_wrap=True,
                                 overflow="ellipsis", min_width=ERROR_MIN)
            else:
                table.add_column(wide_header if long else header, justify=justify,
                                 no_wrap=True)
        for node, cells in rows:
            table.add_row(*(cells[c] for c in columns), style=self._row_style(node))
        return table

    def _row_style(self, node: NodeView) -> str:
        if node.name == self.selected:
            return "on #263238" if not self.has_focus else "on #37474f"
        return ""

    def _cells(self, node: NodeView, phi: bool = True) -> dict[str, Text]:
        marker = "▸" if node.name == self.selected else " "
        name = Text(marker, style="bold")
        name.append_text(node_label(node.name, node.state))
        error = Text(node.last_error or "", style="#ef9a9a" if node.last_error else DIM)
        state = state_text(node.state, node.partitioned)
        if self.view is not None and node.name in self.view.joining:
            state.append(" +joining", JOINING_STYLE)
        elif self.view is not None and node.name in self.view.leaving:
            state.append(" −leaving", LEAVING_STYLE)
        return {
            "node": name,
            "port": _number(node.port, "d"),
            "pid": _number(node.pid, "d") if node.state != DOWN else Text("-", style=DIM),
            "state": state,
            "health": health_text(node.health, node.phi if phi else None),
            "keys": _number(node.keys, ",d"),
            "ops/s": _number(node.ops_per_s, ".0f"),
            "p99": _number(node.p99_ms, ".1f"),
            "hints": _hints(node.hints),
            "error": error,
        }


# column -> (header, header when there is room, justification), in display order
COLUMNS = {
    "node": ("node", "node", "left"),
    "port": ("port", "port", "right"),
    "pid": ("pid", "pid", "right"),
    "state": ("state", "state", "left"),
    "health": ("health", "health", "left"),  # with " φ" when the cells show phi
    "keys": ("keys", "keys", "right"),
    "ops/s": ("ops/s", "ops/s", "right"),
    "p99": ("p99", "p99 ms", "right"),
    "hints": ("hints", "hints", "right"),
    "error": ("error", "last error", "left"),
}
# Dropped in this order when the panel is too narrow: the port is fixed and known, the pid
# is only for killing a node by hand; the hints pending are what heals next. Narrower still
# (100 columns and less) phi goes (the verdict stays, and the event log gives phi when it
# changes), then the replica round trips and the ops per second, which the traffic panel
# sums up: whether a node is alive and believed alive matters more.
OPTIONAL = ("port", "pid")
NARROW = ("p99", "ops/s")
ERROR_MIN = 5
ERROR_WANT = 12  # an optional column goes before the error column gets narrower than this
ROOMY = 14  # the long headers only when the error column keeps this much


def _fit(rows: list[dict[str, Text]], width: int,
         optional: tuple[str, ...]) -> tuple[list[str], bool, bool]:
    """The columns that fit `width` (dropping `optional` ones first, in order), whether the
    long headers fit too, and whether the error column keeps its width. Widths are measured
    from the cells, so a 7-digit pid counts as such."""

    def need(columns: list[str], long: bool) -> int:
        total = 0
        for column in columns:
            if column == "error":
                continue
            header = COLUMNS[column][1 if long else 0]
            total += max([len(header), *(r[column].cell_len for r in rows)]) + 1
        return total

    columns = list(COLUMNS)
    for column in optional:
        if need(columns, False) + ERROR_WANT <= width:
            break
        columns.remove(column)
    return (columns, need(columns, True) + ROOMY <= width,
            need(columns, False) + ERROR_WANT <= width)


def _hints(count: int | None) -> Text:
    """Hints pending: unknown is '-', none is a dim 0, any is yellow (a node is owed writes)."""
    if count is None:
        return Text("-", style=DIM)
    return Text(format(count, ",d"), style="bold #fdd835" if count else DIM)
