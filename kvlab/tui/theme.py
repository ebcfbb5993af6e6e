"""Colours and glyphs shared by every panel, so a node looks the same everywhere."""

from __future__ import annotations

import re
import time
import zlib

from rich.text import Text

from kvlab.tui.source import DOWN, FAILED, PAUSED, STARTING, SUSPECT, UP

# Distinct on a dark background and none of them red: red means "down".
PALETTE = (
    "#4fc3f7",  # sky
    "#ffb74d",  # orange
    "#aed581",  # green
    "#f48fb1",  # pink
    "#b39ddb",  # lavender
    "#fff176",  # yellow
    "#4db6ac",  # teal
    "#90a4ae",  # slate
    "#ce93d8",  # orchid
)

STATE_STYLE = {
    UP: ("●", "bold #66bb6a"),
    STARTING: ("◌", "bold #fdd835"),
    PAUSED: ("‖", "bold #ffa726"),
    DOWN: ("✗", "bold #ef5350"),
    FAILED: ("⊘", "bold reverse #ef5350"),
}

DIM = "#616161"

# A partition is not a process state (a cut node may be up, paused or down), so it gets a
# glyph and a colour of its own, magenta: none of the state colours or node colours.
CUT_GLYPH = "⌁"
CUT_STYLE = "bold #ff4dff"


# The failure detector's verdict, apart from the process state: outlined glyphs, so `○ down`
# (the coordinator no longer asks it) never reads as `✗ down` (the process is gone).
HEALTH_STYLE = {
    UP: ("♥", "#66bb6a"),
    SUSPECT: ("◔", "bold #fdd835"),
    DOWN: ("○", "bold #ef5350"),
}

# Ranges in motion during a membership change: still streaming, and arrived.
MOVING_GLYPH, ARRIVED_GLYPH = "▒", "▓"


def node_color(name: str) -> str:
    """A colour stable per node name: n1..n9 in palette order, anything else by hash."""
    match = re.fullmatch(r"n(\d+)", name)
    index = int(match.group(1)) - 1 if match else zlib.crc32(name.encode())
    return PALETTE[index % len(PALETTE)]


def node_label(name: str, state: str = UP) -> Text:
    """The node's name in its colour; struck through and dim when it is down."""
    if state in (DOWN, FAILED):
        return Text(name, style=f"strike {DIM}")
    return Text(name, style=f"bold {node_color(name)}")


def state_text(state: str, partitioned: bool = False) -> Text:
    """The state as `● up`; a partitioned node's gets ` ⌁ cut` after it."""
    glyph, style = STATE_STYLE.get(state, ("?", DIM))
    text = Text(f"{glyph} {state}", style=style)
    if partitioned:
        text.append(f" {CUT_GLYPH} cut", CUT_STYLE)
    return text


def health_text(health: str | None, phi: float | None = None) -> Text:
    """The detector's verdict as `♥ up 0.4` (phi after it, dim); `-` when unknown."""
    if health is None:
        return Text("-", style=DIM)
    glyph, style = HEALTH_STYLE.get(health, ("?", DIM))
    text = Text(f"{glyph} {health}", style=style)
    if phi is not None:
        text.append(f" {phi_text(phi)}", DIM)
    return text


def phi_text(phi: float) -> str:
    """Suspicion to one decimal while it is small, whole numbers once it is huge (a node
    silent for a minute has a phi in the hundreds)."""
    return f"{phi:.1f}" if phi < 100 else f"{phi:.0f}"


_HLC = re.compile(r"(\d+)\.(\d+)@(.+)")


def version_key(version: str | None) -> tuple:
    """Order versions as the store does: physical ms, logical counter, coordinator."""
    if version is None:
        return (-1, -1, "")
    match = _HLC.fullmatch(version)
    if not match:
        return (0, 0, version)
    return (int(match.group(1)), int(match.group(2)), match.group(3))


def version_text(version: str | None) -> str:
    """A hybrid-logical-clock version as a wall-clock time: `14:03:27.412` (+logical)."""
    if version is None:
        return "-"
    match = _HLC.fullmatch(version)
    if not match:
        return version
    ms, logical = int(match.group(1)), int(match.group(2))
    stamp = time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"
    return stamp + (f"+{logical}" if logical else "")
