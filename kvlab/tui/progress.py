"""How a membership change reads on the dashboard: what it does, how far it got, and which
ranges flow from whom to whom. Pure text from a `ChangeView`, so it is unit-tested alone;
the ring panel and the event log both say a change in these words.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from kvlab.core.plan import plan
from kvlab.core.ring import Ring
from kvlab.tui.source import ChangeView
from kvlab.tui.theme import ARRIVED_GLYPH, DIM, MOVING_GLYPH, node_color, node_label

ERROR_STYLE = "bold #ef5350"


def headline(change: ChangeView) -> Text:
    """`adding n4`, `removing n2`, `n6 replacing n3`, in the nodes' colours."""
    text = Text()
    if change.kind == "add":
        text.append("adding ")
        text.append_text(node_label(change.node))
    elif change.kind == "remove":
        text.append("removing ")
        text.append_text(node_label(change.node))
    elif change.kind == "replace":
        text.append_text(node_label(change.node))
        text.append(" replacing ")
        text.append_text(node_label(change.replaced or "?"))
    else:  # a change a restarted committer found half done, carried on to its end
        text.append(f"{change.kind} ")
        text.append_text(node_label(change.node))
    return text


def past(change: ChangeView) -> str:
    """What the finished change did: `added n4`, `removed n2`, `n6 replaced n3`."""
    if change.kind == "replace":
        return f"{change.node} replaced {change.replaced or '?'}"
    verb = {"add": "added", "remove": "removed"}.get(change.kind, f"{change.kind}:")
    return f"{verb} {change.node}"


def figures(change: ChangeView) -> list[str]:
    """The progress, most telling first: phase and share arrived, keys, bytes, rate, ETA
    (when the change can tell)."""
    out = [how_far(change), f"{change.keys:,} keys", size(change.bytes),
           f"{size(change.rate_bytes_s)}/s"]
    if change.eta_ms is not None:
        out.append(f"ETA {duration(change.eta_ms)}")
    return out


def how_far(change: ChangeView) -> str:
    """`streaming 45%`: the phase, and the share of the moving ranges arrived."""
    return f"{change.phase} {change.fraction:.0%}"


def tag(change: ChangeView) -> Text:
    """The change in a few cells: `+n4`, `−n2`, `n3→n6` (n6 in n3's place)."""
    if change.kind == "remove":
        return Text.assemble("−", node_label(change.node))
    if change.kind == "replace":
        return Text.assemble(node_label(change.replaced or "?"), ("→", DIM),
                             node_label(change.node))
    return Text.assemble("+", node_label(change.node))


def caption(change: ChangeView) -> Text:
    """One line for the ring panel's border, short enough for its width at 100 columns:
    `+n4 streaming 45% · ETA 3.0 s`. Until a first stream is done there is no ETA (the
    share counts whole streams), and the keys arrived so far say that it moves."""
    text = Text.assemble(tag(change), f" {how_far(change)}")
    if change.eta_ms is not None:
        text.append(f" · ETA {duration(change.eta_ms)}")
    elif change.keys:
        text.append(f" · {change.keys:,} keys")
    return text


def summary(change: ChangeView) -> str:
    """One line for a finished change: `added n4 in 3.2 s: 1,234 keys, 2.1 MB streamed`."""
    return (f"{past(change)} in {duration(change.elapsed_ms)}: {change.keys:,} keys, "
            f"{size(change.bytes)} streamed")


@dataclass(frozen=True)
class Flow:
    """What goes from `source` to `target` in one change, its streams taken together."""

    source: str
    target: str
    share: float  # of the key space
    done: bool  # every stream between the two arrived
    error: str = ""  # the last error of one that did not, if any


def flows(change: ChangeView) -> list[Flow]:
    """(source, target) pairs in the order the change lists its streams (a stream taken
    over from a down source is a new pair: the replicas that stand in for it)."""
    grouped: dict[tuple[str, str], list] = {}
    for stream in change.moving:
        grouped.setdefault((stream.source, stream.target), []).append(stream)
    return [Flow(source, target, sum(s.share for s in streams), all(s.done for s in streams),
                 next((s.error for s in streams if s.error and not s.done), ""))
            for (source, target), streams in grouped.items()]


def flow_text(flow: Flow) -> Text:
    """`▒n1→n4 25%`: the glyph the ring draws its ranges with, source and target in their
    colours; red `!` and no glyph while its last attempt failed."""
    text = Text()
    if flow.error:
        text.append("!", ERROR_STYLE)
    else:
        glyph = ARRIVED_GLYPH if flow.done else MOVING_GLYPH
        text.append(glyph, moving_style(flow.source, flow.target, flow.done))
    text.append_text(node_label(flow.source))
    text.append("→", DIM)
    text.append_text(node_label(flow.target))
    text.append(f" {flow.share:.0%}", DIM)
    return text


def moving_style(source: str, target: str, done: bool) -> str:
    """Ranges still streaming mix both colours (the target's over the source's); arrived
    ones are the target's alone."""
    if done:
        return node_color(target)
    return f"{node_color(target)} on {_darker(node_color(source))}"


def _darker(color: str) -> str:
    """The colour at half brightness: the source shows through without drowning the target."""
    r, g, b = (int(color[i:i + 2], 16) // 2 for i in (1, 3, 5))
    return f"#{r:02x}{g:02x}{b:02x}"


def size(count: int) -> str:
    """Bytes in SI units: `812 B`, `12.3 kB`, `2.1 MB`."""
    if count < 1000:
        return f"{count} B"
    value = count / 1000
    for unit in ("kB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def duration(ms: int) -> str:
    """`350 ms`, `3.2 s`, `2 min 05 s`."""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes} min {seconds:02d} s"


def rings(change: ChangeView, ring: Ring) -> tuple[Ring, Ring]:
    """The rings before and after the change, as far as the views tell: node names and
    `ring`'s vnodes, and the seats `ring` knows (a replacement's tokens are its seat's)."""
    seats = tuple((n, seat) for n, seat in ring.seats if n in change.nodes_before)
    old = Ring(change.nodes_before, ring.vnodes, seats)
    if change.kind == "add":
        return old, old.with_node(change.node)
    if change.kind == "remove":
        return old, old.without_node(change.node)
    if change.kind == "replace" and change.replaced in old.nodes:
        return old, old.replacing(change.replaced, change.node)
    return old, Ring(change.nodes_after, ring.vnodes,
                     tuple((n, seat) for n, seat in ring.seats if n in change.nodes_after))


def shares_text(change: ChangeView, ring: Ring, n: int) -> Text:
    """Each node's share of the keys (those it holds a replica of) before and after, as the
    core plans the change: `n1 100%→75%  n4 0%→75%`."""
    before, after = rings(change, ring)
    planned = plan(before, after, n)
    text = Text()
    for node in dict.fromkeys(before.nodes + after.nodes):
        if text.cell_len:
            text.append("  ")
        text.append_text(node_label(node))
        text.append(f" {planned.before.get(node, 0):.0%}→{planned.after.get(node, 0):.0%}",
                    DIM)
    return text
