"""The nodes panel: one row per data node, and which node the chaos keys act on."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from kvlab.tui.source import DOWN, ClusterView, NodeView
from kvlab.tui.theme import DIM, node_label, state_text

HEADER_ROWS = 1


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
        wide = self.size.width >= 60
        # At 80 columns something has to give: the port (fixed, known) before the error.
        narrow = self.size.width < 54
        table = Table(box=None, padding=(0, 1, 0, 0), expand=True, show_edge=False,
                      header_style=f"bold {DIM}")
        table.add_column("node", no_wrap=True)
        if not narrow:
            table.add_column("port", justify="right", no_wrap=True)
        table.add_column("pid", justify="right", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("keys", justify="right", no_wrap=True)
        table.add_column("ops/s", justify="right", no_wrap=True)
        table.add_column("p99 ms" if wide else "p99", justify="right", no_wrap=True)
        table.add_column("last error" if wide else "error", ratio=1, no_wrap=True,
                         overflow="ellipsis", min_width=5)
        for node in self.view.nodes:
            cells = self._cells(node)
            if narrow:
                del cells[1]
            table.add_row(*cells, style=self._row_style(node))
        return table

    def _row_style(self, node: NodeView) -> str:
        if node.name == self.selected:
            return "on #263238" if not self.has_focus else "on #37474f"
        return ""

    def _cells(self, node: NodeView) -> list[Text]:
        marker = "▸" if node.name == self.selected else " "
        name = Text(marker, style="bold")
        name.append_text(node_label(node.name, node.state))
        error = Text(node.last_error or "", style="#ef9a9a" if node.last_error else DIM)
        return [
            name,
            _number(node.port, "d"),
            _number(node.pid, "d") if node.state != DOWN else Text("-", style=DIM),
            state_text(node.state, node.partitioned),
            _number(node.keys, ",d"),
            _number(node.ops_per_s, ".0f"),
            _number(node.p99_ms, ".1f"),
            error,
        ]
