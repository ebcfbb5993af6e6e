"""Batch messages into WebSocket frames: what is queued in one loop turn goes in one frame,
up to `FRAME_BYTES`.

This is the "pipelined" half of the replica channel: many concurrent operations to the same
node share a frame (and a syscall) instead of one HTTP request each. A frame is bounded in
size: a hundred concurrent 1 MiB writes queued in one turn made one 100 MiB frame, past the
node's `MAX_FRAME` (it closed the socket with 1009, losing every request on it), and the
proxy held several copies of it while encoding and sending (850 MB RSS). The rest waits
for the next frame; a message larger than the bound goes alone in its own.

Sizes: the node takes frames up to `MAX_FRAME` (64 MiB); a batch stops growing at
`FRAME_BYTES` (4 MiB); and a value may be at most `MAX_VALUE` (32 MiB), so that one message
carrying it (a write, a hint, a read reply, a push) always fits in a frame, its key and
framing included. The proxy refuses a `--max-value` above `MAX_VALUE`, and a `--max-key`
above `MAX_KEY` (1 KiB).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Container
from typing import Generic, TypeVar

from aiohttp import ClientWebSocketResponse, web

T = TypeVar("T")

MAX_FRAME = 64 * 1024 * 1024
FRAME_BYTES = 4 * 1024 * 1024
MAX_VALUE = MAX_FRAME // 2
MAX_KEY = 1024  # so that a message with one key and no value is small (`codec.LIGHT`)


class FrameWriter(Generic[T]):
    """Frames of `encode(batch)` on `ws`, each batch up to `limit` bytes by `weigh`.

    A message is weighed on its way in only if its class is in `heavy`; the queue goes
    out as one frame when the heavy ones' weights, plus `light` bytes for each of the
    others, fit in the limit (nearly always). Weighing the small messages that
    are nearly all of the traffic cost ~0.2 µs apiece: they are weighed only when a queue
    holds more than a frame.

    `prune`, if given, is handed the queue when its oldest message has waited more than
    `max_wait_s`, and returns what is still worth sending (a driver drops requests whose
    operation is over: they would only be load).
    """

    def __init__(self, ws: web.WebSocketResponse | ClientWebSocketResponse,
                 encode: Callable[[list[T]], bytes], weigh: Callable[[T], int], *,
                 heavy: Container[type], light: int,
                 limit: int = FRAME_BYTES, prune: Callable[[list[T]], list[T]] | None = None,
                 max_wait_s: float = math.inf) -> None:
        self._ws = ws
        self._encode = encode
        self._weigh = weigh
        self._heavy = heavy
        self._light = light
        self._limit = limit
        self._prune = prune
        self._max_wait_s = max_wait_s
        self._loop = asyncio.get_running_loop()
        self._queue: list[T] = []
        self._bytes = 0  # the weight of the queue's heavy messages
        self._since = 0.0  # loop time the oldest message in the queue was pushed
        self._task: asyncio.Task | None = None

    def push(self, message: T) -> None:
        if not self._queue:
            self._since = self._loop.time()
        self._queue.append(message)
        if message.__class__ in self._heavy:
            self._bytes += self._weigh(message)
        if self._task is None:
            self._task = self._loop.create_task(self._flush())

    def extend(self, messages: list[T]) -> None:
        if messages:
            if not self._queue:
                self._since = self._loop.time()
            self._queue.extend(messages)
            self._bytes += self._weight(messages)
            if self._task is None:
                self._task = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            # Messages pushed while a frame is being sent go out in the next frame.
            while self._queue and not self._ws.closed:
                if self._prune is not None and \
                        (now := self._loop.time()) - self._since > self._max_wait_s:
                    self._queue = self._prune(self._queue)
                    self._bytes = self._weight(self._queue)
                    # What is left may have waited up to `max_wait_s` more: looked at again
                    # after that (not on every frame, re-weighing a long queue each time).
                    self._since = now
                    if not self._queue:
                        break
                # Nearly always: one frame takes it all.
                if self._bytes + len(self._queue) * self._light <= self._limit:
                    batch, self._queue, self._bytes = self._queue, [], 0
                else:
                    batch = self._take()
                await self._ws.send_bytes(self._encode(batch))
        except (ConnectionError, RuntimeError):
            pass  # the reader side notices the closed socket and fails what is in flight
        finally:
            self._task = None

    def _weight(self, messages: list[T]) -> int:
        """The weight of the heavy ones among `messages`."""
        heavy, weigh = self._heavy, self._weigh
        return sum(weigh(m) for m in messages if m.__class__ in heavy)

    def _take(self) -> list[T]:
        """The longest head of the queue within the limit (at least one message), every
        message weighed."""
        queue, weigh, limit, heavy = self._queue, self._weigh, self._limit, self._heavy
        taken = size = heavy_size = 0
        for message in queue:
            weight = weigh(message)
            if taken and size + weight > limit:
                break
            taken += 1
            size += weight
            if message.__class__ in heavy:
                heavy_size += weight
        batch = queue[:taken]
        del queue[:taken]
        self._bytes -= heavy_size
        return batch

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
