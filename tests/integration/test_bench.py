"""`kvlab bench` as a user runs it, against a small in-test server over a dict.

The server speaks both APIs the tool targets (the Go-compatible one and /kv/{key}), counts what
it was sent, and can be told to fail or stall, so the JSON report can be checked against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field

import pytest
from aiohttp import web

RUN_TIMEOUT = 30


@dataclass
class Stub:
    data: dict[str, str] = field(default_factory=dict)
    seen: Counter[str] = field(default_factory=Counter)
    quorums: Counter[str] = field(default_factory=Counter)
    fail_writes: bool = False
    stall_reads: float = 0.0  # seconds every read but the first waits


def stub_app(stub: Stub) -> web.Application:
    def note(request: web.Request, what: str) -> None:
        stub.seen[what] += 1
        for q in ("r", "w"):
            if q in request.query:
                stub.quorums[f"{what} {q}={request.query[q]}"] += 1

    async def read(key: str) -> str | None:
        # The first request is kvlab bench's reachability probe: it must get its answer.
        if stub.stall_reads and sum(stub.seen.values()) > 1:
            await asyncio.sleep(stub.stall_reads)
        return stub.data.get(key)

    def write(key: str, value: str) -> web.Response | None:
        if stub.fail_writes:
            return web.Response(status=500, text="disk on fire")
        stub.data[key] = value
        return None

    async def compat_get(request: web.Request) -> web.Response:
        note(request, "get")
        value = await read(request.query["key"])
        if value is None:
            return web.Response(status=404)
        return web.json_response({"value": value})

    async def compat_set(request: web.Request) -> web.Response:
        note(request, "set")
        body = await request.json()
        return write(body["key"], body["value"]) or web.Response(text="OK")

    async def rest_get(request: web.Request) -> web.Response:
        note(request, "kv get")
        value = await read(request.match_info["key"])
        return web.Response(status=404) if value is None else web.Response(text=value)

    async def rest_put(request: web.Request) -> web.Response:
        note(request, "kv put")
        value = (await request.read()).decode()
        return write(request.match_info["key"], value) or web.Response(status=204)

    app = web.Application()
    app.router.add_get("/get", compat_get)
    app.router.add_post("/set", compat_set)
    app.router.add_get("/kv/{key}", rest_get)
    app.router.add_put("/kv/{key}", rest_put)
    return app


@pytest.fixture
def stub() -> Stub:
    return Stub()


@pytest.fixture
async def url(aiohttp_server, stub: Stub) -> str:
    server = await aiohttp_server(stub_app(stub), host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


async def bench(*args: str) -> tuple[int, str, str]:
    """Run `kvlab bench` without blocking the loop that serves the stub."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvlab", "bench", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(), err.decode()


async def bench_json(*args: str) -> dict:
    code, out, err = await bench(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def assert_sane_latency(report: dict) -> None:
    assert 0 < report["p50_ms"] <= report["p90_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert report["max_ms"] < RUN_TIMEOUT * 1000


async def test_compat_mix_with_preload(url: str, stub: Stub) -> None:
    report = await bench_json(
        "--url", url, "--api", "compat", "--requests", "400", "--mix", "3:1", "--keys", "50",
        "--concurrency", "8", "--value-size", "20", "--preload", "--w", "2", "--seed", "7",
    )
    assert (report["ops"], report["reads"], report["writes"]) == (400, 300, 100)
    assert report["errors"] == {} and report["not_found"] == 0
    assert report["preload"]["keys"] == 50 and report["preload"]["errors"] == 0
    assert_sane_latency(report)
    assert report["ops_per_sec"] > 0 and report["duration_s"] > 0
    assert (report["api"], report["url"], report["concurrency"]) == ("compat", url, 8)
    # What the server saw: the probe read, then 50 preload writes and the measured mix.
    assert stub.seen == {"get": 301, "set": 150}
    assert stub.quorums == {"set w=2": 150}
    assert len(stub.data) == 50 and all(len(v) == 20 for v in stub.data.values())


async def test_rest_reads_of_missing_keys_are_not_errors(url: str, stub: Stub) -> None:
    report = await bench_json(
        "--url", url, "--api", "rest", "--requests", "120", "--mix", "1:0", "--r", "2",
        "--concurrency", "4",
    )
    assert (report["ops"], report["reads"], report["writes"]) == (120, 120, 0)
    assert report["not_found"] == 120 and report["errors"] == {}
    assert_sane_latency(report)
    assert stub.seen == {"kv get": 121}
    assert stub.quorums == {"kv get r=2": 121}


async def test_errors_are_tallied_by_kind(url: str, stub: Stub) -> None:
    stub.fail_writes = True
    report = await bench_json(
        "--url", url, "--api", "rest", "--requests", "40", "--mix", "1:1", "--concurrency", "4",
    )
    assert (report["reads"], report["writes"]) == (20, 20)
    assert report["errors"] == {"http_500": 20} and report["error_count"] == 20
    assert report["not_found"] == 20


async def test_slow_answers_count_as_timeouts(url: str, stub: Stub) -> None:
    stub.stall_reads = 1.0
    report = await bench_json(
        "--url", url, "--api", "compat", "--requests", "8", "--mix", "1:0", "--concurrency", "8",
        "--timeout", "0.2",
    )
    assert (report["ops"], report["reads"]) == (8, 8)
    assert report["errors"] == {"timeout": 8} and report["not_found"] == 0
    # No answer, no latency.
    assert report["max_ms"] == 0


async def test_text_report(url: str) -> None:
    code, out, err = await bench("--url", url, "--api", "compat", "--requests", "20")
    assert code == 0, err
    assert "operations   20 in" in out and "errors       none" in out
    # stderr is a pipe, not a terminal: no progress line.
    assert err == ""


def test_unreachable_url_exits_3() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    proc = subprocess.run(
        [sys.executable, "-m", "kvlab", "bench", "--url", f"http://127.0.0.1:{port}",
         "--requests", "10"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 3
    assert f"cannot reach http://127.0.0.1:{port}" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mix", "1:x"], "--mix"),
        (["--mix", "0:0"], "--mix"),
        (["--concurrency", "0"], "--concurrency"),
        (["--requests", "5", "--duration", "1"], "not allowed with"),
        (["--requests", "0"], "--preload"),
        (["--url", "https://127.0.0.1:9"], "http://"),
        (["--url", "127.0.0.1:9"], "http://"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvlab", "bench", "--url", "http://127.0.0.1:9", *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 2
    assert message in proc.stderr


async def test_connections_closed_by_the_server() -> None:
    """A server that says `Connection: close` on every answer is served over fresh
    connections; one that hangs up without answering fails the probe: exit 3, not a report."""
    hang_up = False

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            if not hang_up:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n"
                             b"\r\nok")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        report = await bench_json("--url", url, "--requests", "200", "--mix", "1:0",
                                  "--concurrency", "4")
        assert report["reads"] == 200 and report["errors"] == {}
        hang_up = True
        code, out, err = await bench("--url", url, "--requests", "50")
        assert (code, out) == (3, "") and "the server closed the connection" in err
