"""The proxy's HTTP server (`kvlab.net.http`) over real sockets, at the level of raw bytes:
keep-alive, pipelining, chunked bodies, 100-continue, limits, malformed input, shutdown."""

from __future__ import annotations

import asyncio
import json

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


@pytest.fixture
async def server():
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
    srv = HttpServer(router, max_body=MAX_BODY, idle_timeout_s=0.5)
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
