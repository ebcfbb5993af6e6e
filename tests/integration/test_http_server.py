"""The proxy's HTTP server (`kvlab.net.http`) over real sockets, at the level of raw bytes:
keep-alive, pipelining, chunked bodies, 100-continue, limits, malformed input, shutdown.

The classic attacks on an HTTP/1.1 parser and what each gets (`test_strict_parsing`); all are
answered with the status below and `Connection: close`. llhttp refuses most by itself (L);
the rest are the server's own checks (S):

| request | answer |
|---|---|
| Content-Length and Transfer-Encoding together | 400 (L) |
| Content-Length twice, equal or not; `3, 3` | 400 (L) |
| Content-Length not a number, negative, `+3`, overflowing | 400 (L) |
| Transfer-Encoding other than chunked: `gzip`; `gzip, chunked` | 501 (S) |
| Transfer-Encoding twice (`gzip` then `chunked`) | 400 (S) |
| Transfer-Encoding in HTTP/1.0 | 400 (S) |
| obs-fold (a header line starting with a space) | 400 (L) |
| whitespace between a header name and the colon | 400 (L) |
| bare LF line endings; a bare CR | 400 (L) |
| NUL, CR or another control character in a header value | 400 (L) |
| an invalid character in the method; an unknown or lowercase method | 400 (L) |
| an invalid character in a header name; an empty one | 400 (L) |
| HTTP/1.1 without Host; Host twice | 400 (S) |
| 101 different headers; a header repeated 101 times | 431 (S) |
| HTTP/2.0, HTTP/0.9 | 505 (S) |
| HTTP/1.2, HTTP/9.9 | 400 (L) |
| a chunk size overflowing 64 bits; a chunk size not hex | 400 (L) |
| a NUL or tab in the target | 400 (L) |
| raw bytes >= 0x80 in the target that are not UTF-8 | 400 (S) |
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest

from kvlab.cluster.ports import free_port_block
from kvlab.net.http import (
    HttpError,
    HttpServer,
    Later,
    Request,
    Response,
    Router,
    json_response,
)

MAX_BODY = 1000


async def echo(request: Request) -> Response:
    return json_response({"method": request.method, "path": request.path,
                          "query": request.query, "tail": request.tail,
                          "body": request.body.decode()})


async def slow(request: Request) -> Response:
    await asyncio.sleep(float(request.query.get("s", "0.05")))
    return Response(body=b"slow")


async def boom(request: Request) -> Response:
    raise RuntimeError("handler bug")


BIG = b"b" * 256 * 1024


LATER: list[asyncio.Future] = []  # every future a direct handler answered with
CALLED: list[str] = []  # the tail of every request the direct handler was called for


def direct(request: Request) -> Response | Later:
    """A direct (non-coroutine) handler: answers now, or later from a future's result."""
    CALLED.append(request.tail)
    delay = request.query.get("s")
    if delay is None:
        return Response(body=b"now")
    if delay == "fail":
        raise HttpError(418, "teapot", "refused before starting")
    if delay == "coroutine":  # an async handler in disguise (say, behind a decorator)
        return echo(request)
    if delay == "junk":
        return {"not": "an answer"}  # type: ignore[return-value]
    future = asyncio.get_running_loop().create_future()
    if delay == "cancel":
        asyncio.get_running_loop().call_later(0.05, future.cancel)
    else:
        asyncio.get_running_loop().call_later(float(delay), future.set_result, request.tail)
    LATER.append(future)
    return Later(future, finish_direct)


def finish_direct(tail: str) -> Response:
    if tail == "bad":
        raise HttpError(409, "conflict", "refused when finishing")
    return Response(body=f"later:{tail}".encode())


async def big(request: Request) -> Response:
    return Response(body=BIG)


async def refuse(request: Request) -> Response:
    raise HttpError(409, "conflict", "no", thing=1)


def make_router() -> Router:
    router = Router()
    router.add("GET", "/echo", echo)
    router.add("POST", "/echo", echo)
    router.add("GET", "/slow", slow)
    router.add("GET", "/boom", boom)
    router.add("GET", "/refuse", refuse)
    router.add("GET", "/big", big)
    router.add("GET", "/direct/", direct, prefix=True)
    router.add("GET", "/items/", echo, prefix=True)
    router.add("GET", "/items/special/", slow, prefix=True)
    return router


@pytest.fixture
async def server():
    srv = HttpServer(make_router(), max_body=MAX_BODY, idle_timeout_s=0.5)
    port = free_port_block(1)
    await srv.start("127.0.0.1", port)
    yield srv, port
    await srv.close()


async def read_response(reader: asyncio.StreamReader, head_only: bool = False):
    """(status, headers, body) of one response; reads exactly Content-Length bytes."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(": ")
            headers[name.lower()] = value
    length = int(headers.get("content-length", "0"))
    body = b"" if head_only else await asyncio.wait_for(reader.readexactly(length), 5)
    return status, headers, body


async def connect(port: int):
    return await asyncio.open_connection("127.0.0.1", port)


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


async def until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_keep_alive_serves_many_requests_on_one_connection(server):
    _, port = server
    reader, writer = await connect(port)
    for i in range(3):
        writer.write(f"GET /echo?i={i}&x=a+b%20c HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body)["query"] == {"i": str(i), "x": "a b c"}
        assert headers["date"].endswith(" GMT")
    writer.write(b"GET /echo?key=k1&flag&key=k2 HTTP/1.1\r\nHost: t\r\n\r\n")  # first wins
    assert json.loads((await read_response(reader))[2])["query"] == {"key": "k1", "flag": ""}
    writer.close()


async def test_pipelined_requests_are_answered_in_order(server):
    _, port = server
    reader, writer = await connect(port)
    # The first is slow, the second fast: the answers still come back first-in, first-out.
    writer.write(b"GET /slow?s=0.1 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /echo?n=2 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_response(reader))[2] == b"slow"
    assert json.loads((await read_response(reader))[2])["query"] == {"n": "2"}
    status, _, body = await read_response(reader)
    assert status == 404 and json.loads(body)["error"] == "not_found"
    writer.close()


async def test_chunked_body_and_prefix_routes(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert json.loads((await read_response(reader))[2])["body"] == "hello world"
    writer.write(b"GET /items/a%2Fb HTTP/1.1\r\nHost: t\r\n\r\n")
    assert json.loads((await read_response(reader))[2])["tail"] == "a%2Fb"
    writer.write(b"GET /items/special/x HTTP/1.1\r\nHost: t\r\n\r\n")  # the longer prefix wins
    assert (await read_response(reader))[2] == b"slow"
    writer.write(b"GET /items/ HTTP/1.1\r\nHost: t\r\n\r\n")  # a prefix route needs a rest
    assert (await read_response(reader))[0] == 404
    writer.close()


async def test_expect_100_continue(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == \
        b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"abc")
    assert json.loads((await read_response(reader))[2])["body"] == "abc"
    # Too large: refused before the client sends the body, and the connection ends.
    writer.write(f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {MAX_BODY + 1}\r\n"
                 "Expect: 100-continue\r\n\r\n".encode())
    status, headers, body = await read_response(reader)
    assert status == 413 and json.loads(body)["error"] == "too_large"
    assert headers["connection"] == "close" and await closed(reader)


async def test_too_large_body_is_refused_and_the_connection_stays_usable(server):
    _, port = server
    reader, writer = await connect(port)
    big = b"x" * (MAX_BODY + 1)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(big), big))
    status, _, body = await read_response(reader)
    assert status == 413 and str(MAX_BODY) in json.loads(body)["message"]
    chunks = b"".join(b"64\r\n" + b"y" * 100 + b"\r\n" for _ in range(11)) + b"0\r\n\r\n"
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + chunks)
    assert (await read_response(reader))[0] == 413
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok")
    assert json.loads((await read_response(reader))[2])["body"] == "ok"
    writer.close()


async def test_malformed_request_gets_400_and_the_connection_closes(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.write(b"THIS IS NOT HTTP\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 400 and json.loads(body)["error"] == "bad_request"
    assert headers["connection"] == "close" and await closed(reader)


async def test_errors_are_json(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"DELETE /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 405 and headers["allow"] == "GET, POST"
    assert json.loads(body)["error"] == "method_not_allowed"
    writer.write(b"GET /refuse HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 409 and json.loads(body) == {"error": "conflict", "message": "no",
                                                  "thing": 1}
    writer.write(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")  # a handler bug: 500, still open
    status, _, body = await read_response(reader)
    assert status == 500 and json.loads(body)["error"] == "internal_error"
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_head_and_http_1_0(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, _ = await read_response(reader, head_only=True)
    assert status == 200 and int(headers["content-length"]) > 0
    writer.write(b"GET /echo?after=head HTTP/1.1\r\nHost: t\r\n\r\n")  # no body was sent
    assert json.loads((await read_response(reader))[2])["query"] == {"after": "head"}
    writer.close()
    reader, writer = await connect(port)
    writer.write(b"GET /echo HTTP/1.0\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"] == "close" and await closed(reader)


async def test_close_finishes_the_request_in_flight(server):
    srv, port = server
    reader, writer = await connect(port)
    idle_reader, _ = await connect(port)
    writer.write(b"GET /slow?s=0.2 HTTP/1.1\r\nHost: t\r\n\r\n")
    await until(lambda: not all(c.idle for c in srv.connections))  # it is being served
    closing = asyncio.create_task(srv.close())
    status, headers, body = await read_response(reader)
    assert (status, body, headers["connection"]) == (200, b"slow", "close")
    await closing
    assert await closed(reader) and await closed(idle_reader)
    with pytest.raises(OSError):
        await connect(port)


async def test_idle_connections_are_closed(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /slow?s=0.7 HTTP/1.1\r\nHost: t\r\n\r\n")  # busy beyond the timeout
    assert (await read_response(reader))[2] == b"slow"  # ...is not idle, so not closed
    assert await closed(reader)  # then idle for 0.5 s: closed by the next sweep


async def test_a_client_that_does_not_read_holds_back_the_answers(server):
    """100 pipelined requests for 256 KB each: the server stops answering while the client
    doesn't read, instead of buffering 25 MB for it; all arrive once it reads."""
    srv, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" * 100)
    # Until the connection's worker waits for the client to drain its buffer...
    await until(lambda: any(c._drained is not None for c in srv.connections))
    assert max(c.buffered for c in srv.connections) < 2 * len(BIG)  # ...about one answer
    for _ in range(100):
        assert (await read_response(reader))[2] == BIG
    writer.close()


async def test_half_closed_client_still_gets_its_answers(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /slow?s=0.1 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /echo?n=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    writer.write_eof()  # done sending, still reading (as `nc -N` does)
    assert (await read_response(reader))[2] == b"slow"
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"] == "close" and await closed(reader)


async def test_requests_before_a_malformed_one_are_answered_first(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /slow?s=0.1 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /echo?n=2 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"THIS IS NOT HTTP\r\n\r\n")
    assert (await read_response(reader))[2] == b"slow"
    assert json.loads((await read_response(reader))[2])["query"] == {"n": "2"}
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (400, "close") and await closed(reader)


async def test_upgrades_are_refused(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
                 b"Upgrade: websocket\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 400 and "upgrade" in json.loads(body)["message"]
    assert headers["connection"] == "close" and await closed(reader)


async def test_head_errors_have_no_body(server):
    _, port = server
    reader, writer = await connect(port)
    big = b"x" * (MAX_BODY + 1)
    writer.write(b"HEAD /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(big), big))
    status, headers, _ = await read_response(reader, head_only=True)
    assert status == 413 and int(headers["content-length"]) > 0
    writer.write(b"GET /echo?after=head HTTP/1.1\r\nHost: t\r\n\r\n")  # still in step
    assert json.loads((await read_response(reader))[2])["query"] == {"after": "head"}
    writer.close()


async def test_close_answers_requests_received_but_not_started(server):
    srv, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /slow?s=0.2 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /echo?n=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    await until(lambda: any(c._pending for c in srv.connections))
    closing = asyncio.create_task(srv.close())
    assert (await read_response(reader))[2] == b"slow"
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (200, "close")
    await closing


async def test_expect_continue_waits_its_turn_and_ignores_http_1_0(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /slow?s=0.1 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    assert (await read_response(reader))[2] == b"slow"
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == \
        b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    assert json.loads((await read_response(reader))[2])["body"] == "ok"
    writer.close()
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n"
                 b"Connection: keep-alive\r\n\r\nok")
    status, headers, body = await read_response(reader)  # no 100 Continue before it
    assert status == 200 and json.loads(body)["body"] == "ok"
    assert headers["connection"] == "keep-alive"  # said out loud to a 1.0 client
    writer.write(b"GET /echo HTTP/1.0\r\n\r\n")
    assert (await read_response(reader))[0] == 200 and await closed(reader)


async def test_absolute_form_url_without_a_path(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"GET http://t HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 404 and "no route for /" in json.loads(body)["message"]
    writer.write(b"GET http://t/echo?a=1 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert json.loads((await read_response(reader))[2])["query"] == {"a": "1"}
    writer.close()


async def test_direct_handlers_answer_now_or_later_and_keep_the_order(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /direct/x HTTP/1.1\r\nHost: t\r\n\r\n")  # answered at once
    assert (await read_response(reader))[2] == b"now"
    writer.write(b"GET /direct/a?s=0.1 HTTP/1.1\r\nHost: t\r\n\r\n"  # answered from a future
                 b"GET /echo?n=2 HTTP/1.1\r\nHost: t\r\n\r\n"  # a coroutine handler
                 b"GET /direct/b?s=0 HTTP/1.1\r\nHost: t\r\n\r\n"  # direct, queued behind
                 b"GET /direct/c?s=fail HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /direct/bad?s=0 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"HEAD /direct/x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_response(reader))[2] == b"later:a"
    assert json.loads((await read_response(reader))[2])["query"] == {"n": "2"}
    assert (await read_response(reader))[2] == b"later:b"
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["error"]) == (418, "teapot")
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["error"]) == (409, "conflict")
    status, headers, _ = await read_response(reader, head_only=True)
    assert status == 200 and headers["content-length"] == "3"
    writer.write(b"GET /direct/x HTTP/1.1\r\nHost: t\r\n\r\n")  # no body came after HEAD
    assert (await read_response(reader))[2] == b"now"
    writer.close()


async def test_a_client_leaving_before_a_later_answer(server):
    srv, port = server
    _, writer = await connect(port)
    writer.write(b"GET /direct/gone?s=0.1 HTTP/1.1\r\nHost: t\r\n\r\n")
    await until(lambda: any(not c.idle for c in srv.connections))
    writer.transport.abort()
    await until(lambda: not srv.connections)
    await until(LATER[-1].done)  # the answer's future completes for a connection that is gone
    await asyncio.sleep(0)  # and its callback runs
    reader, writer = await connect(port)
    writer.write(b"GET /direct/x?s=0 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_response(reader))[2] == b"later:x"
    writer.close()


async def test_direct_handler_odd_answers(server):
    """A cancelled operation answers 503 (whether the answer was due now or queued), a
    coroutine returned by a plain function is awaited, anything else is a 500."""
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /direct/a?s=cancel HTTP/1.1\r\nHost: t\r\n\r\n"  # answered now...
                 b"GET /echo?n=2 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /direct/b?s=cancel HTTP/1.1\r\nHost: t\r\n\r\n"  # ...and queued
                 b"GET /direct/c?s=coroutine HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET /direct/d?s=junk HTTP/1.1\r\nHost: t\r\n\r\n")
    for expected in (503, 200, 503, 200, 500):
        status, _, body = await read_response(reader)
        assert status == expected, body
    writer.write(b"GET /direct/e?s=coroutine HTTP/1.1\r\nHost: t\r\n\r\n")  # first in line
    assert json.loads((await read_response(reader))[2])["tail"] == "e"
    writer.close()


async def test_nothing_after_an_abort_is_served(server, monkeypatch):
    """A refused body past the discard limit aborts the connection: a request pipelined
    behind it in the same chunk must not reach its handler."""
    _, port = server
    monkeypatch.setattr("kvlab.net.http.DISCARD_LIMIT", 5000)
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6000\r\n\r\n")
    assert (await read_response(reader))[0] == 413
    CALLED.clear()
    writer.write(b"x" * 6000 + b"GET /direct/after-abort HTTP/1.1\r\nHost: t\r\n\r\n")
    assert await closed(reader)
    assert "after-abort" not in CALLED


async def test_no_stray_100_continue_when_the_body_came_anyway(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /slow?s=0.1 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                 b"Expect: 100-continue\r\n\r\nok"  # a client that doesn't wait for 100
                 b"GET /echo?n=3 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_response(reader))[2] == b"slow"
    assert json.loads((await read_response(reader))[2])["body"] == "ok"
    assert json.loads((await read_response(reader))[2])["query"] == {"n": "3"}
    writer.write(b"GET /echo?n=4 HTTP/1.1\r\nHost: t\r\n\r\n")  # next comes its answer
    assert json.loads((await read_response(reader))[2])["query"] == {"n": "4"}
    writer.close()


# The front door: limits, deadlines, a cap on connections, strict parsing, raw UTF-8


@pytest.fixture
async def strict():
    """A server with small limits, so that tests reach them quickly."""
    srv = HttpServer(make_router(), max_body=MAX_BODY, request_timeout_s=0.3,
                     max_connections=3, max_queued=4 * MAX_BODY, max_queued_total=6 * MAX_BODY)
    port = free_port_block(1)
    await srv.start("127.0.0.1", port)
    yield srv, port
    await srv.close()


async def refused_with(reader: asyncio.StreamReader, status: int, code: str) -> dict:
    got, headers, body = await read_response(reader)
    assert (got, json.loads(body)["error"]) == (status, code), body
    assert headers["connection"] == "close" and await closed(reader)
    return headers


def send_forever(port: int, head: bytes, filler: bytes) -> threading.Thread:
    """A thread sending `head`, then `filler` over and over until the server stops it."""
    sock = socket.create_connection(("127.0.0.1", port))

    def run() -> None:
        try:
            sock.sendall(head)
            for _ in range(4096):  # 4096 x 64 KiB: 256 MiB at most
                sock.sendall(filler)
        except OSError:
            pass  # the server closed: what the test waits for

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.sock = sock  # type: ignore[attr-defined]
    return thread


def answer_of(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("what, head, filler, status, code", [
    ("a URL", b"GET /echo?k=", b"a" * 65536, 414, "uri_too_long"),
    ("a header", b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: ", b"b" * 65536, 431,
     "headers_too_large"),
    ("header lines", b"GET /echo HTTP/1.1\r\nHost: t\r\n", b"X: y\r\n" * 13107, 431,
     "headers_too_large"),
], ids=["url", "header", "lines"])
async def test_endless_url_or_headers_are_refused_without_buffering(server, what, head, filler,
                                                                  status, code):
    """Up to 256 MiB sent: the answer comes after the limit, not after the sender is done,
    and the server serves other clients meanwhile."""
    _, port = server
    sender = await asyncio.to_thread(send_forever, port, head, filler)
    answer = await asyncio.to_thread(answer_of, sender.sock)
    assert answer.startswith(b"HTTP/1.1 %d " % status) and b"Connection: close" in answer
    assert code.encode() in answer or b"Content-Length" in answer
    reader, writer = await connect(port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()
    sender.sock.close()
    await asyncio.to_thread(sender.join, 10)
    assert not sender.is_alive()


async def test_limits_on_one_chunk(server):
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"GET /echo?k=" + b"a" * 8200 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    await refused_with(reader, 414, "uri_too_long")
    reader, writer = await connect(port)
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
    await refused_with(reader, 431, "headers_too_large")
    reader, writer = await connect(port)  # just under the limits: served
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 300) for i in range(99))
    writer.write(b"GET /echo?k=" + b"a" * 8000 + b" HTTP/1.1\r\nHost: t\r\n" + headers
                 + b"\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_a_request_trickling_in_gets_408(strict):
    _, port = strict
    reader, writer = await connect(port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")  # a whole request: served
    assert (await read_response(reader))[0] == 200
    answer = asyncio.create_task(refused_with(reader, 408, "request_timeout"))
    for byte in b"GET /echo HTTP/1.1\r\nHost: t\r\n":  # a byte every 0.1 s: never whole
        if answer.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.1)
    await answer
    reader, writer = await connect(port)  # a body that stops coming
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
    await refused_with(reader, 408, "request_timeout")


async def test_unused_connections_and_unread_answers_are_dropped(strict):
    """A connection that never sends is closed after the request deadline (it would hold a
    slot of the cap for the idle timeout); over the total of answers unread, the client
    stuck longest is dropped."""
    srv, port = strict
    silent, _ = await connect(port)
    assert await closed(silent)
    srv.max_unread_total = 100_000
    reader, writer = await connect(port)
    writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" * 50)  # 12.8 MB, never read
    await until(lambda: not srv.connections, timeout=5)
    writer.close()


async def test_connections_beyond_the_cap_are_refused_politely(strict):
    srv, port = strict
    held = [await connect(port) for _ in range(3)]
    for reader, writer in held:  # used: not closed as silent meanwhile
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(reader))[0] == 200
    reader, writer = await connect(port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    headers = await refused_with(reader, 503, "too_many_connections")
    assert headers["retry-after"] == "1"
    held[0][1].close()
    await until(lambda: len(srv.connections) == 2)
    reader, writer = await connect(port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


def post_too_large_and_close(port: int) -> bytes:
    """A client that says `Connection: close` and sends its whole 2 MB body before reading."""
    body = b"x" * 2_000_000
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        try:
            sock.sendall(body)
        except OSError:
            pass
        return answer_of(sock)


async def test_413_arrives_before_the_close(server):
    _, port = server
    for _ in range(3):  # a reset lost the answer most of the time, not always
        answer = await asyncio.to_thread(post_too_large_and_close, port)
        assert answer.startswith(b"HTTP/1.1 413 ") and b"too_large" in answer


async def test_queued_bodies_are_bounded(strict):
    """A client pipelining bodies without reading the answers: reading pauses once its
    parsed, unserved bodies pass the connection's bound, and every answer still comes."""
    srv, port = strict
    reader, writer = await connect(port)
    body = b"z" * (MAX_BODY - 10)
    request = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)
    writer.write(b"GET /slow?s=0.3 HTTP/1.1\r\nHost: t\r\n\r\n" + request * 1000)
    await until(lambda: srv.queued > 0)
    await asyncio.sleep(0.1)  # what it would have parsed meanwhile
    # llhttp parses a chunk to its end: the bound holds to within one chunk (256 KiB).
    assert srv.queued <= srv.max_queued + 256 * 1024 < 1000 * len(body)
    assert (await read_response(reader))[2] == b"slow"
    for _ in range(1000):
        assert json.loads((await read_response(reader))[2])["body"] == body.decode()
    assert srv.queued == 0
    writer.close()


async def test_raw_utf8_in_the_target(server):
    _, port = server
    reader, writer = await connect(port)
    # Raw, pipelined, between requests whose bodies hold raw UTF-8 too.
    writer.write("GET /echo?key=é&k2=日本 HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                 + "POST /echo?key=ü HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n"
                   "ab\nü\n".encode()
                 + "GET /items/ä%20b HTTP/1.1\r\nHost: t\r\nX-Name: é\r\n\r\n".encode())
    assert json.loads((await read_response(reader))[2])["query"] == {"key": "é", "k2": "日本"}
    answer = json.loads((await read_response(reader))[2])
    assert (answer["query"], answer["body"]) == ({"key": "ü"}, "ab\nü\n")
    assert json.loads((await read_response(reader))[2])["tail"] == "%C3%A4%20b"
    writer.write("GET /echo?key=%C3%A9 HTTP/1.1\r\nHost: t\r\n\r\n".encode())  # the same
    assert json.loads((await read_response(reader))[2])["query"] == {"key": "é"}
    writer.write(b"GET /echo?key=\xff HTTP/1.1\r\nHost: t\r\n\r\n")  # not UTF-8
    status, _, body = await read_response(reader)
    assert status == 400 and "UTF-8" in json.loads(body)["message"]
    writer.close()


ATTACKS = {
    "CL and TE": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "CL twice": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                 b"Content-Length: 3\r\n\r\nabc", 400),
    "CL conflicting": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                       b"Content-Length: 4\r\n\r\nabcd", 400),
    "CL list": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    "CL not a number": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", 400),
    "CL negative": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
    "CL plus": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc", 400),
    "CL overflow": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: "
                    b"99999999999999999999999\r\n\r\n", 400),
    "TE gzip": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc", 501),
    "TE gzip, chunked": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, "
                         b"chunked\r\n\r\n0\r\n\r\n", 501),
    "TE gzip then chunked": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "TE in HTTP/1.0": (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"0\r\n\r\n", 400),
    "obs-fold": (b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n", 400),
    "space before colon": (b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A : a\r\n\r\n", 400),
    "bare LF": (b"GET /echo HTTP/1.1\nHost: t\n\n", 400),
    "bare LF in headers": (b"GET /echo HTTP/1.1\r\nHost: t\nX: y\r\n\r\n", 400),
    "bare CR": (b"GET /echo HTTP/1.1\r\nHost: t\rX: y\r\n\r\n", 400),
    "NUL in value": (b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", 400),
    "CR in value": (b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400),
    "control in value": (b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n", 400),
    "bad char in method": (b"G(T /echo HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "unknown method": (b"FOO /echo HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "lowercase method": (b"get /echo HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "bad char in name": (b"GET /echo HTTP/1.1\r\nHost: t\r\nX(A: a\r\n\r\n", 400),
    "empty name": (b"GET /echo HTTP/1.1\r\nHost: t\r\n: a\r\n\r\n", 400),
    "no Host": (b"GET /echo HTTP/1.1\r\n\r\n", 400),
    "Host twice": (b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "101 headers": (b"GET /echo HTTP/1.1\r\nHost: t\r\n"
                    + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    "a header 101 times": (b"GET /echo HTTP/1.1\r\nHost: t\r\n" + b"X: v\r\n" * 102
                           + b"\r\n", 431),
    "HTTP/2.0": (b"GET /echo HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    "HTTP/0.9": (b"GET /echo\r\n\r\n", 505),
    "HTTP/1.2": (b"GET /echo HTTP/1.2\r\nHost: t\r\n\r\n", 400),
    "HTTP/9.9": (b"GET /echo HTTP/9.9\r\nHost: t\r\n\r\n", 400),
    "chunk size overflow": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked"
                            b"\r\n\r\nFFFFFFFFFFFFFFFFF\r\n", 400),
    "chunk size not hex": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked"
                           b"\r\n\r\nzz\r\n", 400),
    "NUL in target": (b"GET /ec\x00ho HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "tab in target": (b"GET /ec\tho HTTP/1.1\r\nHost: t\r\n\r\n", 400),
}


async def test_strict_parsing(server):
    """Each attack of the module's list, after a request that is served: the answer, then
    the close; the connection's earlier request is unaffected."""
    _, port = server
    for name, (attack, status) in ATTACKS.items():
        reader, writer = await connect(port)
        writer.write(b"GET /echo?before HTTP/1.1\r\nHost: t\r\n\r\n" + attack)
        assert (await read_response(reader))[0] == 200, name
        got, headers, body = await read_response(reader)
        assert got == status, (name, body)
        assert json.loads(body)["error"] and headers["connection"] == "close", name
        assert await closed(reader), name
    reader, writer = await connect(port)  # what stays allowed: trailers are read and dropped
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n"
                 b"2;ext=1\r\nok\r\n0\r\nHost: evil\r\n\r\n"
                 b"GET /echo HTTP/1.0\r\n\r\n")
    assert json.loads((await read_response(reader))[2])["body"] == "ok"
    assert (await read_response(reader))[0] == 200
    writer.close()
