"""What changed between two consecutive snapshots, as event-log lines: a pure diff.

The dashboard calls `changes(before, after)` on every poll and logs what it returns. Nothing
here touches Textual or IO, so every line can be checked in a plain unit test.

Each line stands for something that happened: a poll in which nothing changed yields no line.
A node's health is the coordinator's failure detector's verdict, logged as it changes; a
membership change is logged as it starts (its flows, and each node's share before and
after), as it enters each phase, when a stream fails, and with its totals when it is done.
Repairs are counted from each node's own counters (`Healing`), which are exact however many
anti-entropy rounds or hint batches ran between two polls; the exchanges and the hints held
say who the keys came from or went to, as far as the two snapshots show it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from kvlab.tui.progress import flow_text, flows, headline, shares_text, summary
from kvlab.tui.source import (
    ANTI_ENTROPY,
    DOWN,
    READ_REPAIR,
    SUSPECT,
    UP,
    ChangeView,
    ClusterView,
    Exchange,
    Healing,
    NodeView,
)
from kvlab.tui.theme import health_text, node_label, phi_text, state_text

# Counters that only grow while a process lives: one that went down means a restart.
_MONOTONIC = ("hints_stored", "hints_replayed", "hints_expired", "ae_rounds", "ae_in_sync",
              "repair_bytes", "superseded", "refused", "purged")


@dataclass(frozen=True)
class Event:
    """One line for the event log, at a level of `EventLog.add` (info, ok, warn, error)."""

    text: str | Text
    level: str = "info"

    @property
    def plain(self) -> str:
        return self.text.plain if isinstance(self.text, Text) else self.text


def changes(before: ClusterView, after: ClusterView) -> list[Event]:
    """Everything worth a line between two consecutive snapshots, in the order to log it."""
    return [*state_changes(before, after), *health_changes(before, after),
            *membership_events(before, after), *repair_events(before, after)]


def state_changes(before: ClusterView, after: ClusterView) -> list[Event]:
    """Node states and links, errors, ring membership and the proxy's state."""
    events: list[Event] = []
    for node in after.nodes:
        previous = before.node(node.name)
        if previous is None:
            continue  # a new node: the ring's change below says so
        if (previous.state, previous.partitioned) != (node.state, node.partitioned):
            events.append(Event(Text.assemble(
                node_label(node.name), " ", state_text(previous.state, previous.partitioned),
                " → ", state_text(node.state, node.partitioned))))
        if node.last_error and previous.last_error != node.last_error:
            events.append(Event(f"{node.name} error: {node.last_error}", "warn"))
    # Membership as the ring has it, which is where keys go (a node's row may show up
    # before it joins and stay after it left).
    for name in after.ring.nodes:
        if name not in before.ring.nodes:
            events.append(Event(f"{name} joined the ring", "ok"))
    for name in before.ring.nodes:
        if name not in after.ring.nodes:
            events.append(Event(f"{name} left the ring", "warn"))
    if before.proxy_state != after.proxy_state:
        events.append(Event(f"proxy {before.proxy_state} → {after.proxy_state}",
                            "error" if after.proxy_state == DOWN else "info"))
    return events


# health -> (what it means for requests, level)
_HEALTH_NEWS = {
    SUSPECT: ("no heartbeat for a while", "warn"),
    DOWN: ("the coordinator stops asking it: its part of a request fails at once", "error"),
    UP: ("heartbeats are back, it is asked again", "ok"),
}


def health_changes(before: ClusterView, after: ClusterView) -> list[Event]:
    """The failure detector's verdicts: a node turning suspect, down, or up again."""
    events: list[Event] = []
    for node in after.nodes:
        previous = before.node(node.name)
        if previous is None or previous.health is None or node.health is None \
                or previous.health == node.health:
            continue  # unknown on either side is no change of verdict
        news, level = _HEALTH_NEWS.get(node.health, ("", "info"))
        text = Text.assemble(node_label(node.name), " ", health_text(previous.health), " → ",
                             health_text(node.health))
        if node.phi is not None and node.health != UP:
            text.append(f" (φ {phi_text(node.phi)})")
        if news:
            text.append(f": {news}")
        events.append(Event(text, level))
    return events


_PHASE_NEWS = {
    "streaming": "nothing placed by the old ring is in flight any more: streaming the "
                 "moving ranges",
    "settling": "every range arrived: reads go to the new owners",
}


def membership_events(before: ClusterView, after: ClusterView) -> list[Event]:
    """A membership change starting, moving to its next phase, a stream failing, and the
    change done."""
    was, now = before.change, after.change
    events: list[Event] = []
    same = was is not None and now is not None and was.identity == now.identity
    if now is not None and not same:
        events += _started(now, after)
    elif same and was.phase != now.phase and now.phase in _PHASE_NEWS:
        events.append(Event(Text.assemble(headline(now), f": {_PHASE_NEWS[now.phase]}")))
    if now is not None:
        failed_before = {(f.source, f.target): f.error for f in flows(was)} if same else {}
        for flow in flows(now):
            if flow.error and failed_before.get((flow.source, flow.target)) != flow.error:
                events.append(Event(Text.assemble("stream ", flow_text(flow),
                                                  f": {flow.error}"), "warn"))
    done = after.last_change
    if done is not None and (before.last_change is None
                             or before.last_change.identity != done.identity):
        events.append(Event(summary(done), "ok"))
    return events


def _started(change: ChangeView, view: ClusterView) -> list[Event]:
    text = Text.assemble(headline(change), ": ")
    for i, flow in enumerate(flows(change)):
        if i:
            text.append(", ")
        text.append_text(flow_text(flow))
    if not change.moving:
        text.append("no range changes replicas")
    return [Event(text, "info"),
            Event(Text.assemble("shares of the keys ", shares_text(change, view.ring,
                                                                     view.n)))]


def repair_events(before: ClusterView, after: ClusterView) -> list[Event]:
    """Hinted handoff, anti-entropy, read repair and tombstone purges since `before`.

    Only nodes whose counters both snapshots know are compared: a node that was down or
    not answering has no 'before', and what it did meanwhile is not news of this poll.
    """
    pairs = {node.name: pair for node in after.nodes
             if (pair := _pair(before.node(node.name), node)) is not None}
    events: list[Event] = []
    for name, (was, now) in pairs.items():
        events += _hint_events(name, was, now)
        ae = _delta(was.repaired_by(ANTI_ENTROPY), now.repaired_by(ANTI_ENTROPY))
        if ae:
            events.append(_anti_entropy(name, ae, pairs))
        read = _delta(was.repaired_by(READ_REPAIR), now.repaired_by(READ_REPAIR))
        if read:
            events.append(Event(f"{name}: {_n(read, 'key')} fixed by read repair", "ok"))
        purged = _delta(was.purged, now.purged)
        if purged:
            events.append(Event(f"{name}: {_n(purged, 'tombstone')} purged (every replica "
                                f"had {_it(purged)}, grace period over)"))
        refused = _delta(was.refused, now.refused)
        if refused:
            events.append(Event(f"{name}: refused {_n(refused, 'write')} stamped too far "
                                f"ahead of its clock", "warn"))
    return events


def _pair(old: NodeView | None, new: NodeView) -> tuple[Healing, Healing] | None:
    """The node's counters before and after, `before` zeroed if its process restarted."""
    if old is None or old.healing is None or new.healing is None:
        return None
    was, now = old.healing, new.healing
    restarted = (old.pid is not None and new.pid is not None and old.pid != new.pid) or any(
        getattr(now, c) < getattr(was, c) for c in _MONOTONIC) or any(
        now.repaired_by(m) < count for m, count in was.repaired.items())
    return (Healing(), now) if restarted else (was, now)


def _delta(was: int, now: int) -> int:
    return max(0, now - was)


def _hint_events(name: str, was: Healing, now: Healing) -> list[Event]:
    events = []
    for target in sorted(now.hints_held):
        if not was.hints_for(target):
            events.append(Event(f"{name}: holding {_n(now.hints_for(target), 'hint')} for "
                                f"{target}, to hand over when it is back"))
    replayed = _delta(was.hints_replayed, now.hints_replayed)
    if replayed:
        to = [t for t in sorted(was.hints_held) if now.hints_for(t) < was.hints_for(t)]
        events.append(Event(f"{name}: {_n(replayed, 'hint')} handed "
                            + (f"to {', '.join(to)}" if to else "over"), "ok"))
    expired = _delta(was.hints_expired, now.hints_expired)
    if expired:
        events.append(Event(f"{name}: {_n(expired, 'hint')} expired after the hint window; "
                            f"anti-entropy repairs {_them(expired)}", "warn"))
    return events


def _anti_entropy(name: str, keys: int, pairs: dict[str, tuple[Healing, Healing]]) -> Event:
    """`keys` repaired on `name` by anti-entropy: from which peers, and how long it took,
    as far as the new exchanges in these snapshots tell."""
    seen: dict[str, Exchange] = {}
    was, now = pairs[name]
    for peer, exchange in now.exchanges.items():  # exchanges it started: keys came in
        if exchange.keys_in and _new(was, peer, exchange):
            seen[peer] = exchange
    for peer, (peer_was, peer_now) in pairs.items():  # exchanges a peer started: keys went out
        exchange = peer_now.exchanges.get(name)
        if peer != name and exchange and exchange.keys_out and _new(peer_was, name, exchange):
            seen.setdefault(peer, exchange)
    text = f"{name}: {_n(keys, 'key')} repaired by anti-entropy"
    if seen:
        text += f" from {', '.join(sorted(seen))}, " \
                f"{_duration(max(e.ms for e in seen.values()))}"
    return Event(text, "ok")


def _new(was: Healing, peer: str, exchange: Exchange) -> bool:
    previous = was.exchanges.get(peer)
    return previous is None or previous.at_ms != exchange.at_ms


def _duration(ms: int) -> str:
    return f"{ms} ms" if ms < 100 else f"{ms / 1000:.1f} s"


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'s' * (count != 1)}"


def _it(count: int) -> str:
    return "it" if count == 1 else "them"


def _them(count: int) -> str:
    return "that write" if count == 1 else "those writes"
