"""A data node: one `Replica` over its SQLite store, driven over real sockets.

    python -m kvlab.net.node --name n1 --port 8001 --data DIR \\
        --peer n2=http://127.0.0.1:8002 --peer n3=http://127.0.0.1:8003

The node decides nothing itself: it hands what arrives to the replica (`kvlab.core.replica`)
and carries out the effects it returns: `Send` a message, `Persist` a batch, `Connect` to
the peers the ring now has (and to no others). The ring comes from the committer (the
proxy), which tells the node on every connection; it is kept in the store, and a restart
starts from it rather than from `--peer` (which only says where the first peers are).
Routes:

- `GET /replica`: the replica channel, a WebSocket of msgpack frames (`kvlab.net.codec`).
  A coordinator (the proxy) connects without parameters and gets a name of its own per
  connection, so replies go back on the socket the requests came in on. A peer node connects
  as `/replica?from=<its name>`; what this node sends a peer goes on its own outgoing link
  to that peer (`kvlab.net.link.PeerLink`), never back on the peer's socket. The replica
  ignores what a node that is not its peer (under the ring it holds) sends.
- `GET /health`, `GET /stats` (counters, and the replica's healing figures), `GET /metrics`
  (the same figures for Prometheus: `kvlab.net.metrics`).

Given the cluster's secret (`KVLAB_SECRET`, see `kvlab.net.auth`), the node asks it (or a
proof of it made for its port) of every request but `/health` and `/metrics`, the channel's
before its upgrade, and shows its own links to its peers a proof.

A database found damaged (`kvlab.storage.sqlite.is_corruption`: not a database, a bad page)
ends the node with status 3, after it wrote why in `failed.json` next to the database: at
start (before it listens), or at run time, when it first stops taking replica traffic and
closes its channels with a reason (a node that went on would fail the same reads again and
again, and a restart would find the same pages). `kvlab wipe NODE` removes both, and
anti-entropy refills the node.

At start the replica is given what the store holds: every key's version, in its hash trees.
A clean stop keeps that index next to the database, and the next start takes it back if
nothing was written since (`SqliteStore.take_index`), instead of reading every row (4.5 s
with a million keys; after a crash it still does).

Each frame is given to the replica whole, so its writes share one `Persist`. A Persist goes
to the store's writer thread without waiting: frames that arrive during a commit join the
next one, and the acknowledgements go out when the replica hears it is durable. The
replica's own deadlines (hint replay, anti-entropy, purges) run on one loop timer, set to
`get_timer()` after every call into the replica.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, assert_never

import aiohttp
import msgspec
import orjson
from aiohttp import WSMsgType, web

from kvlab.client import protocol
from kvlab.client.protocol import HealingInfo, HealthInfo, NodeRingInfo, NodeStats, PeerInfo
from kvlab.core.messages import Connect, Message, Persist, ReplicaEffect, Send
from kvlab.core.replica import HOUR_MS, Replica, ReplicaConfig
from kvlab.core.ring import DEFAULT_VNODES, Ring
from kvlab.core.topology import Topology
from kvlab.core.version import MAX_AHEAD_MS
from kvlab.net import codec
from kvlab.net.args import name_url, on_off
from kvlab.net.auth import MESSAGE, UNAUTHORIZED, Guard, answer, secret_from_env
from kvlab.net.framing import MAX_FRAME, FrameWriter
from kvlab.net.link import PeerLink
from kvlab.net.runner import serve
from kvlab.storage.sqlite import SqliteStore, is_corruption

if TYPE_CHECKING:
    from kvlab.net.metrics import Exposition

logger = logging.getLogger(__name__)

# A coordinator connection's name, as the replica knows it: unique per connection, and
# never a node's name (a node name with '#' is refused).
COORDINATOR = "coordinator#"
# The replica can no longer be trusted to match its store (it raised half-way): stop, so
# a restart rebuilds it from the store, rather than acknowledge what was never stored.
EXIT_REPLICA_FAILED = 70
# The database can't be used (damaged): FAILED_FILE says why. Not 1,
# which Python's own errors use, so the supervisor can tell "recover by wiping" apart.
EXIT_STORE_FAILED = 3
FAILED_FILE = "failed.json"
# The channels' close code when the node gives up on its store (RFC 6455: internal error).
CLOSE_STORE_FAILED = 1011


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Node:
    """One node process: the replica, its store, and the channels; interprets effects."""

    def __init__(self, name: str, store: SqliteStore, peers: dict[str, str],
                 config: ReplicaConfig, vnodes: int = DEFAULT_VNODES,
                 secret: str | None = None) -> None:
        self.name = name
        self.secret = secret  # asked of every connection, shown to every peer (kvlab.net.auth)
        self.store = store
        self.peer_urls = dict(peers)  # peer -> where it listens (kept up to date by Connect)
        began = time.perf_counter()
        # The membership this node was last told, if any, is the one it starts from: the
        # cluster may have changed since its command line was written.
        update = store.ring()
        ring = Ring((name, *peers), vnodes) if update is None else Topology.of(update).ring
        self.replica = Replica(name, ring, config, store.get_many)
        # The index the node kept when it last stopped, if nothing was written since: a
        # million keys read from the rows took 4.5 s (see SqliteStore.take_index).
        index = store.take_index()
        self.indexed = index is not None and self.replica.undump(index)
        self.replica.load(() if self.indexed else store.entries(), store.hints())
        self._restored = [] if update is None else self.replica.restore(update)
        self.load_s = time.perf_counter() - began
        self.started = time.time()
        self.links: dict[str, PeerLink] = {}
        self.coordinators: dict[str, FrameWriter[Message]] = {}
        self.channels: set[web.WebSocketResponse] = set()
        self.last_error: str | None = None
        self.dropped = 0  # replies for a coordinator whose connection had gone
        self._connections = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._stopped = False
        self.failed: str | None = None  # why the node gave up on its store, if it did
        self._store_failed = False  # a batch failed to commit: the index is not kept then
        self._session: aiohttp.ClientSession | None = None
        self._closing: set[asyncio.Task] = set()  # links to former peers being stopped
        self._exposition: Exposition | None = None  # made at the first scrape

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        if self._restored:  # the stored membership says who the peers are
            self._apply(self._restored, now_ms())
            self._restored = []
        else:
            for peer, url in self.peer_urls.items():
                self._open(peer, url)
        self._arm()  # at once: the replica's first handle_timer starts its periodic work

    async def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for link in self.links.values():
            await link.stop()
        if self._closing:
            await asyncio.gather(*self._closing)
        index = await self._index()
        if self._session is not None:
            await self._session.close()
        self.store.close(index)  # commits what is queued

    async def _index(self) -> bytes | None:
        """The replica's index for the next start, if it matches the store, else None.

        Nothing new comes in by now (channels and links are closed, the timer is off), so
        once the writer has committed what is queued and the replica has heard about every
        batch (`settled`), what it holds is what the store holds. A batch that failed is
        undone by the replica, but the index is not kept after one: the scan is the safe
        way to start then.
        """
        try:
            await asyncio.wait_for(self.store.flush(), 5.0)
        except asyncio.TimeoutError:
            return None
        if self.failed is not None or self._store_failed or not self.replica.settled():
            return None
        began = time.perf_counter()
        index = self.replica.dump()
        logger.info("index of %d keys made in %.2fs", self.replica.key_count(),
                    time.perf_counter() - began)
        return index

    def connection_name(self) -> str:
        self._connections += 1
        return f"{COORDINATOR}{self._connections}"

    # -- into the replica -------------------------------------------------------------------

    def receive(self, src: str, messages: Sequence[Message]) -> None:
        """A frame from `src`: its messages go to the replica together."""
        if self.failed is not None:
            return  # giving up on the store: nothing more is answered
        now = now_ms()
        try:
            effects = self.replica.receive_many(src, messages, now)
        except Exception as exc:
            return self._fatal("receive", exc)
        self._apply(effects, now)
        self._arm()

    def _fire(self) -> None:
        self._timer, self._timer_at = None, None
        now = now_ms()
        try:
            effects = self.replica.handle_timer(now)
        except Exception as exc:
            return self._fatal("handle_timer", exc)
        self._apply(effects, now)
        self._arm()

    def _persisted(self, batch: int, future: asyncio.Future[int]) -> None:
        now = now_ms()
        error = "cancelled" if future.cancelled() else future.exception()
        if self.failed is not None:
            return
        if isinstance(error, Exception) and is_corruption(error):
            return self._give_up(error)
        try:
            if error is None:
                effects = self.replica.persisted(batch, now)
            else:  # nothing of the batch is durable: the replica undoes it and says so
                self.last_error = f"storage: {error}"
                self._store_failed = True
                effects = self.replica.persist_failed(batch, str(error), now)
        except Exception as exc:
            return self._fatal("persisted", exc)
        self._apply(effects, now)
        self._arm()

    def _arm(self) -> None:
        """Re-arm the timer after a call into the replica (get_timer costs ~0.2 µs)."""
        if not self._stopped:
            self._rearm()

    def _rearm(self) -> None:
        """One loop timer at the replica's next deadline (moved only when it changes)."""
        at = self.replica.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        # +1 ms: the loop's clock may fire a timer up to a millisecond early, and a call
        # before the deadline would only re-arm the same timer.
        delay = max(0.0, (at - now_ms() + 1) / 1000)
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fatal(self, where: str, exc: Exception) -> None:
        """The replica raised: exit at once, or, if it was the store saying it is damaged
        (the replica reads values through it), give up on the store (and return)."""
        if is_corruption(exc):
            return self._give_up(exc)
        logger.critical("replica failed in %s; exiting so a restart reloads it from the "
                        "store", where, exc_info=exc)
        logging.shutdown()
        os._exit(EXIT_REPLICA_FAILED)

    def _give_up(self, error: Exception) -> None:
        """The store is damaged: answer nothing more, say why, close the channels, exit 3.

        The channels are closed with a code and a reason rather than left to reset, and
        new ones are refused, so the proxy and the peers see the node go, and go down.
        """
        if self.failed is not None:
            return
        self.failed = f"database {self.store.path}: {error}"
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        logger.critical("giving up on the store: %s", self.failed)
        asyncio.get_running_loop().create_task(self._leave())  # first: the write may fail
        try:
            write_failed(Path(self.store.path).parent, self.failed)
        except OSError:  # a disk that damages a database may be read-only or full by now
            logger.exception("could not write %s", FAILED_FILE)

    async def _leave(self) -> None:
        reason = self.failed.encode()[:123] if self.failed else b""  # a close reason's limit
        closing = [ws.close(code=CLOSE_STORE_FAILED, message=reason) for ws in self.channels]
        closing += [link.stop() for link in self.links.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 2.0)
        finally:
            logging.shutdown()
            os._exit(EXIT_STORE_FAILED)

    # -- out of the replica -----------------------------------------------------------------

    def _apply(self, effects: Iterable[ReplicaEffect], now: int) -> None:
        coordinators = self.coordinators
        for effect in effects:
            # Replies to a coordinator are nearly every effect: they go back on the socket
            # their request came in on, with a dictionary lookup and no match.
            if effect.__class__ is Send:
                writer = coordinators.get(effect.node)  # type: ignore[union-attr]
                if writer is not None:
                    writer.push(effect.message)  # type: ignore[union-attr]
                    continue
            match effect:
                case Send():  # to a peer (a reply to a coordinator went above)
                    self._send(effect.node, effect.message, now)
                case Persist():
                    future = self.store.submit(effect)
                    future.add_done_callback(partial(self._persisted, effect.batch))
                case Connect():
                    self._connect(effect.peers)
                case _:
                    assert_never(effect)

    def _connect(self, peers: dict[str, str]) -> None:
        """Keep a link to each of `peers` (at its address; none given: the one known), and
        none to any other node."""
        for peer, address in peers.items():
            url = (address or self.peer_urls.get(peer, "")).rstrip("/")
            if not url:
                continue  # nowhere to reach it yet; a later ring will say where
            self.peer_urls[peer] = url
            link = self.links.get(peer)
            if link is not None and link.url == url:
                continue
            if link is not None:  # it moved: reach it where it listens now
                self._close(peer)
            self._open(peer, url)
        for peer in [p for p in self.links if p not in peers]:
            self._close(peer)
        self.peer_urls = {p: u for p, u in self.peer_urls.items() if p in peers}

    def _open(self, peer: str, url: str) -> None:
        assert self._session is not None
        link = PeerLink(peer, url, self._session, sender=self.name, secret=self.secret)
        self.links[peer] = link
        link.start()

    def _close(self, peer: str) -> None:
        task = asyncio.get_running_loop().create_task(self.links.pop(peer).stop())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _send(self, dst: str, message: Message, now: int) -> None:
        """A message for a peer (on its link), or for a coordinator gone."""
        link = self.links.get(dst)
        if link is not None and link.send(message):
            return
        if dst.startswith(COORDINATOR):
            self.dropped += 1  # its connection is gone, and the coordinator failed its ops
        else:
            try:
                effects = self.replica.unreachable(dst, message, now)
            except Exception as exc:
                return self._fatal("unreachable", exc)
            self._apply(effects, now)

    # -- views ------------------------------------------------------------------------------

    def metrics(self, accept: str) -> tuple[bytes, str]:
        """The Prometheus exposition of this node and its content type."""
        from kvlab.net import metrics  # at the first scrape (see kvlab.net.metrics)

        if self._exposition is None:
            self._exposition = metrics.Exposition(metrics.NodeCollector(self))
        return self._exposition.render(accept)

    def stats(self) -> NodeStats:
        now = now_ms()
        replica, store = self.replica, self.store
        healing = replica.snapshot(now)
        return NodeStats(
            node=self.name,
            pid=os.getpid(),
            keys=replica.live_keys(),  # live keys (the store would have to scan)
            reads=replica.stats.reads,
            writes=replica.stats.writes,  # write requests taken (not superseded/refused)
            stored=store.writes,  # records stored, repairs included
            batches=store.batches,
            commits=store.commits,
            uptime_s=round(time.time() - self.started, 3),
            load_s=round(self.load_s, 3),
            indexed=self.indexed,  # loaded from the index kept at the last stop
            last_error=self.last_error,
            held=replica.key_count(),  # keys the replica holds, tombstones included
            hints_held=sum(healing["hints_held"].values()),
            ring=NodeRingInfo(nodes=list(replica.ring.nodes), vnodes=replica.ring.vnodes,
                              replicas=replica.config.n, version=replica.topology.version,
                              pending=None if replica.topology.pending is None
                              else list(replica.topology.pending.nodes)),
            peers={name: PeerInfo(url=link.url, state=link.state, sent=link.sent,
                                  connects=link.connects, errors=link.errors,
                                  last_error=link.last_error)
                   for name, link in self.links.items()},
            coordinators=len(self.coordinators),
            healing=msgspec.convert(healing, HealingInfo),
        )


NODE = web.AppKey("node", Node)


async def health(request: web.Request) -> web.Response:
    node = request.app[NODE]
    if node.failed is not None:
        return _typed(HealthInfo(status="failed", node=node.name, pid=os.getpid(),
                                 reason=node.failed), status=503)
    return _typed(HealthInfo(status="ok", node=node.name, pid=os.getpid(),
                             peers={n: link.state for n, link in node.links.items()}))


async def stats(request: web.Request) -> web.Response:
    return _typed(request.app[NODE].stats())


def _typed(answer: msgspec.Struct, status: int = 200) -> web.Response:
    """An answer encoded from its type in `kvlab.client.protocol`."""
    return web.Response(body=protocol.encode(answer), status=status,
                        content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[NODE].metrics(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def replica_channel(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    if node.failed is not None:  # about to exit: no new channel that would only close again
        raise web.HTTPServiceUnavailable(text=node.failed)
    peer = request.query.get("from")
    # Any node may connect: whether its messages are taken is the replica's call (peers of
    # its ring only), and the ring changes. Refusing strangers here made a node that had
    # just joined retry its links to the others with backoff, and the stream acks it sent
    # in the meantime were lost (each cost the source a 5 s time-out).
    if peer is not None and (not peer or "#" in peer):
        raise web.HTTPForbidden(text=f"{peer!r} is not a node name ('#' is kept for "
                                     f"coordinator connections)")
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, autoping=True)
    await ws.prepare(request)
    presented = request.headers.get("Authorization", "")
    if node.secret is not None and presented[:6].lower() == "kvlab ":
        # Before any frame: a link takes nothing from a channel that has not answered.
        await ws.send_str(answer(node.secret, presented))
    node.channels.add(ws)
    if peer is None:
        src = node.connection_name()
        writer: FrameWriter[Message] | None = FrameWriter(
            ws, codec.encode, codec.weight, heavy=codec.HEAVY, light=codec.LIGHT)
        node.coordinators[src] = writer
    else:
        src, writer = peer, None
    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            try:
                messages = codec.decode(msg.data)
            except ValueError as exc:
                node.last_error = f"bad frame from {src}: {exc}"
                await ws.close(code=1003, message=b"malformed frame")
                break
            node.receive(src, messages)
    finally:
        node.channels.discard(ws)
        if writer is not None:
            del node.coordinators[src]
            writer.cancel()
    return ws


async def _close_channels(app: web.Application) -> None:
    # On SIGTERM, end the long-lived replica channels at once: otherwise shutdown waits for
    # them until its timeout, and every restart or `kvlab down` takes a second longer.
    for ws in list(app[NODE].channels):
        await ws.close(code=1001, message=b"node shutting down")


async def _run_node(app: web.Application):
    node = app[NODE]
    await node.start()
    yield
    await node.stop()


# Open to anyone: readiness and metrics. The channel, and what the node holds, need the
# cluster's secret (an unauthenticated peer could give it a ring, order streams, write).
OPEN_ROUTES = frozenset({"/health", "/metrics"})


def _authorized(guard: Guard):
    @web.middleware
    async def authorized(request: web.Request, handler) -> web.StreamResponse:
        # Before any handler, so a channel without the secret is refused before its upgrade.
        if request.path not in OPEN_ROUTES \
                and not guard.allows(request.headers.get("Authorization")):
            return web.json_response({"error": "unauthorized", "message": MESSAGE},
                                     status=401, headers=UNAUTHORIZED)
        return await handler(request)
    return authorized


def make_app(node: Node, port: int) -> web.Application:
    """The node's routes, served on `port` (what a proof of the secret must name); made
    right before the node listens (a proof made earlier is refused)."""
    app = web.Application(
        middlewares=[] if node.secret is None else [_authorized(Guard(node.secret, port))])
    app[NODE] = node
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/replica", replica_channel)
    app.cleanup_ctx.append(_run_node)
    app.on_shutdown.append(_close_channels)
    return app


# -- command line -------------------------------------------------------------------------


def write_failed(data_dir: Path, reason: str) -> None:
    """`data_dir/failed.json`: why the node gave up on its database, and since when."""
    path = data_dir / FAILED_FILE
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as out:  # replaced whole: a reader never sees half of it
        out.write(orjson.dumps({"reason": reason, "since": int(time.time())}))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def open_node(args: argparse.Namespace, peers: dict[str, str], config: ReplicaConfig
              ) -> Node:
    """The node over its database; exits with EXIT_STORE_FAILED if the database is damaged
    (after writing FAILED_FILE)."""
    path = args.data / "data.db"
    try:
        store = SqliteStore(path, durable=args.durability == "fsync")
        store.check()
        node = Node(args.name, store, peers, config, args.vnodes, secret_from_env())
        (args.data / FAILED_FILE).unlink(missing_ok=True)  # repaired by hand, say
        return node
    except sqlite3.DatabaseError as exc:
        # A lock held by another program, a full disk, no file descriptor or permission left
        # (SQLite's CANTOPEN): no reason to wipe the node, so they end it as any other
        # error does.
        if not is_corruption(exc):
            raise
        reason = f"database {path}: {exc}"
    write_failed(args.data, reason)
    print(f"node {args.name}: {reason} (exit {EXIT_STORE_FAILED}; recover: kvlab wipe "
          f"{args.name})", file=sys.stderr, flush=True)
    sys.exit(EXIT_STORE_FAILED)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _mb_per_s(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MB per second, got {text!r}") from None
    if not 0 <= value < float("inf"):  # NaN neither
        raise argparse.ArgumentTypeError(f"expected MB per second >= 0, got {text!r}")
    return value


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kvlab.net.node",
        description="Run one kvlab data node: a replica of its keys, which heals itself and "
                    "its peers (hinted handoff, anti-entropy, safe tombstone purge).",
        epilog="The first ring is --name plus every --peer, placed with --vnodes and "
               "--replicas: give every node and the proxy the same nodes, --vnodes and "
               "--replicas. From then on the proxy says what the ring is (on connecting, "
               "and at each step of a membership change); the node keeps it in its "
               "database and starts from it next time, whatever --peer says.")
    p.add_argument("--name", required=True, help="this node's name in the ring")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, required=True, help="port to listen on")
    p.add_argument("--data", type=Path, required=True,
                   help="folder for the database (created if missing)")
    p.add_argument("--durability", choices=("fsync", "none"), default="fsync",
                   help="fsync every commit (default), or never (fast, loses writes on a "
                        "power cut)")
    p.add_argument("--peer", type=name_url, action="append", default=[], metavar="NAME=URL",
                   help="another node and its base URL, e.g. n2=http://127.0.0.1:8002 "
                        "(repeat for each; none: the node works alone)")
    p.add_argument("--replicas", type=int, default=3, metavar="N",
                   help="replicas per key, as the proxy's --replicas (default 3)")
    p.add_argument("--vnodes", type=int, default=DEFAULT_VNODES,
                   help=f"virtual nodes per node, as the proxy's (default {DEFAULT_VNODES})")
    p.add_argument("--tombstone-grace", type=_seconds, default=86_400.0, metavar="SECONDS",
                   help="a delete's tombstone is purged no sooner than this (with hints on, "
                        "nor before --hint-window plus --max-clock-ahead), and only once "
                        "every replica is known to hold it (default 86400)")
    p.add_argument("--hints", type=on_off, default=True, metavar="on|off",
                   help="keep hints for nodes that missed writes, and replay them (default on)")
    p.add_argument("--hint-window", type=_seconds, default=3 * HOUR_MS / 1000,
                   metavar="SECONDS",
                   help="hints older than this are dropped; anti-entropy repairs the rest "
                        "(default 10800)")
    p.add_argument("--anti-entropy", type=on_off, default=True, metavar="on|off",
                   help="compare hash trees with the other replicas and repair differences; "
                        "off: tombstones are never purged either (default on)")
    p.add_argument("--anti-entropy-interval", type=_seconds, default=5.0, metavar="SECONDS",
                   help="how often each (range, peer) pair is compared from this side "
                        "(default 5)")
    p.add_argument("--max-clock-ahead", type=_seconds, default=MAX_AHEAD_MS / 1000,
                   metavar="SECONDS",
                   help="refuse writes stamped further than this ahead of this node's clock "
                        f"(default {MAX_AHEAD_MS // 1000})")
    p.add_argument("--stream-rate", type=_mb_per_s, default=0.0, metavar="MB/S",
                   help="cap on how fast this node streams ranges to a new owner during a "
                        "membership change, in MB (10^6 bytes) per second; 0: as fast as "
                        "the new owner stores them (default 0)")
    return p


def config_from(args: argparse.Namespace) -> ReplicaConfig:
    """The replica's configuration from the command line (ValueError if it is wrong)."""
    return ReplicaConfig(
        n=args.replicas, tombstone_grace_ms=_ms(args.tombstone_grace),
        max_ahead_ms=_ms(args.max_clock_ahead), hints=args.hints,
        hint_window_ms=_ms(args.hint_window), anti_entropy=args.anti_entropy,
        anti_entropy_ms=max(1, _ms(args.anti_entropy_interval)),  # 1 ms at the least
        stream_rate=round(args.stream_rate * 1_000_000))


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    peers = dict(args.peer)
    if len(peers) != len(args.peer):
        p.error("a --peer name is given twice")
    if args.name in peers:
        p.error(f"--peer {args.name} is this node itself (--name)")
    for name in (args.name, *peers):
        if "#" in name:
            p.error(f"node name {name!r}: '#' is kept for coordinator connections")
    if args.vnodes < 1:
        p.error("--vnodes must be at least 1")
    if args.anti_entropy_interval <= 0:
        p.error("--anti-entropy-interval must be more than 0 seconds")
    try:
        config = config_from(args)
    except ValueError as exc:
        p.error(str(exc))
    os.umask(0o077)  # the database, its WAL, the log: readable by their owner only
    args.data.mkdir(parents=True, exist_ok=True)
    node = open_node(args, peers, config)
    print(f"node {args.name} pid {os.getpid()} on {args.host}:{args.port}: "
          f"{node.replica.key_count()} keys and {sum(node.replica.hints_held().values())} "
          f"hints loaded in {node.load_s:.2f}s "
          f"({'from the index kept at stop' if node.indexed else 'from every row'}); "
          f"peers {', '.join(peers) or 'none'}", flush=True)
    serve(make_app(node, args.port), args.host, args.port)


if __name__ == "__main__":
    main()
