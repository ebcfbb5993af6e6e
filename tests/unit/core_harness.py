"""An in-memory cluster of the pure core: one `Coordinator`, `Replica`s on `MemoryStore`s.

Effects are interpreted exhaustively and delivered at once (persisting is instant), unless
a node is `down` (sends to it fail at once), `silent` (messages to it are held until
`release`), or cut from a peer. Time moves only when a test says so: this is the h11-style
harness for unit tests of the protocol, with no simulator and no IO in between.
"""

from __future__ import annotations

from typing import assert_never

from kvlab.core.coordinator import Coordinator, Quorum
from kvlab.core.membership import Membership
from kvlab.core.messages import REPORTS, Connect, Done, Outcome, Persist, Send, SetTimer
from kvlab.core.replica import Replica, ReplicaConfig
from kvlab.core.ring import Ring
from kvlab.storage.memory import MemoryStore

NODES = ("n1", "n2", "n3", "n4", "n5")
COORD = "p"


class CoreCluster:
    def __init__(self, quorum: Quorum = Quorum(3, 2, 2), nodes: tuple[str, ...] = NODES,
                 config: ReplicaConfig | None = None, vnodes: int = 16, now: int = 1_000_000,
                 hints: bool = True) -> None:
        self.ring = Ring(nodes, vnodes)
        self.config = config or ReplicaConfig(n=quorum.n)
        self.coord = Coordinator(COORD, self.ring, quorum, timeout_ms=1000, hints=hints)
        self.stores = {n: MemoryStore() for n in nodes}
        self.replicas = {n: self._boot(n) for n in nodes}
        self.down: set[str] = set()
        self.silent: set[str] = set()
        self.held: list[tuple[str, Send]] = []
        self.done: dict[int, Outcome] = {}
        self.timers: list[SetTimer] = []
        self.now = now
        self.sent: list[tuple[str, Send]] = []
        self.membership = Membership(self.coord)

    def _boot(self, node: str) -> Replica:
        store = self.stores[node]
        replica = Replica(node, self.ring, self.config, store.get_many)
        replica.load(store.entries(), store.hints())
        return replica

    # -- effects -------------------------------------------------------------------------

    def apply(self, src: str, effects) -> None:
        for effect in effects:
            match effect:
                case Send():
                    self.sent.append((src, effect))
                    self._send(src, effect)
                case SetTimer():
                    self.timers.append(effect)
                case Done():
                    self.done[effect.outcome.op] = effect.outcome
                case Persist():
                    self.stores[src].write(effect)
                    self.apply(src, self.replicas[src].persisted(effect.batch, self.now))
                case Connect():
                    pass  # every node reaches every other here
                case _:
                    assert_never(effect)

    def _send(self, src: str, send: Send) -> None:
        dst = send.node
        if dst in self.down or src in self.down:
            if src == COORD:
                if hasattr(send.message, "req"):
                    self.apply(COORD, self.coord.unreachable(dst, send.message.req, "down",
                                                             self.now))
            elif src in self.replicas:
                self.apply(src, self.replicas[src].unreachable(dst, send.message, self.now))
            return
        if dst in self.silent or src in self.silent:
            self.held.append((src, send))
            return
        self.deliver(src, send)

    def deliver(self, src: str, send: Send) -> None:
        dst = send.node
        if dst == COORD:
            if type(send.message) in REPORTS:
                self.apply(COORD, self.membership.receive(src, send.message, self.now))
            else:
                self.apply(COORD, self.coord.receive(src, send.message, self.now))
        else:
            self.apply(dst, self.replicas[dst].receive(src, send.message, self.now))

    def release(self) -> None:
        held, self.held = self.held, []
        for src, send in held:
            self._send(src, send)

    # -- faults --------------------------------------------------------------------------

    def join(self, node: str) -> None:
        """Start an empty node that knows the current members (as `kvlab add-node` does)."""
        self.stores[node] = MemoryStore()
        replica = Replica(node, self.coord.ring.with_node(node), self.config,
                          self.stores[node].get_many)
        self.replicas[node] = replica

    def crash(self, node: str) -> None:
        self.down.add(node)

    def restart(self, node: str) -> None:
        """Back with its durable store: the replica's memory is rebuilt from it."""
        self.down.discard(node)
        replica = self.replicas[node] = self._boot(node)
        update = self.stores[node].ring()
        if update is not None:  # as a node starts: on the membership it last heard
            self.apply(node, replica.restore(update))

    def wipe(self, node: str) -> None:
        self.stores[node].wipe()

    # -- time ----------------------------------------------------------------------------

    def fire_timers(self) -> None:
        timers, self.timers = self.timers, []
        for t in timers:
            self.now = max(self.now, t.at_ms)
            self.apply(COORD, self.coord.timeout(t.op, self.now))

    def tick(self, ms: int, step: int = 50) -> None:
        """Let `ms` pass, running every replica's timers (up nodes only) as they fall due."""
        end = self.now + ms
        while self.now < end:
            self.now = min(end, self.now + step)
            if self.membership.get_timer() <= self.now:
                self.apply(COORD, self.membership.handle_timer(self.now))
            for t in [t for t in self.timers if t.at_ms <= self.now]:
                self.timers.remove(t)
                self.apply(COORD, self.coord.timeout(t.op, self.now))
            for name, replica in list(self.replicas.items()):
                if name in self.down:
                    continue
                due = replica.get_timer()
                if due <= self.now:
                    self.apply(name, replica.handle_timer(self.now))

    # -- operations ----------------------------------------------------------------------

    def run(self, started) -> Outcome | None:
        op, effects = started
        self.apply(COORD, effects)
        return self.done.get(op)

    def write(self, key: str, value: bytes | None, **kw) -> Outcome | None:
        self.now += 1
        return self.run(self.coord.write(key, value, self.now, **kw))

    def read(self, key: str, **kw) -> Outcome | None:
        self.now += 1
        return self.run(self.coord.read(key, self.now, **kw))

    def write_all(self, keys, tag: bytes = b"v") -> dict[str, bytes]:
        """Write `tag + key` under each key; those acknowledged, with their values."""
        acked = {}
        for key in keys:
            out = self.write(key, tag + key.encode())
            if out is not None and out.status == "ok":
                acked[key] = tag + key.encode()
        return acked

    def finish_change(self, during=None, limit_ms: int = 30_000) -> None:
        """Let time pass (calling `during` every 100 ms) until the membership change ends."""
        waited = 0
        while self.membership.change is not None:
            assert waited < limit_ms, self.membership.view(self.now)["change"]
            if during is not None:
                during()
            self.tick(100)
            waited += 100

    def prefs(self, key: str) -> tuple[str, ...]:
        return self.ring.preference_list(key, self.coord.quorum.n)

    def copies(self, key: str) -> dict[str, object]:
        """What each replica of `key` holds durably (the store, not the replica's memory)."""
        return {n: self.stores[n].get(key) for n in self.prefs(key)}
