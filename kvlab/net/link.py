"""The proxy's end of the replica channel to one node: one WebSocket, kept open.

Requests are batched into frames (`FrameWriter`); replies are matched to requests by number.
While the socket is down, sends fail at once (like a refused connection) and the link keeps
reconnecting in the background. If the socket breaks, every request in flight on it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

import aiohttp

from kvlab.core.messages import Reply, Request
from kvlab.net import codec
from kvlab.net.framing import FrameWriter

logger = logging.getLogger(__name__)

UP, DOWN = "up", "down"
RETRY_MIN_S, RETRY_MAX_S = 0.05, 0.5
LATENCY_WINDOW = 2048


class ReplicaLink:
    def __init__(self, name: str, url: str, session: aiohttp.ClientSession,
                 on_replies: Callable[[str, list[Reply]], None],
                 on_lost: Callable[[str, list[int], str], None]) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._session = session
        self._on_replies = on_replies
        self._on_lost = on_lost
        self._writer: FrameWriter[Request] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._inflight: dict[int, float] = {}
        self._task: asyncio.Task | None = None
        # What the dashboard shows about this node, as seen from the proxy.
        self.state = DOWN
        # Fault hook for chaos runs: a partitioned link silently drops requests ("to" the
        # node), replies ("from" it) or both, so the coordinator sees silence (timeouts), as
        # with a cut network, not an error. With "from", writes still apply on the node.
        self.partitioned: str | None = None
        self.sent = 0
        self.replies = 0
        self.errors = 0
        self.last_error: str | None = None
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"link-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()

    def send(self, request: Request) -> bool:
        """Queue `request` for the node; False if the link is down (the caller fails it)."""
        if self._writer is None:
            return False
        if self.partitioned in ("both", "to"):
            return True
        self._inflight[request.req] = time.perf_counter()
        self.sent += 1
        self._writer.push(request)
        return True

    def partition(self, direction: str | None) -> None:
        """Cut the link one way ("to", "from"), both ways ("both"), or heal it (None)."""
        self.partitioned = direction
        # Requests in flight are lost with the link (their operations time out); replies to
        # ones sent while replies were cut would never clear them either.
        self._inflight.clear()

    def p99_ms(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3)

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                ws = await self._session.ws_connect(
                    f"{self.url}/replica", max_msg_size=0, heartbeat=2.0,
                    timeout=aiohttp.ClientWSTimeout(ws_close=1.0))
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                self._note_error(f"connect: {exc.__class__.__name__}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S
            self._ws, self._writer, self.state = ws, FrameWriter(ws, codec.encode), UP
            try:
                await self._read(ws)
            except Exception as exc:  # a bad frame must not end the link for good
                logger.exception("link to %s failed", self.name)
                self._note_error(f"bad frame: {exc.__class__.__name__}")
            finally:
                self._writer.cancel()
                self._ws, self._writer, self.state = None, None, DOWN
                lost, self._inflight = list(self._inflight), {}
                if lost:
                    self._on_lost(self.name, lost, "connection lost")
                await ws.close()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY or self.partitioned in ("both", "from"):
                continue
            replies = codec.decode_replies(msg.data)
            now = time.perf_counter()
            for reply in replies:
                sent = self._inflight.pop(reply.req, None)
                if sent is not None:
                    self.latencies.append(now - sent)
            self.replies += len(replies)
            self._on_replies(self.name, replies)
        self._note_error(f"closed: {ws.close_code}" if ws.close_code else "closed")

    def _note_error(self, text: str) -> None:
        if self.state == UP or self.last_error is None:
            self.errors += 1
        self.last_error = text
