"""The kvlab dashboard: the ring, the nodes, one key's replicas, traffic and an event log.

All IO goes through a `ClusterSource` called from workers; workers only post messages, and
the handlers here own the state and set it on the panels ("attributes down, messages up").
The next poll is scheduled only when the previous one has been handled, so a slow cluster
slows the refresh down instead of piling polls up. What each poll changed (states, ring,
repairs) is worked out by the pure `kvlab.tui.changes.changes` and logged here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Footer, Header, Input

from kvlab.tui.changes import changes
from kvlab.tui.progress import caption
from kvlab.tui.screens.help import HelpScreen
from kvlab.tui.source import (
    PAUSED,
    ClusterSource,
    ClusterView,
    KeyView,
    OpResult,
    SourceError,
    TrafficSettings,
    TrafficStats,
)
from kvlab.tui.widgets.events import EventLog
from kvlab.tui.widgets.inspector import KeyInspector
from kvlab.tui.widgets.nodes import NodesPanel
from kvlab.tui.widgets.ring import RingView
from kvlab.tui.widgets.traffic import TrafficPanel

POLL_S = 0.5
INSPECT_S = 1.0
RATES = (10, 25, 50, 100, 200, 500, 1000)
MIXES = (0.8, 0.95, 0.5, 0.2)
ICON = "◆"


class Polled(Message):
    """A snapshot arrived (or `error` says why none did)."""

    def __init__(self, view: ClusterView | None, traffic: TrafficStats,
                 error: str | None = None) -> None:
        super().__init__()
        self.view, self.traffic, self.error = view, traffic, error


class Inspected(Message):
    def __init__(self, view: KeyView) -> None:
        super().__init__()
        self.view = view


class Done(Message):
    """An action finished; `text` goes to the event log, and `select` is a node to select
    once a snapshot shows it (one just added)."""

    def __init__(self, text: str, ok: bool, refresh: bool = True,
                 select: str | None = None) -> None:
        super().__init__()
        self.text, self.ok, self.refresh, self.select = text, ok, refresh, select


def _panel(id: str, title: str) -> Vertical:
    """A bordered panel with its title in the border."""
    panel = Vertical(id=id, classes="panel")
    panel.border_title = title
    return panel


class KvlabApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "kvlab"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("slash", "focus_key", "Key", key_display="/", show=False),
        Binding("k", "chaos('kill')", "Kill"),
        Binding("p", "chaos('pause')", "Pause"),
        Binding("r", "chaos('restart')", "Restart"),
        Binding("P", "restart_proxy", "Restart proxy", show=False),
        Binding("x", "partition", "Cut/Heal"),
        Binding("a", "add_node", "Add"),
        Binding("X", "remove_node", "Remove"),
        Binding("t", "toggle_traffic", "Traffic"),
        Binding("g", "read_key", "Read"),
        Binding("u", "write_key", "Write"),
        Binding("plus,equals_sign", "rate(1)", "Rate+", show=False),
        Binding("minus", "rate(-1)", "Rate-", show=False),
        Binding("m", "mix", "Mix", show=False),
        Binding("R", "quorum('r')", "R", show=False),
        Binding("W", "quorum('w')", "W", show=False),
        *[Binding(str(i), f"pick({i})", f"n{i}", show=False) for i in range(1, 10)],
    ]

    def __init__(self, source: ClusterSource, *, clock: Callable[[], float] = time.time,
                 poll_s: float = POLL_S, inspect_s: float = INSPECT_S) -> None:
        super().__init__()
        self.source = source
        self.clock = clock
        self.poll_s = poll_s
        self.inspect_s = inspect_s
        self.view: ClusterView | None = None
        self.key = ""
        self.traffic = TrafficSettings()
        self._poll_timer: Timer | None = None
        self._inspect_timer: Timer | None = None
        self._closed = False
        self._writes = 0
        self._select_when_seen: str | None = None  # a node just added, to select

    # -- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(icon=ICON)
        with Horizontal(id="top"):
            with _panel("ring-panel", "ring"):
                yield RingView(id="ring")
                yield Input(placeholder="/ type a key, Enter inspects", id="key",
                            compact=True)
            with Vertical(id="right"):
                with _panel("nodes-panel", "nodes"):
                    yield NodesPanel(id="nodes")
                with _panel("inspector-panel", "key inspector"):
                    yield KeyInspector(id="inspector")
        with Horizontal(id="bottom"):
            with _panel("traffic-panel", "traffic"):
                yield TrafficPanel(id="traffic")
            with _panel("events-panel", "events"):
                yield EventLog(clock=self.clock, id="events")
        yield Footer(show_command_palette=False)

    @property
    def events(self) -> EventLog:
        return self.query_one(EventLog)

    @property
    def nodes(self) -> NodesPanel:
        return self.query_one(NodesPanel)

    @property
    def selected(self) -> str | None:
        return self.nodes.selected

    def on_mount(self) -> None:
        self.nodes.focus()
        self._poll()

    # -- polling ------------------------------------------------------------------------

    def poll_now(self) -> None:
        """Refresh at once (after an action) instead of at the next tick."""
        if self._poll_timer is not None:
            self._poll_timer.stop()
        self._poll()

    @work(exclusive=True, group="poll", exit_on_error=False)
    async def _poll(self) -> None:
        try:
            view = await self.source.snapshot()
        except Exception as exc:  # shown, and polling carries on: the cluster may come back
            self.post_message(Polled(None, self.source.traffic_stats(), str(exc)))
        else:
            self.post_message(Polled(view, self.source.traffic_stats()))

    @property
    def _gone(self) -> bool:
        """Shutting down: a worker's message may still arrive after the panels are gone
        (Textual prunes the screens before the app stops dispatching)."""
        return self._closed or not self.is_running

    @on(Polled)
    def _on_polled(self, message: Polled) -> None:
        if self._gone:
            return
        if message.view is not None:
            self._show(message.view)
        elif message.error:
            self.sub_title = f"no cluster: {message.error}"
        self.query_one(TrafficPanel).stats = message.traffic
        if self._poll_timer is not None:
            self._poll_timer.stop()
        self._poll_timer = self.set_timer(self.poll_s, self._poll)

    def _show(self, view: ClusterView) -> None:
        previous, self.view = self.view, view
        if previous is None:
            self.events.add(f"watching cluster {view.name}: {len(view.nodes)} nodes, "
                            f"N={view.n} R={view.r} W={view.w}, {view.vnodes} vnodes each")
        else:
            self._log_changes(previous, view)
        self.sub_title = (f"cluster {view.name} · N={view.n} R={view.r} W={view.w} · "
                          f"proxy {view.proxy_state}")
        self.query_one(RingView).view = view
        self.query_one(TrafficPanel).quorum = (view.r, view.w)
        nodes = self.nodes
        nodes.view = view
        self._keep_selection(previous, view)
        self._title_nodes()
        self._title_ring(view)

    def _keep_selection(self, previous: ClusterView | None, view: ClusterView) -> None:
        """Select the first node at the start, a node just added once it shows, and the
        next one down when the selected node left."""
        nodes, names = self.nodes, [n.name for n in view.nodes]
        if not names:
            return
        if self._select_when_seen in names:
            nodes.select(self._select_when_seen)
            self._select_when_seen = None
        elif nodes.selected is None:
            nodes.selected = names[0]
        elif nodes.selected not in names:
            before = [n.name for n in previous.nodes] if previous else []
            index = before.index(nodes.selected) if nodes.selected in before else 0
            nodes.select(names[min(index, len(names) - 1)])

    def _log_changes(self, before: ClusterView, after: ClusterView) -> None:
        for event in changes(before, after):
            self.events.add(event.text, event.level)

    def _title_nodes(self) -> None:
        """Which node the keys act on, and whom it holds hints for (the column's total,
        by target)."""
        panel = self.query_one("#nodes-panel")
        selected = self.view.node(self.selected) if self.view and self.selected else None
        if selected is None:
            panel.border_subtitle = ""
            return
        title = f"keys act on {selected.name}"
        if selected.healing is not None and selected.healing.hints_held:
            held = selected.healing.hints_held
            title += " · hints for " + ", ".join(f"{t} {held[t]:,}" for t in sorted(held))
        panel.border_subtitle = title

    def _title_ring(self, view: ClusterView) -> None:
        """The change in progress in the ring panel's border, where it shows even while a
        key takes the middle of the ring: what it does, how far it got, the time left."""
        self.query_one("#ring-panel").border_subtitle = \
            caption(view.change) if view.change else ""

    @on(NodesPanel.Selected)
    def _on_selected(self, message: NodesPanel.Selected) -> None:
        self._title_nodes()

    def action_pick(self, number: int) -> None:
        self.nodes.select(f"n{number}")

    # -- chaos --------------------------------------------------------------------------

    def action_chaos(self, action: str) -> None:
        node = self.selected
        if node is None:
            return
        if action == "pause" and self.view and self.view.states.get(node) == PAUSED:
            action = "resume"
        signal = {"kill": " (SIGKILL)", "pause": " (SIGSTOP)", "resume": " (SIGCONT)"}
        self.events.add(f"{action} {node}{signal.get(action, '')}", "action")
        past = {"kill": "killed", "pause": "paused", "resume": "resumed",
                "restart": "restarted"}[action]
        self._act(f"{action} {node}", lambda: getattr(self.source, action)(node),
                  lambda _: f"{node} {past}")

    def action_restart_proxy(self) -> None:
        self.events.add("restart the proxy (the nodes keep running)", "action")
        self._act("restart the proxy", self.source.restart_proxy,
                  lambda _: "proxy restarted")

    def action_partition(self) -> None:
        node = self.selected
        if node is None:
            return
        if self.view is not None and node in self.view.partitioned:
            self.events.add(f"heal the link proxy ↔ {node}", "action")
            self._act(f"heal {node}", lambda: self.source.partition(node, on=False),
                      lambda _: f"{node} healed: the proxy reaches it again")
        else:
            self.events.add(f"cut the link proxy ⌁ {node} (both ways)", "action")
            self._act(f"cut {node}", lambda: self.source.partition(node, on=True),
                      lambda _: f"{node} cut off: its replicas will time out")

    def action_add_node(self) -> None:
        self.events.add("add a node", "action")
        self._act("add a node", self.source.add_node, lambda node: f"{node} added to the ring",
                  select=True)

    def action_remove_node(self) -> None:
        node = self.selected
        if node is None:
            return
        self.events.add(f"remove {node} from the ring and stop it", "action")
        self._act(f"remove {node}", lambda: self.source.remove_node(node),
                  lambda _: f"{node} removed")

    @work(group="chaos", exit_on_error=False)
    async def _act(self, what: str, call: Callable[[], Awaitable[object]],
                   done: Callable[[object], str], select: bool = False) -> None:
        """Run one chaos call; `done(its result)` is the event log's line on success, and
        with `select` the result is a node to select."""
        try:
            result = await call()
        except Exception as exc:  # whatever went wrong, the event log says so
            self.post_message(Done(f"{what} failed: {exc}", ok=False))
        else:
            self.post_message(Done(done(result), ok=True,
                                   select=str(result) if select else None))

    @on(Done)
    def _on_done(self, message: Done) -> None:
        if self._gone:
            return
        self.events.add(message.text, "ok" if message.ok else "error")
        if message.select:
            self._select_when_seen = message.select
        if message.refresh:
            self.poll_now()
            if self.key:
                self._inspect(self.key)

    # -- the key ------------------------------------------------------------------------

    def action_focus_key(self) -> None:
        self.query_one("#key", Input).focus()

    @on(Input.Changed, "#key")
    def _on_key_typed(self, event: Input.Changed) -> None:
        # Placing the key on the ring is pure computation: do it as the user types.
        self.query_one(RingView).key = event.value.strip()

    @on(Input.Submitted, "#key")
    def _on_key_submitted(self, event: Input.Submitted) -> None:
        self.inspect_key(event.value.strip())
        self.nodes.focus()

    def key_typed(self, key: str) -> None:
        """What typing `key` in the box does (for scripts and tests)."""
        self.query_one("#key", Input).value = key
        self.query_one(RingView).key = key

    def inspect_key(self, key: str) -> None:
        self.key = key
        self.query_one(RingView).key = key
        inspector = self.query_one(KeyInspector)
        inspector.key = key
        self.query_one("#inspector-panel").border_title = \
            f"key inspector: {key}" if key else "key inspector"
        if self._inspect_timer is not None:
            self._inspect_timer.stop()
        if key:
            self.events.add(f"inspect {key}", "action")
            self._inspect(key)

    @work(exclusive=True, group="inspect", exit_on_error=False)
    async def _inspect(self, key: str) -> None:
        try:
            view = await self.source.inspect(key)
        except Exception as exc:  # shown in the panel; the next tick tries again
            view = KeyView(key, error=str(exc))
        self.post_message(Inspected(view))

    @on(Inspected)
    def _on_inspected(self, message: Inspected) -> None:
        if self._gone or message.view.key != self.key:
            return
        self.query_one(KeyInspector).view = message.view
        if self._inspect_timer is not None:
            self._inspect_timer.stop()
        self._inspect_timer = self.set_timer(self.inspect_s, lambda: self._inspect(self.key))

    def action_read_key(self) -> None:
        if self._need_key():
            self.events.add(f"read {self.key} (a read repairs stale replicas)", "action")
            self._op(lambda: self.source.read(self.key))

    def action_write_key(self) -> None:
        if self._need_key():
            self._writes += 1
            value = f"value-{self._writes}"
            self.events.add(f"write {self.key} = {value!r}", "action")
            self._op(lambda: self.source.write(self.key, value))

    def _need_key(self) -> bool:
        if not self.key:
            self.events.add("no key yet: press / and type one", "warn")
        return bool(self.key)

    @work(group="ops", exit_on_error=False)
    async def _op(self, call: Callable) -> None:
        try:
            result: OpResult = await call()
        except Exception as exc:
            self.post_message(Done(f"failed: {exc}", ok=False))
        else:
            self.post_message(Done(result.text, result.ok))

    # -- traffic ------------------------------------------------------------------------

    def action_toggle_traffic(self) -> None:
        running = self.source.traffic_stats().running
        self._traffic(None if running else self.traffic)

    def _retune(self, **changes: object) -> None:
        self.traffic = replace(self.traffic, **changes)
        if self.source.traffic_stats().running:
            self._traffic(self.traffic)
        else:
            self.query_one(TrafficPanel).stats = replace(self.source.traffic_stats(),
                                                         settings=self.traffic)

    def action_rate(self, step: int) -> None:
        index = RATES.index(self.traffic.rate) if self.traffic.rate in RATES else 3
        self._retune(rate=RATES[max(0, min(len(RATES) - 1, index + step))])

    def action_mix(self) -> None:
        index = MIXES.index(self.traffic.read_fraction) \
            if self.traffic.read_fraction in MIXES else -1
        self._retune(read_fraction=MIXES[(index + 1) % len(MIXES)])

    def action_quorum(self, which: str) -> None:
        n = self.view.n if self.view else 3
        options = [None, *range(1, n + 1)]
        current = getattr(self.traffic, which)
        self._retune(**{which: options[(options.index(current) + 1) % len(options)]
                        if current in options else None})

    @work(exclusive=True, group="traffic", exit_on_error=False)
    async def _traffic(self, settings: TrafficSettings | None) -> None:
        try:
            if settings is None:
                await self.source.stop_traffic()
                text = "traffic stopped"
            else:
                await self.source.start_traffic(settings)
                r = settings.r or (self.view.r if self.view else "default")
                w = settings.w or (self.view.w if self.view else "default")
                text = (f"traffic: {settings.rate} ops/s, {settings.read_fraction:.0%} reads, "
                        f"R={r} W={w}")
        except SourceError as exc:
            self.post_message(Done(f"traffic failed: {exc}", ok=False, refresh=False))
        else:
            self.post_message(Done(text, ok=True, refresh=False))

    # -- help and quitting --------------------------------------------------------------

    def action_help(self) -> None:
        view = self.view
        n, r, w = (view.n, view.r, view.w) if view else (3, 2, 2)
        self.push_screen(HelpScreen(n, r, w, self.traffic.r, self.traffic.w))

    async def action_quit(self) -> None:
        await self.shutdown()
        self.exit()

    async def shutdown(self) -> None:
        """Stop polling and traffic and close the source's connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for timer in (self._poll_timer, self._inspect_timer):
            if timer is not None:
                timer.stop()
        self.workers.cancel_all()
        await self.source.close()

    async def on_unmount(self) -> None:
        await self.shutdown()


def make_app(source: ClusterSource, *, clock: Callable[[], float] = time.time,
             poll_s: float = POLL_S, inspect_s: float = INSPECT_S) -> KvlabApp:
    """The dashboard over `source`; the CLI, the tests and the screenshot script use this."""
    return KvlabApp(source, clock=clock, poll_s=poll_s, inspect_s=inspect_s)

