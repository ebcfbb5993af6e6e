"""The proxy's replica link against a real WebSocket server: frames stay under their bound,
and a request that waited past its operation's deadline is never sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from kvlab.core.messages import HintRequest, Ping, ReadRequest, WriteRequest
from kvlab.core.record import Record
from kvlab.core.version import Version
from kvlab.net import codec
from kvlab.net.framing import FRAME_BYTES, MAX_FRAME
from kvlab.net.link import UP, ReplicaLink

MiB = 1024 * 1024


class Node:
    """A stand-in for a node's /replica: it records every frame, and can be held from
    reading (as a node busy with a big batch is) until `release` is set."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.sockets: list[web.WebSocketResponse] = []
        self.release = asyncio.Event()
        self.release.set()

    async def replica(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        self.sockets.append(ws)
        while True:
            await self.release.wait()
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                return ws
            self.frames.append(msg.data)

    def messages(self) -> list:
        return [m for frame in self.frames for m in codec.decode(frame)]


@pytest.fixture
async def node() -> AsyncIterator[tuple[Node, str]]:
    fake = Node()
    app = web.Application()
    app.router.add_get("/replica", fake.replica)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}"
    fake.release.set()
    await runner.cleanup()


async def _link(url: str, session: aiohttp.ClientSession, max_wait_s: float,
                on_lost=lambda *_: None) -> ReplicaLink:
    link = ReplicaLink("n1", url, session, lambda *_: None, on_lost,
                       lambda *_: None, lambda *_: None, max_wait_s=max_wait_s)
    link.start()
    deadline = asyncio.get_running_loop().time() + 5
    while link.state != UP:
        assert asyncio.get_running_loop().time() < deadline, "the link never came up"
        await asyncio.sleep(0.01)
    return link


def _write(req: int, size: int) -> WriteRequest:
    return WriteRequest(req, Record(f"k{req}", bytes(size), Version(1, 0, "p")))


async def _until(condition, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_concurrent_big_writes_go_in_frames_under_the_bound(node) -> None:
    fake, url = node
    async with aiohttp.ClientSession() as session:
        link = await _link(url, session, max_wait_s=30)
        # 24 MiB queued in one loop turn went out as one frame; 100 MiB made one past the
        # node's limit (it closed the socket with 1009, losing all of them).
        for req in range(1, 25):
            assert link.send(_write(req, MiB))
        assert link.send(_write(25, 2 * FRAME_BYTES))  # larger than the bound: alone
        await _until(lambda: len(fake.messages()) == 25)
        sizes = [len(frame) for frame in fake.frames]
        assert link.connects == 1 and link.state == UP
        assert [m.req for m in fake.messages()] == list(range(1, 26))  # in order
        assert max(sizes[:-1]) <= FRAME_BYTES + MiB // 8, sizes
        assert len(codec.decode(fake.frames[-1])) == 1
        await link.stop()


async def test_a_request_past_its_deadline_is_never_sent(node) -> None:
    fake, url = node
    async with aiohttp.ClientSession() as session:
        link = await _link(url, session, max_wait_s=0.3)
        fake.release.clear()  # the node reads nothing for a while
        # Far more than the node's reader and the sockets' buffers take in: the rest waits
        # in the link's queue until the node reads again, long past its 0.3 s.
        for req in range(1, 7):
            assert link.send(_write(req, 16 * MiB))
        assert link.send(ReadRequest(7, "late"))
        # A hint goes at its operation's end, to a replica that missed the write: late or
        # not, it is the only copy on its way (dropped, the handoff was lost unseen).
        assert link.send(HintRequest(8, Record("h", b"v", Version(1, 0, "p")), "n2"))
        assert link.send_control(Ping(7))  # nothing waits on a control: it still goes
        await asyncio.sleep(1.0)  # the node's stall
        fake.release.set()
        await _until(lambda: any(isinstance(m, Ping) for m in fake.messages()))
        sent = [m.req for m in fake.messages() if not isinstance(m, (Ping, HintRequest))]
        assert [m.req for m in fake.messages() if isinstance(m, HintRequest)] == [8]
        # The first frame left at once; whatever was still queued after 0.3 s was dropped.
        assert sent[0] == 1 and 7 not in sent, sent
        assert len(sent) + link.expired == 7, (sent, link.expired)
        # A fresh request is sent as usual.
        assert link.send(ReadRequest(5, "fresh"))
        await _until(lambda: any(getattr(m, "req", None) == 5 for m in fake.messages()))
        await link.stop()


async def test_a_hook_that_fails_when_the_socket_closes_does_not_end_the_link(node) -> None:
    fake, url = node
    failures = []

    def on_lost(*_: object) -> None:  # a bug in what the link calls: once
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug in the hook")

    async with aiohttp.ClientSession() as session:
        link = await _link(url, session, max_wait_s=30, on_lost=on_lost)
        assert link.send(ReadRequest(1, "k"))  # in flight when the socket goes
        await _until(lambda: len(fake.messages()) == 1)
        await fake.sockets[0].close()
        # The task ended with the hook's error before: the link stayed down for good.
        await _until(lambda: link.connects == 2 and link.state == UP)
        assert failures and link.send(ReadRequest(2, "k"))
        await _until(lambda: len(fake.messages()) == 2)
        await link.stop()
