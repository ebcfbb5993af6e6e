"""The key inspector: every replica's own copy of one key, so stale copies stand out."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from kvlab.tui.source import MISSING, OK, UNREACHABLE, KeyView, ReplicaView
from kvlab.tui.theme import DIM, node_label, version_key, version_text


def verdicts(view: KeyView) -> list[tuple[ReplicaView, str]]:
    """Each replica with `current`, `stale`, `missing` or `unreachable`.

    `current` is the newest version any replica holds; a repair brings the others to it.
    """
    answered = [r for r in view.replicas if r.state == OK]
    newest = max((version_key(r.version) for r in answered), default=None)
    out = []
    for replica in view.replicas:
        if replica.state == OK:
            verdict = "current" if version_key(replica.version) == newest else "stale"
        else:
            verdict = replica.state
        out.append((replica, verdict))
    return out


VERDICT_STYLE = {
    "current": ("✓ current", "bold #66bb6a"),
    "stale": ("⚠ stale", "bold #fdd835"),
    MISSING: ("∅ missing", "bold #ffa726"),
    UNREACHABLE: ("✗ unreachable", "bold #ef5350"),
}


class KeyInspector(Widget):
    """Shows `view` (set from outside); `key` alone shows the key is being asked for."""

    DEFAULT_CSS = """
    KeyInspector { height: auto; }
    """

    view: reactive[KeyView | None] = reactive(None, layout=True)
    key: reactive[str] = reactive("")

    def render(self) -> Table | Group | Text:
        view = self.view
        if not self.key:
            return Text.assemble(("type a key and press Enter to see each replica's copy",
                                  DIM))
        if view is None or view.key != self.key:
            return Text(f"asking the replicas of {self.key!r}…", style=DIM)
        if view.error:
            return Text(f"can't inspect {view.key!r}: {view.error}", style="#ef9a9a")
        table = Table(box=None, padding=(0, 1, 0, 0), expand=True, show_edge=False,
                      header_style=f"bold {DIM}")
        table.add_column("#", no_wrap=True)
        table.add_column("replica", no_wrap=True)
        table.add_column("copy", no_wrap=True)
        table.add_column("value", ratio=1, no_wrap=True, overflow="ellipsis", min_width=5)
        table.add_column("version", no_wrap=True)
        judged = verdicts(view)
        for i, (replica, verdict) in enumerate(judged, start=1):
            label, style = VERDICT_STYLE.get(verdict, (verdict, DIM))
            if replica.state != OK:
                value = Text(replica.reason or "", style=DIM)
            elif replica.deleted:
                value = Text("(deleted)", style=DIM)
            else:
                value = Text(replica.value or "")
            table.add_row(Text(str(i), style=DIM), node_label(replica.node),
                          Text(label, style=style), value,
                          Text(version_text(replica.version), style=DIM))
        found = {verdict for _, verdict in judged}
        if found & {"stale", MISSING}:
            hint = "a read (g) returns the current copy and repairs the others"
        elif UNREACHABLE in found:
            hint = "writes still succeed while W replicas acknowledge"
        else:
            return table
        return Group(table, Text(hint, style=f"italic {DIM}"))
