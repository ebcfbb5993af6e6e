"""Batch messages into WebSocket frames: everything queued in one loop turn goes in one frame.

This is the "pipelined" half of the replica channel: many concurrent operations to the same
node share a frame (and a syscall) instead of one HTTP request each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from aiohttp import ClientWebSocketResponse, web

T = TypeVar("T")


class FrameWriter(Generic[T]):
    def __init__(self, ws: web.WebSocketResponse | ClientWebSocketResponse,
                 encode: Callable[[list[T]], bytes]) -> None:
        self._ws = ws
        self._encode = encode
        self._queue: list[T] = []
        self._task: asyncio.Task | None = None

    def push(self, message: T) -> None:
        self._queue.append(message)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    def extend(self, messages: list[T]) -> None:
        if messages:
            self._queue.extend(messages)
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            # Messages pushed while a frame is being sent go out in the next frame.
            while self._queue and not self._ws.closed:
                batch, self._queue = self._queue, []
                await self._ws.send_bytes(self._encode(batch))
        except (ConnectionError, RuntimeError):
            pass  # the reader side notices the closed socket and fails what is in flight
        finally:
            self._task = None

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
