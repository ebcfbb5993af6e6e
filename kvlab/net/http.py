"""A small HTTP/1.1 server for the proxy's API, on httptools (llhttp, Node.js's parser).

Every GET and SET a client makes goes through the proxy's HTTP server, so that server's own
cost per request is a large share of the proxy's. Measured on the 2-core dev machine (wrk,
64 connections, a handler that answers a fixed body): aiohttp's web server spent about
20 µs of CPU per request, uvicorn with a bare ASGI app about 21 µs, an asyncio protocol on
httptools about 9 µs. Parsing, the part of HTTP that is easy to get wrong, stays llhttp's;
this module routes, runs one handler per request and writes the answer.

What it does: keep-alive and pipelining (answers in request order), HTTP/1.0, chunked
request bodies, `Expect: 100-continue`, HEAD on GET routes, a request body limit (413),
400 on malformed requests, 404 and 405 (with `Allow`), and every error as a JSON body
`{"error": CODE, "message": TEXT, ...}`. What it leaves out, because the API has no use for
it: upgrades, trailers, streaming bodies, TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import httptools
import orjson

logger = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 75.0  # a kept-alive connection with nothing to do is closed after this
MAX_PIPELINED = 32  # parsed requests waiting behind the one being served; then stop reading


class Request:
    """One parsed request. `path` is still percent-encoded; `tail` is what a prefix route
    matched after its prefix (also percent-encoded)."""

    __slots__ = ("method", "path", "query_string", "headers", "body", "keep_alive", "tail",
                 "_query")

    def __init__(self, method: str, path: str, query_string: str, headers: dict[str, str],
                 body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.tail = ""
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """Decoded query parameters; the first value wins when a name repeats."""
        if self._query is None:
            query: dict[str, str] = {}
            text = self.query_string
            if "%" in text or "+" in text:
                pairs = parse_qsl(text, keep_blank_values=True)
            else:  # nothing to decode: a plain split is ~4x cheaper than parse_qsl
                pairs = [part.partition("=")[::2] for part in text.split("&") if part]
            for name, value in pairs:
                query.setdefault(name, value)
            self._query = query
        return self._query


class Response(NamedTuple):
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] | None = None


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> Response:
    return Response(status, orjson.dumps(body), "application/json", headers)


class HttpError(Exception):
    """An error answered as `{"error": code, "message": message, **details}`."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: Mapping[str, str] | None = None, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers
        self.details = details

    def response(self) -> Response:
        return json_response({"error": self.code, "message": str(self), **self.details},
                             status=self.status, headers=self.headers)


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Exact paths, and prefix routes (`add(..., "/kv/", prefix=True)`) whose rest of the
    path, non-empty, is handed over as `request.tail`. Longest prefix first."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._prefixes: list[tuple[str, dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler, *, prefix: bool = False) -> None:
        if prefix:
            for known, methods in self._prefixes:
                if known == path:
                    break
            else:
                methods = {}
                self._prefixes.append((path, methods))
                self._prefixes.sort(key=lambda item: -len(item[0]))
        else:
            methods = self._exact.setdefault(path, {})
        methods[method] = handler

    def resolve(self, request: Request) -> Handler:
        methods = self._exact.get(request.path)
        if methods is None:
            for prefix, candidates in self._prefixes:
                if len(request.path) > len(prefix) and request.path.startswith(prefix):
                    request.tail = request.path[len(prefix):]
                    methods = candidates
                    break
            else:
                raise HttpError(404, "not_found", f"no route for {request.path}")
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = methods.get("GET")
        if handler is None:
            allowed = ", ".join(sorted(methods))
            raise HttpError(405, "method_not_allowed",
                            f"{request.method} is not allowed here; allowed: {allowed}",
                            headers={"Allow": allowed})
        return handler


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")


_STATUS_LINES = {status.value: _status_line(status.value) for status in HTTPStatus}


def _date_line() -> bytes:
    return f"Date: {formatdate(usegmt=True)}\r\n".encode("ascii")


class _Connection(asyncio.Protocol):
    """One client connection: feeds llhttp, serves the parsed requests one at a time."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        # Parsed requests (and errors answered without a handler, such as a 413) waiting
        # behind the one being served, each with whether the connection stays open after it.
        self._pending: deque[tuple[Request | Response, bool]] = deque()
        self._worker: asyncio.Task | None = None  # serves `_pending`, one at a time, in order
        self._wakeup: asyncio.Future | None = None  # set while the worker waits for work
        self._busy = False  # a handler is running
        self._reading_paused = False
        self._writing_paused = False
        self._closing = False
        self.last_active = self._loop.time()
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False

    @property
    def idle(self) -> bool:
        return not self._busy and not self._pending

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's isn't a subclass
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        self._pending.clear()
        if self._worker is not None:
            self._worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return  # closing: whatever else the client sent goes unanswered
        self.last_active = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError(400, "bad_request", "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            self._fail(HttpError(400, "bad_request", f"malformed HTTP request: {exc}"))

    def pause_writing(self) -> None:
        # The client reads slower than we answer: stop taking requests until it catches up.
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._resume_reading()

    # llhttp callbacks

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._server.max_body:
            self._too_large = True
        if self._headers.get("expect", "").lower() != "100-continue":
            return
        if self._too_large:
            # The client waits before sending the body: refuse now rather than after it.
            self._fail(self._too_large_error())
        elif self.idle and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return  # read and dropped, so the connection stays usable for the next request
        self._size += len(body)
        if self._size > self._server.max_body:
            self._too_large = True
            self._body.clear()
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        if self._too_large:
            self._queue(self._too_large_error().response(), keep_alive)
            return
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._queue(HttpError(400, "bad_request", "malformed URL").response(), keep_alive)
            return
        method = self._parser.get_method().decode("ascii")
        query = url.query.decode("latin-1") if url.query else ""
        self._queue(Request(method, url.path.decode("latin-1"), query, self._headers,
                            b"".join(self._body), keep_alive), keep_alive)

    def _too_large_error(self) -> HttpError:
        return HttpError(413, "too_large",
                         f"request body is larger than {self._server.max_body} bytes")

    # serving

    def _queue(self, item: Request | Response, keep_alive: bool) -> None:
        self._pending.append((item, keep_alive))
        if len(self._pending) > MAX_PIPELINED:
            self._pause_reading()
        self._kick()

    def _kick(self) -> None:
        # One long-lived task per connection, woken when work arrives: on Python 3.11 a new
        # task per request cost ~4.6 µs here, waking a waiting one ~0.7 µs.
        if self._worker is None:
            self._worker = self._loop.create_task(self._work())
        elif self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _work(self) -> None:
        try:
            await self._serve_pending()
        except Exception:  # a bug here must not leave the client hanging on a silent socket
            logger.exception("HTTP connection failed")
            self.abort()

    async def _serve_pending(self) -> None:
        resolve = self._server.router.resolve
        while self._transport is not None:
            if not self._pending:
                self._wakeup = self._loop.create_future()
                await self._wakeup
                self._wakeup = None
                continue
            item, keep_alive = self._pending.popleft()
            if isinstance(item, Request):
                self._busy = True
                try:
                    response = await resolve(item)(item)
                except HttpError as exc:
                    response = exc.response()
                except Exception:
                    logger.exception("%s %s failed", item.method, item.path)
                    response = HttpError(500, "internal_error", "internal server error"
                                         ).response()
                self._busy = False
                self._write(response, head=item.method == "HEAD", keep_alive=keep_alive)
            else:  # an error answered without a handler (413, bad URL) keeps its place
                self._write(item, head=False, keep_alive=keep_alive)
            if self._reading_paused:
                self._resume_reading()

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._writing_paused and self._transport is not None \
                and len(self._pending) <= MAX_PIPELINED:
            self._reading_paused = False
            self._transport.resume_reading()

    def _write(self, response: Response, *, head: bool, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        keep_alive = keep_alive and not self._closing
        status_line = _STATUS_LINES.get(response.status) or _status_line(response.status)
        lines = [status_line, self._server.date_line,
                 b"Content-Type: ", response.content_type.encode("latin-1"),
                 b"\r\nContent-Length: %d\r\n" % len(response.body)]
        if response.headers:
            for name, value in response.headers.items():
                lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
        if not head:
            lines.append(response.body)
        transport.write(b"".join(lines))
        self.last_active = self._loop.time()
        if not keep_alive:
            transport.close()
            self._transport = None
            self._pending.clear()

    def _fail(self, error: HttpError) -> None:
        """Answer a request llhttp could not parse, then close: the stream is out of step."""
        if self._transport is None:
            return
        self._closing = True
        self._pending.append((error.response(), False))
        self._kick()

    def close(self) -> None:
        """Stop after the request being served (at once if there is none)."""
        self._closing = True
        if self._transport is not None and not self._busy:
            self._transport.close()
            self._transport = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class HttpServer:
    """`await start(host, port)`, later `await close()`; routes come from `router`."""

    def __init__(self, router: Router, *, max_body: int,
                 idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.router = router
        self.max_body = max_body
        self.idle_timeout_s = idle_timeout_s
        self.connections: set[_Connection] = set()
        self.date_line = _date_line()
        self._server: asyncio.Server | None = None
        self._housekeeper: asyncio.Task | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port,
                                                reuse_address=True)
        self._housekeeper = loop.create_task(self._housekeeping())

    async def close(self, grace_s: float = 1.0) -> None:
        """Stop listening, let requests being served finish (up to `grace_s`), close all."""
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), grace_s)

    async def _housekeeping(self) -> None:
        # Once a second rather than per request: refresh the Date header, and close the
        # connections idle for too long (the hot path only stamps `last_active`).
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            self.date_line = _date_line()
            cutoff = loop.time() - self.idle_timeout_s
            for connection in list(self.connections):
                if connection.idle and connection.last_active < cutoff:
                    connection.close()
