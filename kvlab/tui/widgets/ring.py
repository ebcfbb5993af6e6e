"""The hash ring, drawn as an ellipse of terminal cells.

Each cell on the ring takes the colour of the node owning that ring position (12 o'clock is
position 0, positions grow clockwise), so the virtual nodes show as each node's colour
scattered all around. Down nodes' arcs turn into grey `✗`, paused ones into `‖`, and those of
a node cut off from the coordinator into `⌁`. A key typed in the inspector is marked with `◆`
at its hash, and the middle lists its preference list.

During a membership change the ranges in motion are drawn over that: `▒` in the target's
colour on the source's (darker) while a range streams, `▓` in the target's once it arrived.
The legend lists each flow (source → target, its share of the keys), and the middle, when
no key is placed, how far the change got.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import lru_cache

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from kvlab.core.ring import RING_SIZE, Ring, hash_key
from kvlab.tui.progress import figures, flow_text, flows, headline, how_far, moving_style
from kvlab.tui.source import DOWN, PAUSED, ChangeView, ClusterView, StreamView
from kvlab.tui.theme import (
    ARRIVED_GLYPH,
    CUT_GLYPH,
    CUT_STYLE,
    DIM,
    MOVING_GLYPH,
    node_color,
    node_label,
)

THICKNESS_ROWS = 1.6
MARK = "◆"


@dataclass(frozen=True)
class Cell:
    x: int
    y: int
    owner: str
    point: int  # the ring position at the cell's middle, which it stands for


@dataclass(frozen=True)
class Layout:
    """Where the ring's cells are in a `width` x `height` box, and who owns each."""

    width: int
    height: int
    cells: tuple[Cell, ...]
    inner: tuple[int, int, int, int]  # x, y, width, height of the free middle

    def position(self, point: int, inset: float) -> tuple[int, int]:
        """The cell at ring position `point`, `inset` rows inside the ring's inner edge
        (negative: into the band)."""
        cx, cy, rx, ry = _axes(self.width, self.height)
        angle = point / RING_SIZE * 2 * math.pi
        scale = 1 - (THICKNESS_ROWS + inset) / ry
        x = cx + math.sin(angle) * rx * scale
        y = cy - math.cos(angle) * ry * scale
        return min(self.width - 1, max(0, int(x))), min(self.height - 1, max(0, int(y)))


def _axes(width: int, height: int) -> tuple[float, float, float, float]:
    cx, cy = width / 2, height / 2
    ry = height / 2 - 0.1
    rx = min(width / 2 - 0.1, ry * 2.6)  # terminal cells are about twice as tall as wide
    return cx, cy, rx, ry


@lru_cache(maxsize=8)
def layout(ring: Ring, width: int, height: int) -> Layout:
    """Cells of the ring in a box (cached: the owners change only with membership)."""
    cx, cy, rx, ry = _axes(width, height)
    inner_r = 1 - THICKNESS_ROWS / ry
    cells = []
    for y in range(height):
        for x in range(width):
            dx, dy = (x + 0.5 - cx) / rx, (y + 0.5 - cy) / ry
            r = math.hypot(dx, dy)
            if not inner_r <= r <= 1:
                continue
            angle = math.atan2(dx, -dy) % (2 * math.pi)
            point = int(angle / (2 * math.pi) * RING_SIZE) % RING_SIZE
            owner = ring.preference_list_at(point, 1)
            if owner:
                cells.append(Cell(x, y, owner[0], point))
    # The largest box inside the inner ellipse, for the key and its replicas.
    half_w = int(rx * inner_r * 0.7)
    half_h = int(ry * inner_r * 0.7)
    inner = (int(cx) - half_w, int(cy) - half_h, 2 * half_w, 2 * half_h + 1)
    return Layout(width, height, tuple(cells), inner)


def walk(ring: Ring, key: str, n: int) -> list[tuple[str, bool]]:
    """The vnodes met clockwise from `key` until `n` distinct nodes are found:
    (owner, joins the preference list) for each, in order."""
    arcs = ring.arcs()
    ends = [end for _, end, _ in arcs]
    start = bisect_right(ends, hash_key(key))
    seen: list[str] = []
    steps: list[tuple[str, bool]] = []
    want = min(n, len(ring.nodes))
    for i in range(len(arcs)):
        owner = arcs[(start + i) % len(arcs)][2]
        fresh = owner not in seen
        steps.append((owner, fresh))
        if fresh:
            seen.append(owner)
            if len(seen) == want:
                break
    return steps


class Motion:
    """Which stream of a change carries a ring position, if any.

    A change's arcs come from one plan, so any two are either the same arc (streamed to two
    targets, or by two replicas standing in for a down source) or do not overlap; of the
    same arc, one still streaming is shown before one that arrived.
    """

    def __init__(self, change: ChangeView) -> None:
        spans: list[tuple[int, bool, int, StreamView]] = []  # (end, done, start, stream)
        for stream in change.moving:
            for start, end in stream.arcs:
                if start < end:
                    spans.append((end, stream.done, start, stream))
                else:  # the arc wrapping past 0 (the whole ring when start == end)
                    spans.append((RING_SIZE - 1, stream.done, start, stream))
                    spans.append((end, stream.done, -1, stream))
        spans.sort(key=lambda span: span[:2])
        self._ends = [span[0] for span in spans]
        self._spans = spans

    def at(self, point: int) -> StreamView | None:
        """The stream whose arc (start, end] holds `point`."""
        i = bisect_left(self._ends, point)
        if i < len(self._spans) and self._spans[i][2] < point:
            return self._spans[i][3]
        return None


class RingView(Widget):
    """The ring; set `view` (the cluster) and `key` (the key to place) from outside."""

    DEFAULT_CSS = """
    RingView { height: 1fr; }
    """

    view: reactive[ClusterView | None] = reactive(None)
    key: reactive[str] = reactive("")

    def render(self) -> Text:
        view = self.view
        width, height = self.size.width, self.size.height
        if view is None or width < 8 or height < 5:
            return Text("waiting for the cluster…", style=DIM)
        legend = self._legend(view, width)
        ring_rows = height - len(legend)
        grid: list[list[tuple[str, str]]] = [[(" ", "")] * width for _ in range(ring_rows)]
        states, cut = view.states, view.partitioned
        box = layout(view.ring, width, ring_rows)
        motion = Motion(view.change) if view.change else None
        for cell in box.cells:
            state = states.get(cell.owner)
            stream = motion.at(cell.point) if motion else None
            if stream is not None:  # what moves matters more than who holds it now
                grid[cell.y][cell.x] = (ARRIVED_GLYPH if stream.done else MOVING_GLYPH,
                                        moving_style(stream.source, stream.target,
                                                     stream.done))
            elif state == DOWN:
                grid[cell.y][cell.x] = ("✗", DIM)
            elif cell.owner in cut:
                grid[cell.y][cell.x] = (CUT_GLYPH, f"bold {node_color(cell.owner)}")
            elif state == PAUSED:
                grid[cell.y][cell.x] = ("‖", f"bold {node_color(cell.owner)}")
            else:
                grid[cell.y][cell.x] = ("█", node_color(cell.owner))
        if self.key:
            self._write_middle(grid, box, view)
            # On the band itself, where the key hashes to: its walk starts here.
            x, y = box.position(hash_key(self.key), -THICKNESS_ROWS / 2)
            grid[y][x] = (MARK, "bold #000000 on #ffffff")
        elif view.change:
            lines = _progress_lines(view.change)
            _centre(grid, box, lines, lines)
        text = Text(no_wrap=True, overflow="crop")
        for row in grid:
            for char, style in row:
                text.append(char, style)
            text.append("\n")
        for i, line in enumerate(legend):
            text.append_text(line)
            if i < len(legend) - 1:
                text.append("\n")
        return text

    def _write_middle(self, grid: list[list[tuple[str, str]]], box: Layout,
                      view: ClusterView) -> None:
        """The key and its preference list, centred inside the ring."""
        w = box.inner[2]
        prefs = view.ring.preference_list(self.key, view.n)
        key = Text(MARK + " " + self.key, style="bold #ffffff")
        where = Text(f"at {hash_key(self.key) / RING_SIZE:.1%}", style=DIM)
        title = Text(f"replicas (N={view.n})", style=DIM)
        replicas = Text()
        for i, node in enumerate(prefs):
            if i:
                replicas.append(" → " if w >= 14 else " ", DIM)
            replicas.append_text(_label(view, node))
        _centre(grid, box, [replicas, key, where, title], [key, where, title, replicas])

    def _legend(self, view: ClusterView, width: int) -> list[Text]:
        """Node names in their colours with their share of the ring (as primary), wrapped;
        without the shares if that would take more than two lines; then the key's walk."""
        share = view.ring.ownership()
        for with_share in (True, False):
            lines: list[Text] = [Text()]
            for node in view.nodes:
                item = Text()
                if node.partitioned and node.state != DOWN:
                    item.append(CUT_GLYPH, CUT_STYLE)
                else:
                    glyph = {DOWN: "✗", PAUSED: "‖"}.get(node.state, "█")
                    item.append(glyph, DIM if node.state == DOWN else node_color(node.name))
                item.append_text(node_label(node.name, node.state))
                if with_share:
                    item.append(f" {share.get(node.name, 0):.0%}", DIM)
                if lines[-1].cell_len and lines[-1].cell_len + 2 + item.cell_len > width:
                    lines.append(Text())
                if lines[-1].cell_len:
                    lines[-1].append("  " if with_share else " ")
                lines[-1].append_text(item)
            if len(lines) <= 2:
                break
        if view.change:
            lines += _flow_lines(view.change, width)
        if self.key:
            lines.append(self._walk_line(view, width))
        for line in lines:
            line.truncate(width, overflow="ellipsis")
        return lines

    def _walk_line(self, view: ClusterView, width: int) -> Text:
        """The clockwise walk: every vnode passed, the duplicates skipped (dim)."""
        line = Text(MARK, style="bold #ffffff")
        for owner, fresh in walk(view.ring, self.key, view.n):
            line.append(" → ", DIM)
            if fresh:
                line.append_text(_label(view, owner))
            else:
                line.append(owner, f"{DIM} strike")
        return line


def _centre(grid: list[list[tuple[str, str]]], box: Layout, ranked: list[Text],
            order: list[Text]) -> None:
    """Lines centred inside the ring: as many of `ranked` (most important first) as fit,
    shown in reading `order`."""
    x0, y0, w, h = box.inner
    chosen = [line for line in ranked if line.cell_len <= w][:h]
    lines = [line for line in order if any(line is c for c in chosen)]
    top = y0 + max(0, (h - len(lines)) // 2)
    for dy, line in enumerate(lines):
        left = x0 + max(0, (w - line.cell_len) // 2)
        for dx, (char, style) in enumerate(_chars(line)):
            if 0 <= top + dy < len(grid) and 0 <= left + dx < len(grid[0]):
                grid[top + dy][left + dx] = (char, style)


def _progress_lines(change: ChangeView) -> list[Text]:
    """The change in the middle of the ring, most important (and first to read) first:
    what it does, how far it got, what moved, how fast and how long it still takes."""
    _, moved, size, *speed = figures(change)
    return [headline(change), Text(how_far(change), style="bold"),
            Text(f"{moved} · {size}", style=DIM), Text(" · ".join(speed), style=DIM)]


def _flow_lines(change: ChangeView, width: int) -> list[Text]:
    """Each flow of the change, wrapped onto at most two lines."""
    lines: list[Text] = [Text()]
    for flow in flows(change):
        item = flow_text(flow)
        if lines[-1].cell_len and lines[-1].cell_len + 2 + item.cell_len > width:
            if len(lines) == 2:
                lines[-1].append(" …", DIM)
                break
            lines.append(Text())
        if lines[-1].cell_len:
            lines[-1].append("  ")
        lines[-1].append_text(item)
    return [line for line in lines if line.cell_len]


def _label(view: ClusterView, node: str) -> Text:
    """The node's name as its state shows it, with `⌁` after it when it is cut off."""
    label = node_label(node, view.states.get(node, DOWN))
    if node in view.partitioned:
        label.append(CUT_GLYPH, CUT_STYLE)
    return label


def _chars(text: Text) -> list[tuple[str, str]]:
    """Each character of `text` with the style of the innermost span over it."""
    styles = [text.style] * len(text.plain)
    for span in text.spans:
        for i in range(span.start, min(span.end, len(styles))):
            styles[i] = span.style
    return [(char, style) for char, style in zip(text.plain, styles)]
