"""The `?` screen: the ideas on the dashboard in a few lines each, and the keys."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from kvlab.tui.theme import DIM

TOPICS = (
    ("Ring", "Keys and nodes hash onto one circle of 2^64 positions. Each node owns many "
             "small arcs (virtual nodes, its colour on the ring), so load spreads evenly and "
             "a node leaving hands its arcs to many others, not to one neighbour."),
    ("Replicas", "A key lives on N nodes: walk clockwise from the key's position (◆) and take "
                 "the first N distinct nodes. That ordered list is its preference list."),
    ("Quorums", "A write is sent to all N replicas and succeeds after W acknowledge; a read "
                "asks all N and answers after R reply, with the newest version among them."),
    ("Failover", "With a replica down, reads and writes still succeed while R (or W) of the N "
                 "answer. Kill more and clients get 503 unavailable. A paused node is worse "
                 "at first: it says nothing, so requests wait for the 1 s timeout (504), "
                 "until the failure detector holds it down (see Node health) and they fail "
                 "fast (503) instead."),
    ("Partition", "x cuts the network link between the proxy and the selected node, both "
                  "ways. The node keeps running and its data stays, but the proxy can't reach "
                  "it: requests to its replicas get no answer and time out, as with a paused "
                  "node, until the failure detector holds it down. A read still succeeds while R replicas answer, a write while W do. x "
                  "again heals the link; what was written meanwhile is missing or stale there "
                  "until the cluster repairs it (see How kvlab heals)."),
)

# Node health: (state, what it means). Figures are the detector's defaults.
HEALTH = (
    ("♥ up", "heartbeats arrive (one every 100 ms on the replica channel)."),
    ("◔ suspect", "about 0.7 s without one (phi 3). Only shown: requests still go to it, "
                  "and wait for its answer up to the 1 s timeout."),
    ("○ down", "about 1.85 s without one (phi 8, as in Cassandra and Akka). The coordinator "
               "no longer asks it: its part of each request fails at once, and the request "
               "succeeds if the other replicas make the quorum. A write's part becomes a "
               "hint on a fallback node."),
    ("back up", "with its first heartbeat, a resumed, healed or restarted node is asked "
                "again at once."),
)

# How membership changes: the steps the coordinator takes, in order.
MEMBERSHIP = (
    "a adds a node and X removes the selected one, without losing a key. The coordinator "
    "plans the change: which ranges change replicas, and from which current replica each "
    "is sent to its new owner (the event log gives each node's share of the keys before "
    "and after).",
    "Joining: the new owners join the write set, so every write goes to old and new "
    "replicas alike while the ranges move.",
    "Streaming: each range is sent from its source to its target in batches (▒ on the ring, "
    "in the target's colour over the source's; ▓ once it arrived). A stream that stops "
    "starts again where it got to; one whose source is down is taken over by the range's "
    "other replicas.",
    "Settling: once every range arrived, reads go to the new owners; then the old owners "
    "drop what they no longer hold, and a removed node is stopped.",
    "The nodes panel marks the node +joining or −leaving meanwhile; the ring panel's "
    "border gives the phase, the share arrived and the time left. One change at a time, "
    "and never fewer nodes than N.",
)

# How kvlab heals: (mechanism, what it does, what it covers)
HEALING = (
    ("Hinted handoff", "a write a replica misses goes to a fallback node (the next one "
                       "clockwise past the preference list) as a hint, handed over once the "
                       "replica is back. The hints column counts those still held.",
                       "covers writes made during a short outage; with no more nodes than N "
                       "there is no fallback"),
    ("Anti-entropy", "every few seconds the replicas of each range compare hash trees and "
                     "send each other only the keys that differ.",
                     "covers everything else, read or not: expired or lost hints, long "
                     "outages. A tombstone is purged once it has been seen on every replica"),
    ("Read repair", "a read writes the newest version back to every replica that answered "
                    "stale or missing.",
                    "covers the keys being read, at once: inspect a key, read it (g)"),
)

KEYS = (
    ("↑ ↓ / 1-9", "select a node"), ("k", "kill it (SIGKILL)"),
    ("p", "pause / resume it (SIGSTOP / SIGCONT)"), ("r", "restart it"),
    ("P", "restart the proxy alone"),
    ("x", "cut / heal its link to the proxy"), ("a / X", "add a node / remove the selected"),
    ("/", "type a key; Enter inspects it"), ("g / u", "read / write the key"),
    ("t", "start / stop traffic"), ("+ -", "traffic rate"), ("m", "read/write mix"),
    ("R W", "traffic's read / write quorum"), ("?", "this help"), ("q", "quit"),
)


def overlap(n: int, r: int, w: int) -> Text:
    """The R + W > N rule, worked out for these numbers."""
    text = Text()
    text.append(f"R + W = {r} + {w} = {r + w}", "bold")
    if r + w > n:
        text.append(f" > N = {n}", "bold #66bb6a")
        text.append(f": any {r} replies share at least {r + w - n} replica with any {w} "
                    "acknowledgements, so every read sees the newest acknowledged write.")
    else:
        text.append(f" ≤ N = {n}", "bold #fdd835")
        text.append(f": {r} replies can all come from replicas outside the {w} that "
                    "acknowledged, so a read may return an older value (until repair).")
    return text


def tolerated(n: int, r: int, w: int) -> Text:
    """How many of a key's replicas can be cut off (or down) before its reads or writes fail."""
    text = Text()
    text.append(f"N={n} R={r} W={w}", "bold")
    text.append(f": a key's reads survive {n - r} cut replica{'s' * (n - r != 1)} of {n}, "
                f"its writes {n - w}.")
    return text


def help_text(n: int, r: int, w: int, traffic_r: int | None, traffic_w: int | None) -> Text:
    text = Text()
    for title, body in TOPICS:
        text.append(f"{title}\n", "bold #4fc3f7")
        text.append(body + "\n\n")
        if title == "Quorums":  # the rule, worked out for the cluster on screen
            text.append("Overlap, this cluster\n", "bold #4fc3f7")
            text.append_text(overlap(n, r, w))
            text.append("\n")
            if (traffic_r, traffic_w) != (None, None):
                text.append("Traffic's own R/W: ", DIM)
                text.append_text(overlap(n, traffic_r or r, traffic_w or w))
                text.append("\n")
            text.append("\n")
        if title == "Partition":
            text.append_text(tolerated(n, r, w))
            text.append("\n\n")
    text.append("How kvlab heals\n", "bold #4fc3f7")
    text.append("A node that missed writes keeps its old copy (stale, or missing) until one "
                "of three mechanisms repairs it; the event log says each repair as it "
                "happens.\n")
    for name, what, covers in HEALING:
        text.append(f"• {name}: ", "bold")
        text.append(what + " ")
        text.append(covers[0].upper() + covers[1:] + ".\n", "italic")
    text.append("\n")
    text.append("Node health\n", "bold #4fc3f7")
    text.append("The state column is the process; health is what the coordinator believes "
                "from heartbeats, its suspicion growing with the silence (phi, shown in a "
                "wide nodes panel):\n")
    for state, meaning in HEALTH:
        text.append(f"• {state}: ", "bold")
        text.append(meaning + "\n")
    text.append("A paused, cut off and killed node all go this way; a killed one's requests "
                "fail at once (503) even before, as its connection is gone.\n\n")
    text.append("How membership changes\n", "bold #4fc3f7")
    for step in MEMBERSHIP:
        text.append("• ")
        text.append(step + "\n")
    text.append("\n")
    text.append("Keys\n", "bold #4fc3f7")
    for key, what in KEYS:
        text.append(f"  {key:<10}", "bold")
        text.append(what + "\n")
    return text


class HelpScreen(ModalScreen[None]):
    """Dismissed with escape, q or ?."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; max-width: 96; height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """
    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss", "Close", show=True),
    ]

    def __init__(self, n: int, r: int, w: int, traffic_r: int | None = None,
                 traffic_w: int | None = None) -> None:
        super().__init__()
        self._text = help_text(n, r, w, traffic_r, traffic_w)

    def compose(self) -> ComposeResult:
        with VerticalScroll() as scroll:
            scroll.border_title = "kvlab: how a Dynamo-style store works"
            scroll.border_subtitle = "esc closes"
            yield Static(self._text)
