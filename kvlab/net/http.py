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
`{"error": CODE, "message": TEXT, ...}`; every answer is timed, by route and status
(`Router.durations`, for `/metrics`). What it leaves out, because the API has no use for
it: upgrades, trailers (read and dropped), streaming bodies, TLS.

One client must not hurt the others, so everything a client can make it hold is bounded:
the request target (8 KiB, else 414) and the headers (32 KiB and 100 of them, else 431),
counted as llhttp reports them so that buffering stays linear; the time a request takes to
arrive (10 s for its head, 20 s plus 1 s per 16 KiB for the whole of it, else 408); the
connections (beyond the cap: 503 and close); the bytes of requests parsed but not served yet,
per connection and in all (reading pauses beyond them); the answers a client doesn't read
(reading pauses, and a connection stuck so for the idle timeout is dropped). Deadlines are
checked by the once-a-second housekeeping, not a timer per request. A connection closed on a
client still sending (an error, a refused body) lingers: the answer, then a half-close, then
what the client still sends is read and dropped for a while, so that the kernel doesn't reset
the connection over the unread bytes before the client has read the answer.

Strictness is mostly llhttp's (see tests/integration/test_http_server.py for the list of
attacks and their answers); on top of it: a Host header is required in HTTP/1.1 and only
once, HTTP versions other than 1.0 and 1.1 get 505, a Transfer-Encoding other than chunked
501, one in HTTP/1.0 400. Raw bytes >= 0x80 in the request target (as the Go client of the
system kvlab descends from sends non-ASCII keys) are percent-encoded before llhttp sees them,
which refuses them otherwise: they then read as the UTF-8 they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from bisect import bisect_left
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from time import perf_counter
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import httptools
import orjson

from kvlab.net.histogram import DURATION_BOUNDS, Histogram

logger = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 75.0  # a kept-alive connection with nothing to do is closed after this
MAX_PIPELINED = 32  # parsed requests waiting behind the one being served; then stop reading
DISCARD_LIMIT = 64 * 1024 * 1024  # bytes of a refused (413) body read to keep its connection
UNROUTED = "none"  # the route of an answer given without a handler (400, 404, 405, 413)
MAX_URL = 8 * 1024  # bytes of request target (414 beyond)
MAX_HEAD = 32 * 1024  # bytes of header names and values (431 beyond)
MAX_HEADERS = 100  # different headers, and repeats of them (431 beyond)
REQUEST_TIMEOUT_S = 10.0  # a request's head must arrive whole in this (408 after)
BODY_RATE = 16 * 1024  # bytes/s: the whole request has twice the timeout, plus 1 s per this
MAX_CONNECTIONS = 10_000  # beyond: 503 `too_many_connections`
MAX_REFUSING = 512  # refused connections being told so at once; beyond, they are dropped
MAX_QUEUED = 1024 * 1024  # requests parsed, not served yet (QUEUED_HEAD each + bodies), per connection
MAX_QUEUED_TOTAL = 64 * 1024 * 1024  # ... and across the server; then reading pauses
MAX_UNREAD_TOTAL = 256 * 1024 * 1024  # answers buffered for clients that don't read them
LINGER_S = 2.0  # a closed connection reads and drops what its client still sends this long
RETRY_AFTER_S = 1  # said to the connections refused beyond the cap

# The parse of the message in progress: between messages, in its head, in its body.
_IDLE, _HEAD, _BODY = 0, 1, 2
QUEUED_HEAD = 512  # bytes a queued request is counted for besides its body (its head, parsed)

_HIGH_BYTE = re.compile(rb"[\x80-\xff]")


class Request:
    """One parsed request. `path` is still percent-encoded; `tail` is what a prefix route
    matched after its prefix (also percent-encoded)."""

    __slots__ = ("method", "path", "query_string", "headers", "body", "tail", "_query")

    def __init__(self, method: str, path: str, query_string: str, headers: dict[str, str],
                 body: bytes) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.tail = ""
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """Decoded query parameters; the first value wins when a name repeats."""
        if self._query is None:
            query: dict[str, str] = {}
            text = self.query_string
            if "%" in text or "+" in text:
                try:
                    # Strict: `%FF` is no character; replacing it would name another key.
                    pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
                except UnicodeDecodeError:
                    raise HttpError(400, "bad_request", "the query is not valid UTF-8 once "
                                    "percent-decoded") from None
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


class Later(NamedTuple):
    """A direct handler's answer that isn't ready yet: `finish(future.result())` is, once
    `future` is done."""

    future: asyncio.Future
    finish: Callable[[Any], Response]


# A coroutine function, run by the connection's worker task; or a plain ("direct") function
# answering a Response or a `Later`, which the connection calls the moment the request is
# parsed and finishes from the future's callback. The direct form skips two wake-ups of the
# worker and a chain of coroutine frames: the hot routes of the proxy use it.
Handler = Callable[[Request], Awaitable[Response]] | Callable[[Request], "Response | Later"]


class Router:
    """Exact paths, and prefix routes (`add(..., "/kv/", prefix=True)`) whose rest of the
    path, non-empty, is handed over as `request.tail`. Longest prefix first."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._prefixes: list[tuple[str, dict[str, Handler]]] = []
        self.direct: set[Handler] = set()  # handlers that are plain functions
        # route ("METHOD /path", "/kv/*" for a prefix) -> status -> time to answer, never
        # by a request's own path (one per key would grow without bound); `timings` finds
        # a handler's route in one lookup
        self.durations: dict[str, dict[int, Histogram]] = {UNROUTED: {}}
        self.timings: dict[Handler, dict[int, Histogram]] = {}

    def add(self, method: str, path: str, handler: Handler, *, prefix: bool = False) -> None:
        if not inspect.iscoroutinefunction(handler):
            self.direct.add(handler)
        self.timings[handler] = self.durations.setdefault(
            f"{method} {path}{'*' if prefix else ''}", {})
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


def _settle(request: Request, later: Later) -> Response:
    """The answer of a `Later` whose future is done (also when it was cancelled)."""
    if later.future.cancelled():
        return HttpError(503, "unavailable", "the operation was cancelled").response()
    try:
        return later.finish(later.future.result())
    except Exception as exc:
        return _error_response(request, exc)


def _error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HttpError):
        return exc.response()
    logger.error("%s %s failed", request.method, request.path, exc_info=exc)
    return HttpError(500, "internal_error", "internal server error").response()


class _Queued(NamedTuple):
    """A parsed request waiting its turn, or an error answered without a handler (a 413, a
    bad URL, a malformed request), with how its answer must be written."""

    item: Request | Response
    handler: Handler | None  # the route's handler (None for an error answered as is)
    keep_alive: bool  # the connection stays open after the answer
    head: bool  # a HEAD request: the answer has no body
    http10: bool  # an HTTP/1.0 client: keep-alive must be said out loud
    timing: dict[int, Histogram] | None = None  # its route's durations (None: UNROUTED)
    started: float = 0.0  # perf_counter() once it was received whole (0: not timed)


class _Connection(asyncio.Protocol):
    """One client connection: feeds llhttp, serves the parsed requests one at a time, in order.

    It stops parsing ("accepting") after a malformed request, an upgrade, the client's EOF or
    the server's close; whatever was received before that is still answered, the last answer
    saying `Connection: close`.
    """

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None  # None once we closed it
        self._raw: asyncio.BaseTransport | None = None  # kept to abort a closing connection
        self._pending: deque[_Queued] = deque()
        self._worker: asyncio.Task | None = None  # serves `_pending`, one at a time, in order
        self._wakeup: asyncio.Future | None = None  # set while the worker waits for work
        self._drained: asyncio.Future | None = None  # set while it waits for the client to read
        self._busy = False  # a handler is running
        self._accepting = True
        self._reading_paused = False
        self._writing_paused = False
        self._continue_wanted = False  # a request waits for its turn to get `100 Continue`
        self.last_active = self._loop.time()  # last time data moved either way
        self._began = 0.0  # when the message in progress began arriving
        self._chunk = 0  # bytes of the chunk being parsed
        self._carried_phase = _IDLE  # what `_carried` counts (see `_unfinished`)
        self._carried_size = 0
        self._version = "1.1"
        self._keep_alive = True
        self._request_line_open = False  # the request line's end is still to come
        self._queued = 0  # body bytes of the requests in `_pending`
        self._broken = False  # stopped on an error: the client may still be sending
        self._lingering = 0.0  # when the answers were done and the lingering close began
        self._dropped = 0  # bytes read and dropped while lingering
        self._eof = False
        self.on_message_begin()
        self._phase = _IDLE
        self._opened = self.last_active

    @property
    def idle(self) -> bool:
        return not self._busy and not self._pending

    @property
    def buffered(self) -> int:
        """Bytes of answers written but not yet taken by the client."""
        raw = self._raw
        return raw.get_write_buffer_size() if raw is not None else 0  # type: ignore[attr-defined]

    @property
    def stalled(self) -> bool:
        """Nothing to do but wait: for a new request, or for the client to read."""
        return self.idle or self._writing_paused or self._transport is None

    def overdue(self, now: float) -> bool:
        """The request in progress is taking too long to arrive."""
        phase = self._phase
        # Paused by the server (a queue full): the rest may wait in the socket, not late.
        if phase == _IDLE or not self._accepting or self._reading_paused:
            return False
        timeout = self._server.request_timeout_s
        if phase == _BODY:  # a slow body is fine as long as it moves
            return now - self._began > 2 * timeout + self._size / self._server.body_rate
        return now - self._began > timeout

    def unused(self, now: float) -> bool:
        """Connected and silent since for longer than a request may take to arrive: a
        client that holds a connection it doesn't use (or a slot of the cap)."""
        return self.last_active == self._opened and \
            now - self._opened > self._server.request_timeout_s

    def timed_out(self) -> None:
        self._stop_with(HttpError(408, "request_timeout", "the request did not arrive whole "
                                  "in time"))

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's isn't a subclass
        self._raw = transport
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        self._pending.clear()
        self._unqueue(self._queued)
        if self._worker is not None:
            self._worker.cancel()

    def eof_received(self) -> bool:
        # The client is done sending (a half-close, as `nc -N` or `curl` with a body read to
        # EOF do), but it still reads: answer what it sent, then close.
        self._eof = True
        self._accepting = False
        if self._lingering:
            return False  # it has read its answers: close
        if self.idle:
            self._close_transport()
        return True  # keep our side open for the answers

    def data_received(self, data: bytes) -> None:
        if not self._accepting:
            # After an error or a close: whatever else the client sent goes unanswered.
            if self._lingering:
                self._dropped += len(data)
                if self._dropped > DISCARD_LIMIT:
                    self.abort()
            return
        self.last_active = self._loop.time()
        self._chunk = len(data)
        try:
            if data.isascii():
                self._parser.feed_data(data)
            else:
                self._feed_high(data)
        except httptools.HttpParserUpgrade:
            pass  # answered 400 in on_message_complete
        except httptools.HttpParserError as exc:
            # A limit or check raised by a callback comes as its context.
            cause = exc.__context__
            self._stop_with(cause if isinstance(cause, HttpError) else
                            HttpError(400, "bad_request", f"malformed HTTP request: {exc}"))
        else:
            if self._phase:  # a message goes on in the next chunk: the rare case
                self._unfinished(len(data))

    def _unfinished(self, size: int) -> None:
        """Bound a message arriving over several chunks. llhttp reports the target piece by
        piece, but httptools buffers a header (or a trailer) until it is whole, unseen: so
        whole chunks are counted, those that began and ended inside the head, or inside
        the body without a byte of body (trailers, chunk extensions). The chunk in which
        that part began isn't (so none is counted twice, and no head under the limit is
        refused); the headers it completed are checked as they are."""
        phase = self._phase
        if self._carried < 0 or self._carried_phase != phase:
            self._carried, self._carried_phase, self._carried_size = 0, phase, self._size
        elif phase == _HEAD or self._size == self._carried_size:
            self._carried += size
        else:
            self._carried_size = self._size
        server = self._server
        if self._queued and self._queued + self._size > server.max_queued:
            self._pause_reading()  # the rest of this body waits for the queue to be served
        if phase == _HEAD and len(self._url) > server.max_url:
            self._stop_with(_uri_too_long(server))
        elif self._carried > server.max_head or phase == _HEAD and _too_many(
                self._headers, server):
            self._stop_with(_headers_too_large(server))

    def _feed_high(self, data: bytes) -> None:
        """Feed a chunk holding bytes >= 0x80, percent-encoding those of request lines: llhttp
        refuses them in the target. Bodies and header values go as they are, so the chunk
        is fed a request line, a header line or a body (its Content-Length) at a time."""
        parser, end, at = self._parser, len(data), 0
        while at < end and self._accepting:
            phase = self._phase
            if phase == _BODY:
                length = self._headers.get("content-length")
                if length is None:  # a chunked body: the rest goes as it is
                    parser.feed_data(data[at:])
                    return
                stop = min(end, at + max(1, int(length) - self._size))
            else:
                newline = data.find(b"\n", at)
                stop = end if newline < 0 else newline + 1
            piece = data[at:stop]
            # (A request line split across chunks, the first of them all ASCII, is not
            # known to be open here: its high bytes get the 400 llhttp gives them.)
            if phase == _IDLE or self._request_line_open:
                self._request_line_open = not piece.endswith(b"\n")
                piece = _HIGH_BYTE.sub(_percent_encoded, piece)
            parser.feed_data(piece)
            at = stop

    def pause_writing(self) -> None:
        # The client reads slower than we answer: take no new requests, and write no more
        # answers, until it catches up (the worker waits on `_drained`).
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.last_active = self._loop.time()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._resume_reading()

    # llhttp callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._refused = False  # answered 413 already; its body is read and dropped
        self._carried = -1  # bytes of the message in chunks wholly inside a part of it
        self._repeats = self._repeat_size = 0  # headers given again, and their bytes
        self._phase = _HEAD
        self._began = self.last_active

    def on_url(self, url: bytes) -> None:
        self._url += url  # one piece per chunk; the length is checked after each chunk

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase == _BODY:
            return  # a trailer: dropped
        key, headers = name.decode("latin-1").lower(), self._headers
        if key in headers:
            self._repeated(key, len(name) + len(value))
        else:
            headers[key] = value.decode("latin-1")

    def _repeated(self, key: str, size: int) -> None:
        """A header given again. The first value stands (no route reads a list), and the
        repeats are bounded as the headers are; a header that frames the message or names
        the host, given twice, is ambiguous (RFC 9112 3.2, 6.3): refused."""
        if key in ("host", "transfer-encoding", "content-length"):
            raise HttpError(400, "bad_request", f"the {key} header is given more than once")
        self._repeats += 1
        self._repeat_size += size
        if self._repeats > self._server.max_headers or \
                self._repeat_size > self._server.max_head:
            raise _headers_too_large(self._server)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        if not self._accepting:
            return
        parser, headers, server = self._parser, self._headers, self._server
        self._keep_alive = keep_alive = parser.should_keep_alive()
        # get_http_version() formats a string (0.2 µs): a connection kept unasked is
        # HTTP/1.1 (1.0 keeps one only when asked to; llhttp refuses 1.2 and later).
        version = "1.1" if keep_alive and "connection" not in headers \
            else parser.get_http_version()
        self._version = version
        # One test for the common case, the exact checks when something may be wrong: a
        # head that came whole in a chunk of at most `whole_head` bytes is within the limits
        # of its target and its size (not of its count).
        if version != "1.1" or "host" not in headers or "transfer-encoding" in headers \
                or self._chunk > server.whole_head or self._carried >= 0 \
                or len(headers) > server.max_headers:
            self._check_head(version)
        length = headers.get("content-length")
        too_large = length is not None and length.isdigit() and int(length) > self._server.max_body
        expects = self._headers.get("expect", "").lower() == "100-continue" \
            and version == "1.1"  # a 1.0 client's Expect is ignored
        if too_large:
            # Answer now, and drop the body as it comes (it may never come: a client that
            # expects `100 Continue` waits for an answer before sending it).
            self._refuse()
            if expects:
                self._stop()
        elif expects:
            if self.idle:
                self._write_continue()
            else:  # answered when the requests before this one are
                self._continue_wanted = True

    def on_body(self, body: bytes) -> None:
        if self._refused:
            self._size += len(body)
            if self._size > DISCARD_LIMIT:
                self.abort()  # not worth reading any further to keep the connection
            return
        self._size += len(body)
        if self._size > self._server.max_body:  # a chunked body, whose size comes late
            self._body.clear()
            self._refuse()
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        # Stopped in the middle of a chunk (an error, a refused Expect, an abort): the rest
        # of it is not served. A refused message was answered already.
        self._phase = _IDLE
        if self._refused or not self._accepting:
            return
        self._continue_wanted = False  # the body came anyway: no `100 Continue` now
        parser = self._parser
        keep_alive, method = self._keep_alive, parser.get_method().decode("ascii")
        head, http10 = method == "HEAD", self._version == "1.0"
        if parser.should_upgrade():
            error = HttpError(400, "bad_request", "protocol upgrades are not supported")
            self._queue(_Queued(error.response(), None, False, head, http10))
            self._stop()
            return
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            error = HttpError(400, "bad_request", "malformed URL")
            self._queue(_Queued(error.response(), None, keep_alive, head, http10))
            return
        path = url.path.decode("latin-1") if url.path else "/"  # `GET http://host` has none
        query = url.query.decode("latin-1") if url.query else ""
        request = Request(method, path, query, self._headers, b"".join(self._body))
        try:
            handler = self._server.router.resolve(request)
        except HttpError as exc:  # 404, 405
            self._queue(_Queued(exc.response(), None, keep_alive, head, http10))
            return
        router = self._server.router
        queued = _Queued(request, handler, keep_alive, head, http10, router.timings[handler],
                         perf_counter())
        if handler in router.direct and not self._busy and not self._pending \
                and not self._writing_paused:
            self._answer_now(queued)
        else:
            self._queue(queued)

    def _check_head(self, version: str) -> None:
        headers, server = self._headers, self._server
        if version not in ("1.1", "1.0"):
            raise HttpError(505, "http_version_not_supported",
                            f"HTTP/{version} is not supported; use HTTP/1.1")
        if len(self._url) > server.max_url:
            raise _uri_too_long(server)
        if _too_many(headers, server):
            raise _headers_too_large(server)
        if version == "1.1" and "host" not in headers:
            raise HttpError(400, "bad_request", "an HTTP/1.1 request needs a Host header")
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if version == "1.0":  # RFC 9112 6.1: the framing of such a message is faulty
                raise HttpError(400, "bad_request",
                                "Transfer-Encoding is not allowed in HTTP/1.0")
            if coding.strip().lower() != "chunked":
                raise HttpError(501, "not_implemented",
                                f"Transfer-Encoding {coding!r} is not supported; only chunked")

    def _refuse(self) -> None:
        self._refused = True
        limit = self._server.max_body
        error = HttpError(413, "too_large", f"request body is larger than {limit} bytes")
        parser = self._parser
        self._queue(_Queued(error.response(), None, parser.should_keep_alive(),
                            parser.get_method() == b"HEAD", parser.get_http_version() == "1.0"))

    # serving

    def _queue(self, queued: _Queued) -> None:
        self._pending.append(queued)
        item = queued.item
        if isinstance(item, Request):
            # Its head counts too: one read of 250 KB of GETs queues 9,000 of them.
            size = len(item.body) + QUEUED_HEAD
            self._queued += size
            self._server.queued += size
        if len(self._pending) > MAX_PIPELINED or self._queued > self._server.max_queued \
                or self._server.queued > self._server.max_queued_total:
            self._pause_reading()
        self._wake()

    def _unqueue(self, size: int) -> None:
        self._queued -= size
        self._server.queued -= size

    def _wake(self) -> None:
        if self._worker is None:
            self._worker = self._loop.create_task(self._work())
        elif self._wakeup is not None and not self._wakeup.done():
            # One long-lived task per connection, woken when work arrives: on Python 3.11 a
            # new task per request cost ~4.6 µs here, waking a waiting one ~0.7 µs.
            self._wakeup.set_result(None)

    def _answer_now(self, queued: _Queued) -> None:
        """Run a direct handler with nothing queued before it: no task, no coroutine."""
        request: Request = queued.item  # type: ignore[assignment]  # only requests get here
        try:
            answer = queued.handler(request)  # type: ignore[misc]
        except Exception as exc:
            answer = _error_response(request, exc)
        if isinstance(answer, Later):
            self._busy = True
            answer.future.add_done_callback(partial(self._finish_later, queued, answer))
        elif isinstance(answer, Response):
            self._answered(answer, queued)
        elif inspect.isawaitable(answer):  # a coroutine after all (say, behind a decorator)
            self._queue(queued._replace(handler=lambda _request: answer))
        else:
            error = TypeError(f"the handler answered {answer!r}")
            self._answered(_error_response(request, error), queued)

    def _finish_later(self, queued: _Queued, later: Later, future: asyncio.Future) -> None:
        self._busy = False
        if self._transport is not None:  # else the client went away meanwhile
            self._answered(_settle(queued.item, later), queued)  # type: ignore[arg-type]

    def _answered(self, response: Response, queued: _Queued) -> None:
        try:
            self._write(response, queued)
            self._after_direct()
        except Exception:  # as in `_work`: never leave the client on a silent socket
            logger.exception("HTTP connection failed")
            self.abort()

    def _after_direct(self) -> None:
        if self._pending:
            self._wake()
        elif self._continue_wanted:
            self._write_continue()
        elif not self._accepting:
            self._close_transport()

    async def _work(self) -> None:
        try:
            await self._serve_pending()
        except Exception:  # a bug here must not leave the client hanging on a silent socket
            logger.exception("HTTP connection failed")
            self.abort()

    async def _serve_pending(self) -> None:
        while self._transport is not None:
            if self._writing_paused:
                self._drained = self._loop.create_future()
                await self._drained
                self._drained = None
                continue
            if self._busy or not self._pending:  # busy: a direct handler's answer is due
                if not self._busy:
                    if not self._accepting:
                        self._close_transport()
                        return
                    if self._continue_wanted:
                        self._write_continue()
                self._wakeup = self._loop.create_future()
                await self._wakeup
                self._wakeup = None
                continue
            queued = self._pending.popleft()
            item, handler = queued.item, queued.handler
            if isinstance(item, Request):
                assert handler is not None
                self._unqueue(len(item.body) + QUEUED_HEAD)
                self._busy = True
                try:
                    answer = handler(item)
                    if isinstance(answer, Later):
                        # wait() rather than await: if this task is cancelled (the client
                        # left), the operation's future is not cancelled with it.
                        await asyncio.wait((answer.future,))
                        response = _settle(item, answer)
                    elif isinstance(answer, Response):
                        response = answer
                    else:
                        response = await answer
                except Exception as exc:
                    response = _error_response(item, exc)
                self._busy = False
            else:
                response = item
            self._write(response, queued)
            if self._reading_paused:
                self._resume_reading()

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        # Over the server's total, a connection waits until it has served its own queue (it
        # then holds nothing: pausing it longer would not free anything).
        server = self._server
        if self._reading_paused and not self._writing_paused and self._transport is not None \
                and len(self._pending) <= MAX_PIPELINED and self._queued <= server.max_queued \
                and (self._queued == 0 or server.queued <= server.max_queued_total):
            self._reading_paused = False
            if self._phase != _IDLE:
                self._began = self._loop.time()  # its deadline counts from now on
            self._transport.resume_reading()

    def _write_continue(self) -> None:
        self._continue_wanted = False
        if self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _write(self, response: Response, queued: _Queued) -> None:
        transport = self._transport
        if transport is None:
            return
        # The last answer before a close says so; earlier ones keep the connection.
        keep_alive = queued.keep_alive and (self._accepting or bool(self._pending))
        status_line = _STATUS_LINES.get(response.status) or _status_line(response.status)
        lines = [status_line, self._server.date_line,
                 b"Content-Type: ", response.content_type.encode("latin-1"),
                 b"\r\nContent-Length: %d\r\n" % len(response.body)]
        if response.headers:
            for name, value in response.headers.items():
                lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not keep_alive:
            lines.append(b"Connection: close\r\n\r\n")
        elif queued.http10:
            lines.append(b"Connection: keep-alive\r\n\r\n")
        else:
            lines.append(b"\r\n")
        if not queued.head:
            lines.append(response.body)
        transport.write(b"".join(lines))
        self.last_active = self._loop.time()
        timings = queued.timing
        if timings is None:
            timings = self._server.router.durations[UNROUTED]
        timing = timings.get(response.status)
        if timing is None:
            timing = timings[response.status] = Histogram()
        # Histogram.observe, inlined: every answer passes here (a call is ~0.05 µs).
        started = queued.started
        elapsed = perf_counter() - started if started else 0.0
        timing.counts[bisect_left(DURATION_BOUNDS, elapsed)] += 1
        timing.sum += elapsed
        if not keep_alive:
            self._accepting = False
            self._pending.clear()
            self._unqueue(self._queued)
            self._close_transport()

    def _stop(self) -> None:
        """Parse nothing more: answer what is queued, then close."""
        self._accepting = False
        if self.idle:
            self._close_transport()

    def _stop_with(self, error: HttpError) -> None:
        """The input can't be parsed (and the stream is out of step): answer what came
        before, then `error`, then close."""
        if self._accepting:
            self._broken = True
            self._queue(_Queued(error.response(), None, False, False, False))
            self._accepting = False

    def _close_transport(self) -> None:
        transport = self._transport
        if transport is None:
            return
        self._transport = None
        if (self._broken or self._phase != _IDLE) and not self._eof \
                and transport.can_write_eof():
            # The client may still be sending: closing now would make the kernel reset the
            # connection over the unread bytes, and the client would lose the answer. Say
            # we are done, read and drop what comes, close at its EOF or after `LINGER_S`.
            transport.write_eof()
            self._lingering = self._loop.time()
            if self._reading_paused:
                self._reading_paused = False
                transport.resume_reading()
        else:
            transport.close()  # after the buffered answers are sent

    @property
    def lingered(self) -> float:
        """Since when the connection lingers after its close (0: it doesn't)."""
        return self._lingering

    def close(self) -> None:
        """Answer the requests already received, then close (at once if there are none)."""
        self._stop()

    def abort(self) -> None:
        self._accepting = False  # llhttp may still be inside the chunk that led here
        self._transport = None
        if self._raw is not None:
            self._raw.abort()


class _Refusal(asyncio.Protocol):
    """A connection beyond the cap: answered 503 at once, half-closed, and closed when the
    client is done sending (or after `LINGER_S`), so that it reads the answer."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        refusing = self._server.refusing
        if len(refusing) >= MAX_REFUSING:  # a flood: not even the answer is worth an fd
            transport.abort()  # type: ignore[attr-defined]
            return
        refusing.add(self)
        error = HttpError(503, "too_many_connections",
                          f"the server has {self._server.max_connections} connections open; "
                          "try again later", headers={"Retry-After": str(RETRY_AFTER_S)})
        response = error.response()
        head = b"".join((_STATUS_LINES[503], self._server.date_line,
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                         % len(response.body),
                         b"Retry-After: %d\r\nConnection: close\r\n\r\n" % RETRY_AFTER_S))
        self._transport.write(head + response.body)
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        self._dropped += len(data)
        if self._dropped > MAX_HEAD and self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.refusing.discard(self)
        if self._timer is not None:
            self._timer.cancel()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _percent_encoded(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match[0][0]


def _headers_too_large(server: HttpServer) -> HttpError:
    return HttpError(431, "headers_too_large", f"the headers are larger than "
                     f"{server.max_head} bytes or more than {server.max_headers}")


def _uri_too_long(server: HttpServer) -> HttpError:
    return HttpError(414, "uri_too_long",
                     f"the request target is longer than {server.max_url} bytes")


def _too_many(headers: dict[str, str], server: HttpServer) -> bool:
    return len(headers) > server.max_headers or \
        sum(len(name) + len(value) for name, value in headers.items()) > server.max_head


class HttpServer:
    """`await start(host, port)`, later `await close()`; routes come from `router`."""

    def __init__(self, router: Router, *, max_body: int,
                 idle_timeout_s: float = IDLE_TIMEOUT_S,
                 request_timeout_s: float = REQUEST_TIMEOUT_S, body_rate: int = BODY_RATE,
                 max_connections: int = MAX_CONNECTIONS, max_url: int = MAX_URL,
                 max_head: int = MAX_HEAD, max_headers: int = MAX_HEADERS,
                 max_queued: int = MAX_QUEUED, max_queued_total: int = MAX_QUEUED_TOTAL,
                 max_unread_total: int = MAX_UNREAD_TOTAL) -> None:
        self.router = router
        self.max_body = max_body
        self.idle_timeout_s = idle_timeout_s
        self.request_timeout_s = request_timeout_s
        self.body_rate = body_rate
        self.max_connections = max_connections
        self.max_url = max_url
        self.max_head = max_head
        self.whole_head = min(max_url, max_head)  # a chunk this small holds no head too big
        self.max_headers = max_headers
        self.max_queued = max_queued
        self.max_queued_total = max_queued_total
        self.max_unread_total = max_unread_total
        self.queued = 0  # body bytes of the requests parsed and not served yet, in all
        self.connections: set[_Connection] = set()
        self.refusing: set[_Refusal] = set()
        self.date_line = _date_line()
        self._server: asyncio.Server | None = None
        self._housekeeper: asyncio.Task | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, host, port,
                                                reuse_address=True, backlog=1024)
        self._housekeeper = loop.create_task(self._housekeeping())

    def _accept(self) -> asyncio.Protocol:
        if len(self.connections) >= self.max_connections:
            return _Refusal(self)
        return _Connection(self)

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
        for refusal in list(self.refusing):
            refusal.abort()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), grace_s)

    async def _housekeeping(self) -> None:
        # Once a second rather than per request: refresh the Date header, answer 408 to the
        # requests too slow to arrive, close the connections idle for too long and those
        # done lingering (the hot path only stamps `last_active` and `_began`).
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            self.date_line = _date_line()
            now = loop.time()
            cutoff = now - self.idle_timeout_s
            unread: list[tuple[float, int, _Connection]] = []
            for connection in list(self.connections):
                lingered = connection.lingered
                if lingered:
                    if now - lingered > LINGER_S:
                        connection.abort()
                elif connection.stalled and connection.last_active < cutoff \
                        or connection.unused(now):
                    # Idle, or stuck on a client that stopped reading: its buffered answers
                    # would hold memory for as long as the client keeps the socket open.
                    connection.abort()
                elif connection.overdue(now):
                    connection.timed_out()
                elif connection.buffered:
                    unread.append((connection.last_active, connection.buffered, connection))
            self._drop_unread(unread)

    def _drop_unread(self, unread: list[tuple[float, int, _Connection]]) -> None:
        """Over `max_unread_total` of answers waiting for their clients to read them, drop
        the connections stuck longest until under it."""
        total = sum(size for _, size, _ in unread)
        if total <= self.max_unread_total:
            return
        unread.sort(key=lambda item: item[0])
        for _, size, connection in unread:
            connection.abort()
            total -= size
            if total <= self.max_unread_total:
                break
