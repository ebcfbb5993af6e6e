"""Outgoing replica channels: one WebSocket to a node's `/replica`, kept open.

A `Link` batches messages into frames (`FrameWriter`) and reconnects in the background with
backoff. While the socket is down, sends fail at once (like a refused connection), so the
sender can tell its state machine. Two kinds:

- `ReplicaLink`, the proxy's (a coordinator's) link to one node: requests and the
  committer's control messages (ring updates, pings, stream orders) out; replies back,
  matched by number, and reports (pongs, stream progress). If the socket breaks, every
  request in flight on it is reported lost. Each time the socket opens, `on_connected`
  runs before anything else can be sent on it (the node must hear the ring first). A
  request that waited in the queue longer than an operation may last (`max_wait_s`, the
  coordinator's timeout) is dropped unsent: its operation has timed out, and sending it
  would only slow down the requests behind it (big writes at overload did exactly that).
- `PeerLink`, a node's link to another node (`/replica?from=<me>`): replica-to-replica
  messages one way. The peer answers on its own link back, so nothing is expected in return
  here, and a message lost with a socket is the replica's to time out.

Given the cluster's secret, a link shows each connection a fresh `kvlab.net.auth.proof` of it
(the node refuses a channel without one), never the secret: it reconnects to a node that is
down, and whoever listens on the port the node left would learn it. The node's answer to it
is the channel's first message; a channel without it is closed before it is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import aiohttp

from kvlab.core.messages import REPORTS, Control, HintRequest, Message, Reply, Report, Request
from kvlab.net import codec
from kvlab.net.auth import answered, proof
from kvlab.net.framing import FrameWriter
from kvlab.net.histogram import Histogram

logger = logging.getLogger(__name__)

UP, DOWN = "up", "down"
RETRY_MIN_S, RETRY_MAX_S = 0.05, 0.5
LATENCY_WINDOW = 2048
# The WebSocket's own ping: a socket to a paused (SIGSTOP) or vanished node is closed after
# about this long. Whether the node is *believed* down is the failure detector's call
# (kvlab.core.detector), much sooner; this only frees the socket.
HEARTBEAT_S = 2.0
ANSWER_WAIT_S = 2.0  # for the node's answer to the link's proof of the secret


class Link:
    """One persistent outgoing WebSocket to a node's replica channel."""

    def __init__(self, name: str, url: str, session: aiohttp.ClientSession,
                 sender: str | None = None, retry_max_s: float = RETRY_MAX_S,
                 secret: str | None = None) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.port = urlsplit(self.url).port or 80
        self.secret = secret
        # The node tells a peer's connection from a coordinator's by `from`.
        self.ws_url = f"{self.url}/replica" + ("" if sender is None else
                                               f"?from={quote(sender, safe='')}")
        self._session = session
        self._retry_max_s = retry_max_s
        self._max_wait_s = math.inf  # how long a message may wait for its frame
        self._writer: FrameWriter[Message] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task | None = None
        self.state = DOWN
        # Fault hook for chaos runs: a partitioned link silently drops messages "to" the
        # node, frames "from" it, or both, so the sender sees silence (timeouts), as with a
        # cut network, not an error.
        self.partitioned: str | None = None
        self.sent = 0
        self.errors = 0
        self.connects = 0  # times the socket came up
        self.last_error: str | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"link-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()

    def partition(self, direction: str | None) -> None:
        """Cut the link one way ("to", "from"), both ways ("both"), or heal it (None)."""
        self.partitioned = direction

    def _push(self, message: Message) -> bool:
        """Queue `message` for the next frame; False if the link is down."""
        writer = self._writer
        if writer is None:
            return False
        if self.partitioned in ("both", "to"):
            return True
        self.sent += 1
        writer.push(message)
        return True

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                delay = await self._connect_once(delay)
            except Exception:
                # A bug in a hook (say, `_down`), or an error of aiohttp's that its handlers
                # don't name: ending the task would leave the link down for good, silently.
                logger.exception("link to %s failed; reconnecting", self.name)
                self._note_error("link failed: see the log")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    async def _connect_once(self, delay: float) -> float:
        """Connect, serve the socket until it closes; the delay before the next attempt."""
        presented = proof(self.secret, self.port)
        try:
            ws = await self._session.ws_connect(
                self.ws_url, max_msg_size=0, heartbeat=HEARTBEAT_S, headers=presented,
                timeout=aiohttp.ClientWSTimeout(ws_close=1.0))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            self._note_error(f"connect: {exc.__class__.__name__}")
            await asyncio.sleep(delay)
            return min(delay * 2, self._retry_max_s)
        if presented and not await _answered(ws, self.secret, presented["Authorization"]):
            await ws.close()
            self._note_error("not the node: no answer to the proof of the secret")
            await asyncio.sleep(delay)
            return min(delay * 2, self._retry_max_s)
        writer = FrameWriter(ws, codec.encode, codec.weight, heavy=codec.HEAVY,
                             light=codec.LIGHT, prune=self._prune, max_wait_s=self._max_wait_s)
        self._ws, self._writer, self.state = ws, writer, UP
        self.connects += 1
        try:
            self._up()  # synchronously: nothing else can be queued on the socket before
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and \
                        self.partitioned not in ("both", "from"):
                    self._frame(msg.data)
            self._note_error(f"closed: {ws.close_code}" if ws.close_code else "closed")
        except Exception as exc:  # a bad frame (or hook) must not end the link for good
            logger.exception("link to %s failed", self.name)
            self._note_error(f"bad frame: {exc.__class__.__name__}")
        finally:
            writer.cancel()
            self._ws, self._writer, self.state = None, None, DOWN
            try:
                self._down()
            finally:
                await ws.close()
        return RETRY_MIN_S

    def _prune(self, queue: list[Message]) -> list[Message]:
        """What is still worth sending of `queue`, which waited past `max_wait_s` (a hook)."""
        return queue

    def _up(self) -> None:
        """The socket is open, and nothing was sent on it yet (a hook)."""

    def _down(self) -> None:
        """The socket is gone, with whatever was in flight on it (a hook)."""

    def _frame(self, data: bytes) -> None:
        """A frame arrived from the node (a hook)."""

    def _note_error(self, text: str) -> None:
        if self.state == UP or self.last_error is None:
            self.errors += 1
        self.last_error = text


async def _answered(ws: aiohttp.ClientWebSocketResponse, secret: str | None,
                    presented: str) -> bool:
    """Whether the channel's first message is the node's answer to the proof `presented`."""
    assert secret is not None
    try:
        msg = await ws.receive(timeout=ANSWER_WAIT_S)
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
        return False
    return msg.type == aiohttp.WSMsgType.TEXT and answered(secret, presented, msg.data)


class ReplicaLink(Link):
    """The proxy's link to one node: requests out, replies matched back by number."""

    def __init__(self, name: str, url: str, session: aiohttp.ClientSession,
                 on_replies: Callable[[str, list[Reply]], None],
                 on_lost: Callable[[str, list[int], str], None],
                 on_reports: Callable[[str, list[Report]], None],
                 on_connected: Callable[[str], None], max_wait_s: float = math.inf,
                 secret: str | None = None) -> None:
        super().__init__(name, url, session, secret=secret)
        self._max_wait_s = max_wait_s
        self._on_replies = on_replies
        self._on_lost = on_lost
        self._on_reports = on_reports
        self._on_connected = on_connected
        self._inflight: dict[int, float] = {}  # request -> when it was queued
        self.replies = 0
        self.expired = 0  # requests dropped unsent, their operation over
        # Round trips in seconds: every one goes into `latency` (for /metrics), in batches:
        # a reply costs one append, and `_frame` folds the list in once it holds a window.
        # The window before is kept for `p99_ms`.
        self.latency = Histogram()
        self.latencies: list[float] = []
        self._folded = 0  # of `latencies`, how many `latency` counts already
        self._window: list[float] = []

    def send(self, request: Request) -> bool:
        """Queue `request` for the node; False if the link is down (the caller fails it)."""
        if self._writer is not None and self.partitioned not in ("both", "to"):
            self._inflight[request.req] = time.perf_counter()
        return self._push(request)

    def send_control(self, message: Control) -> bool:
        """Queue a control message (nothing waits on a reply to it); False if down."""
        return self._push(message)

    def partition(self, direction: str | None) -> None:
        super().partition(direction)
        # Requests in flight are lost with the link (their operations time out); replies to
        # ones sent while replies were cut would never clear them either.
        self._inflight.clear()

    def p99_ms(self) -> float | None:
        """The 99th percentile of the last `LATENCY_WINDOW` round trips, in ms."""
        recent = (self._window + self.latencies)[-LATENCY_WINDOW:]
        if not recent:
            return None
        ordered = sorted(recent)
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3)

    def fold_latencies(self) -> Histogram:
        """`latency`, counting every round trip so far (a scrape calls this)."""
        self.latency.observe_many(self.latencies[self._folded:])
        self._folded = len(self.latencies)
        return self.latency

    def _frame(self, data: bytes) -> None:
        replies = codec.decode_replies(data)
        now = time.perf_counter()
        inflight, latencies = self._inflight, self.latencies
        reports: list[Report] = []
        for reply in replies:
            if reply.__class__ in REPORTS:  # a heartbeat or stream progress: rare
                reports.append(reply)  # type: ignore[arg-type]
                continue
            sent = inflight.pop(reply.req, None)  # type: ignore[union-attr]
            if sent is not None:
                latencies.append(now - sent)
        if len(latencies) >= LATENCY_WINDOW:
            self.fold_latencies()
            self._window, self.latencies, self._folded = latencies, [], 0
        if reports:
            replies = [r for r in replies if r.__class__ not in REPORTS]
            self._on_reports(self.name, reports)
        self.replies += len(replies)
        if replies:
            self._on_replies(self.name, replies)  # type: ignore[arg-type]

    def _prune(self, queue: list[Message]) -> list[Message]:
        # Not reported lost: the operation's own timer gives it its outcome (a timeout),
        # and has fired already, or is due in this very loop turn. A hint is kept: it is
        # sent at its operation's end, no timer waits on it, and delivering it is its purpose.
        cutoff = time.perf_counter() - self._max_wait_s
        inflight = self._inflight
        kept = []
        for message in queue:
            req = getattr(message, "req", None)  # control messages have none
            queued = None if req is None else inflight.get(req)
            if queued is not None and queued < cutoff and message.__class__ is not HintRequest:
                del inflight[req]
                self.expired += 1
            else:
                kept.append(message)
        return kept

    def _up(self) -> None:
        self._on_connected(self.name)

    def _down(self) -> None:
        lost, self._inflight = list(self._inflight), {}
        if lost:
            self._on_lost(self.name, lost, "connection lost")


class PeerLink(Link):
    """A node's link to a peer node, for replica-to-replica messages (one way)."""

    def __init__(self, name: str, url: str, session: aiohttp.ClientSession, sender: str,
                 retry_max_s: float = 1.0, secret: str | None = None) -> None:
        # A peer that is down for long is retried once a second: the replica retries a hint
        # replay no more often than that anyway.
        super().__init__(name, url, session, sender=sender, retry_max_s=retry_max_s,
                         secret=secret)
        self.unexpected = 0  # frames the peer sent back on this link (it should not)

    def send(self, message: Message) -> bool:
        """Queue `message` for the peer; False if the link is down."""
        return self._push(message)

    def _frame(self, data: bytes) -> None:
        self.unexpected += 1
