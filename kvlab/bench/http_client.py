"""The load generator's HTTP/1.1 client: one keep-alive connection, one request at a time.

A load generator must cost less than what it measures. aiohttp's client spent about 80 µs of
CPU per request on the dev machine, so `kvlab bench` topped out near 12,000 requests/s
against a proxy that serves 35,000 (measured with wrk). This client sends a request prepared
as bytes and reads the answer with httptools (llhttp), keeping only its status: that is all
the benchmark needs, and it costs a fraction of the time.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httptools


class _Exchange(asyncio.Protocol):
    """The socket's side: feeds responses to llhttp, resolves `waiter` with each status."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.keep_alive = True
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's isn't a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(ConnectionError(f"malformed response: {exc}"))
            self.abort()

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.fail(ConnectionError("the server closed the connection"))

    def fail(self, exc: Exception) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def abort(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()


class Connection:
    """`await exchange(request)` -> the answer's HTTP status; reconnects when needed.

    Raises TimeoutError when there is no answer within `timeout` seconds (the connection is
    dropped: its answer may still come), and OSError when the server can't be reached or
    closes the connection mid-answer.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._exchange: _Exchange | None = None
        self._loop = asyncio.get_running_loop()

    async def exchange(self, request: bytes) -> int:
        proto = self._exchange
        if proto is None or proto.lost:
            proto = self._exchange = await self._connect()
        waiter = proto.waiter = self._loop.create_future()
        timer = self._loop.call_later(self.timeout, self._expire, proto)
        assert proto.transport is not None
        proto.transport.write(request)
        try:
            status = await waiter
        finally:
            timer.cancel()
            proto.waiter = None
        if not proto.keep_alive:
            self.close()
        return status

    async def _connect(self) -> _Exchange:
        _, proto = await asyncio.wait_for(
            self._loop.create_connection(_Exchange, self.host, self.port), self.timeout)
        return proto

    def _expire(self, proto: _Exchange) -> None:
        proto.fail(TimeoutError())
        proto.abort()

    def close(self) -> None:
        if self._exchange is not None:
            self._exchange.abort()
            self._exchange = None


def parse_target(url: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of an `http://` URL; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected an http://HOST[:PORT] URL, got {url!r}")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")
