"""Real node processes talking over the replica channel: serving, hints, anti-entropy, purges.

Each test starts `python -m kvlab.net.node` processes on free 127.0.0.1 ports with their own
data folders and speaks to them as a coordinator would, over `/replica` with the codec. The
nodes talk to each other over their own peer links. Conditions are awaited with deadlines.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
import pytest

from kvlab.cluster.ports import free_port_block
from kvlab.core.messages import (
    ErrorReply,
    HintRequest,
    Mechanism,
    Message,
    Push,
    ReadReply,
    ReadRequest,
    Reply,
    Request,
    Superseded,
    TreeRequest,
    WriteReply,
    WriteRequest,
)
from kvlab.core.record import Record
from kvlab.core.version import Version
from kvlab.net import codec

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
_reqs = itertools.count(1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rec(key: str, value: bytes | None, physical: int | None = None) -> Record:
    return Record(key, value, Version(physical or now_ms(), 0, "t"))


async def eventually(condition: Callable[[], Awaitable[object]], timeout_s: float = 15.0,
                     message: str = "condition") -> object:
    """Poll `condition` until it is truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        await asyncio.sleep(0.05)


class NodeProc:
    """One node process; `start` again after `stop` reuses its port and data folder."""

    def __init__(self, cluster: Cluster, name: str, port: int) -> None:
        self.cluster = cluster
        self.name = name
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.data = cluster.root / name
        self.log = cluster.root / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "kvlab.net.node", "--name", self.name, "--host", HOST,
                "--port", str(self.port), "--data", str(self.data), "--durability", "none",
                *self.cluster.flags]
        for peer in self.cluster.nodes.values():
            if peer is not self:
                argv += ["--peer", f"{peer.name}={peer.url}"]
        return argv

    async def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        await eventually(self._healthy, 20, f"{self.name} to answer /health")

    async def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
        try:
            async with self.cluster.session.get(f"{self.url}/health") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a short grace."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    async def stats(self) -> dict:
        async with self.cluster.session.get(f"{self.url}/stats") as response:
            return await response.json()

    async def health(self) -> dict:
        async with self.cluster.session.get(f"{self.url}/health") as response:
            return await response.json()


class Channel:
    """A coordinator's connection to one node's replica channel."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.replies: dict[int, Reply] = {}

    async def send(self, messages: Sequence[Message]) -> None:
        await self.ws.send_bytes(codec.encode(messages))

    async def call(self, requests: Sequence[Request], timeout_s: float = 10.0) -> list[Reply]:
        """Send `requests` in one frame; their replies, in the same order."""
        await self.send(requests)
        want = [r.req for r in requests]
        deadline = time.monotonic() + timeout_s
        while not all(req in self.replies for req in want):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no reply to {[r for r in want if r not in self.replies]}")
            msg = await self.ws.receive(timeout=left)
            assert msg.type == aiohttp.WSMsgType.BINARY, f"channel closed: {msg}"
            self.replies.update((r.req, r) for r in codec.decode_replies(msg.data))
        return [self.replies.pop(req) for req in want]

    async def read(self, key: str) -> Record | None:
        [reply] = await self.call([ReadRequest(next(_reqs), key)])
        assert isinstance(reply, ReadReply), reply
        return reply.record


class Cluster:
    def __init__(self, root: Path, session: aiohttp.ClientSession, names: Sequence[str],
                 flags: Sequence[str]) -> None:
        self.root = root
        self.session = session
        self.flags = list(flags)
        base = free_port_block(len(names))
        self.nodes = {name: NodeProc(self, name, base + i) for i, name in enumerate(names)}
        self._channels: list[Channel] = []

    def __getitem__(self, name: str) -> NodeProc:
        return self.nodes[name]

    async def channel(self, name: str, query: str = "") -> Channel:
        ws = await self.session.ws_connect(f"{self.nodes[name].url}/replica{query}",
                                           max_msg_size=0)
        channel = Channel(ws)
        self._channels.append(channel)
        return channel

    async def write_all(self, records: Sequence[Record], names: Sequence[str]) -> None:
        """Write `records` to each of `names`, as a coordinator with W = all would."""
        for name in names:
            channel = await self.channel(name)
            replies = await channel.call([WriteRequest(next(_reqs), r) for r in records])
            # Superseded by the very same version: anti-entropy brought it there first.
            assert all(isinstance(reply, WriteReply) or
                       (isinstance(reply, Superseded) and reply.version == record.version)
                       for reply, record in zip(replies, records)), replies
            await channel.ws.close()

    async def start(self, names: Sequence[str] | None = None) -> None:
        await asyncio.gather(*[self.nodes[n].start() for n in names or self.nodes])

    async def peers_up(self) -> None:
        """Wait until every running node has its links to the others up."""
        async def up() -> bool:
            for node in self.nodes.values():
                if any(state != "up" for state in (await node.health())["peers"].values()):
                    return False
            return True
        await eventually(up, 15, "the links between the nodes")

    async def close(self) -> None:
        for channel in self._channels:
            await channel.ws.close()
        for node in self.nodes.values():
            node.stop()


@pytest.fixture
async def make_cluster(tmp_path: Path) -> AsyncIterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    def make(names: Sequence[str] = ("n1", "n2", "n3"), flags: Sequence[str] = ()) -> Cluster:
        cluster = Cluster(tmp_path / f"c{len(clusters)}", session, names, flags)
        cluster.root.mkdir()
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            await cluster.close()
        await session.close()
    leftovers = [n.name for c in clusters for n in c.nodes.values()
                 if n.proc is not None and n.proc.poll() is None]
    assert not leftovers, f"node processes outlived the test: {leftovers}"


async def rounds_after(node: NodeProc, t_ms: int, count: int) -> bool:
    """`node` finished `count` anti-entropy rounds in all, and the clock is past `t_ms`."""
    return now_ms() > t_ms and (await node.stats())["healing"]["ae_rounds"] >= count


# -- one node, alone ----------------------------------------------------------------------


async def test_a_node_alone_serves_refuses_the_far_future_and_answers_superseded(make_cluster):
    cluster = make_cluster(["solo"], ["--max-clock-ahead", "5"])
    await cluster.start()
    c = await cluster.channel("solo")
    newer = rec("k", b"new")
    [reply] = await c.call([WriteRequest(req := next(_reqs), newer)])
    assert reply == WriteReply(req)
    assert await c.read("k") == newer and await c.read("absent") is None

    older = rec("k", b"old", newer.version.physical - 1000)
    [reply] = await c.call([WriteRequest(req := next(_reqs), older)])
    assert reply == Superseded(req, newer.version)

    future = rec("k", b"from a broken clock", now_ms() + 3_600_000)
    [reply] = await c.call([WriteRequest(req := next(_reqs), future)])
    assert isinstance(reply, ErrorReply) and reply.req == req and "ahead" in reply.error
    assert await c.read("k") == newer  # neither the older nor the far-future write took

    stats = await cluster["solo"].stats()
    assert stats["keys"] == 1 and stats["healing"]["refused"] == 1
    assert stats["healing"]["superseded"] == 1 and stats["peers"] == {}
    assert {"reads", "writes", "commits", "uptime_s", "last_error", "hints_held"} <= set(stats)


async def test_replies_go_back_on_the_socket_their_request_came_in_on(make_cluster):
    cluster = make_cluster(["solo"])
    await cluster.start()
    await cluster.write_all([rec("x", b"1")], ["solo"])
    a, b = await cluster.channel("solo"), await cluster.channel("solo")
    # The same request numbers on two connections: each gets its own answers.
    for _ in range(3):
        ra, rb = await asyncio.gather(a.call([ReadRequest(7, "x"), ReadRequest(8, "nope")]),
                                      b.call([ReadRequest(7, "nope"), ReadRequest(8, "x")]))
        assert [r.record and r.record.value for r in ra] == [b"1", None]
        assert [r.record and r.record.value for r in rb] == [None, b"1"]
    assert (await cluster["solo"].stats())["coordinators"] == 2


async def test_a_malformed_frame_closes_only_its_socket(make_cluster):
    cluster = make_cluster(["solo"])
    await cluster.start()
    bad = await cluster.channel("solo")
    await bad.ws.send_bytes(codec.encode([TreeRequest(1, ("solo",), [0])]))  # wrong shape
    msg = await bad.ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert bad.ws.close_code == 1003
    good = await cluster.channel("solo")
    [reply] = await good.call([WriteRequest(req := next(_reqs), rec("k", b"v"))])
    assert reply == WriteReply(req)
    assert "bad frame" in (await cluster["solo"].stats())["last_error"]


async def test_what_a_node_outside_the_ring_pushes_is_ignored(make_cluster):
    # Any node may connect (one that just joined is known to the others only once the
    # proxy tells them), but the replica takes peer messages from its ring's peers only.
    cluster = make_cluster(["solo"])
    await cluster.start()
    stranger = await cluster.channel("solo", "?from=stranger")
    await stranger.send([Push(1, [rec("pushed", b"by a stranger")], Mechanism.ANTI_ENTROPY)])

    async def ignored() -> bool:
        return (await cluster["solo"].stats())["healing"]["ignored"] >= 1

    await eventually(ignored, 10, "the stranger's push to be ignored")
    assert await (await cluster.channel("solo")).read("pushed") is None
    # A coordinator's connection name is never a node's: replies must not go astray.
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await cluster.channel("solo", "?from=coordinator%231")
    assert caught.value.status == 403


# -- hinted handoff -------------------------------------------------------------------------


async def test_a_hint_is_replayed_when_its_target_starts_and_again_when_it_rejoins(make_cluster):
    # Anti-entropy off: only the hint can bring the record to n3.
    cluster = make_cluster(flags=["--anti-entropy", "off"])
    await cluster.start(["n1", "n2"])  # n3 has never run yet
    c1 = await cluster.channel("n1")
    first = rec("hinted", b"for n3")
    [reply] = await c1.call([HintRequest(req := next(_reqs), first, "n3")])
    assert reply == WriteReply(req)
    assert (await cluster["n1"].stats())["hints_held"] == 1

    await cluster["n3"].start()
    c3 = await cluster.channel("n3")

    async def replayed(record: Record) -> bool:
        return await c3.read(record.key) == record and \
            (await cluster["n1"].stats())["hints_held"] == 0
    await eventually(lambda: replayed(first), 15, "the hint to reach n3")
    healing = (await cluster["n1"].stats())["healing"]
    assert healing["hints_replayed"] == 1 and healing["hints_stored"] == 1
    assert (await cluster["n3"].stats())["healing"]["repaired"]["hint"] == 1

    # n3 goes away again; a hint taken meanwhile reaches it once it is back (the link
    # reconnects, the replay is retried), and the hint survives a restart of n1 too.
    cluster["n3"].stop()
    second = rec("hinted", b"newer, for n3")
    [reply] = await c1.call([HintRequest(req := next(_reqs), second, "n3")])
    assert reply == WriteReply(req)
    cluster["n1"].stop()
    await cluster["n1"].start()
    assert (await cluster["n1"].stats())["hints_held"] == 1  # durable: loaded at start
    await cluster["n3"].start()
    c3 = await cluster.channel("n3")
    await eventually(lambda: replayed(second), 15, "the second hint to reach n3")


# -- anti-entropy ---------------------------------------------------------------------------


async def test_anti_entropy_refills_a_node_whose_data_folder_was_emptied(make_cluster):
    cluster = make_cluster(flags=["--anti-entropy-interval", "0.2"])
    await cluster.start()
    await cluster.peers_up()
    records = [rec(f"key{i}", f"value {i}".encode() * 10) for i in range(1500)]
    records.append(rec("deleted", None))
    await cluster.write_all(records, ["n1", "n2", "n3"])
    assert (await cluster["n3"].stats())["keys"] == 1500

    cluster["n3"].stop()
    shutil.rmtree(cluster["n3"].data)  # a replaced disk
    later = rec("while away", b"only on n1 and n2")
    await cluster.write_all([later], ["n1", "n2"])
    await cluster["n3"].start()
    assert (await cluster["n3"].stats())["held"] == 0

    async def refilled() -> bool:
        return (await cluster["n3"].stats())["keys"] == 1501
    await eventually(refilled, 30, "anti-entropy to refill n3")
    c3 = await cluster.channel("n3")
    for r in (records[0], records[777], records[-2], later):
        assert await c3.read(r.key) == r
    assert await c3.read("deleted") == records[-1]  # the tombstone came back too
    stats = await cluster["n3"].stats()
    assert stats["healing"]["repaired"]["anti_entropy"] == 1502
    assert stats["healing"]["repaired"]["hint"] == 0 and stats["held"] == 1502

    # And then the rounds find nothing more to do: n1 keeps comparing with n3, in sync.
    in_sync_before = (await cluster["n1"].stats())["healing"]["ae_in_sync"]

    async def in_sync() -> bool:
        healing = (await cluster["n1"].stats())["healing"]
        return healing["ae_in_sync"] >= in_sync_before + 4 and \
            healing["last_exchange_ago_ms"].get("n3", 10**9) < 2_000
    await eventually(in_sync, 15, "n1 and n3 to agree")


# -- tombstones -----------------------------------------------------------------------------


async def test_a_missed_delete_never_comes_back_after_the_purge(make_cluster):
    # Tombstones may go 1 s after the delete (grace 1 s; hint window + clock bound 1 s),
    # but only once every replica is known to hold them.
    cluster = make_cluster(flags=["--tombstone-grace", "1", "--hint-window", "0.5",
                                  "--max-clock-ahead", "0.5", "--anti-entropy-interval", "0.2"])
    await cluster.start()
    await cluster.peers_up()
    alive = rec("k", b"the value before the delete")
    await cluster.write_all([alive], ["n1", "n2", "n3"])

    cluster["n3"].stop()  # n3 misses the delete (no fallback node: no hint either)
    tomb = rec("k", None)
    await cluster.write_all([tomb], ["n1", "n2"])
    c1, c2 = await cluster.channel("n1"), await cluster.channel("n2")

    # Well past the grace, n1 and n2 keep the tombstone: n3 has not confirmed it.
    base = (await cluster["n1"].stats())["healing"]["ae_rounds"]
    await eventually(lambda: rounds_after(cluster["n1"], tomb.version.physical + 2500,
                                          base + 3), 15, "anti-entropy rounds after the grace")
    assert await c1.read("k") == tomb and await c2.read("k") == tomb
    assert (await cluster["n1"].stats())["healing"]["purged"] == 0

    await cluster["n3"].start()  # with the old value
    c3 = await cluster.channel("n3")
    assert await c3.read("k") == alive

    async def purged_everywhere() -> bool:
        return all([await c.read("k") is None for c in (c1, c2, c3)])
    await eventually(purged_everywhere, 20, "the tombstone to reach n3 and then be purged")
    for name in ("n1", "n2", "n3"):
        stats = await cluster[name].stats()
        assert stats["healing"]["tombstones"] == 0 and stats["held"] == 0, (name, stats)

    # Rounds go on, and the old value does not come back from anywhere.
    for node in cluster.nodes.values():
        base = (await node.stats())["healing"]["ae_rounds"]
        await eventually(lambda: rounds_after(node, 0, base + 3), 15, "more rounds")
    assert all([await c.read("k") is None for c in (c1, c2, c3)])


# -- the peer channel -----------------------------------------------------------------------


async def test_a_peer_push_is_taken_and_acknowledged_on_the_pushers_own_link(make_cluster):
    """Pretend to be n2 pushing to n1: n1 stores the records and answers n2 on its link."""
    cluster = make_cluster(["n1", "n2"], ["--anti-entropy", "off"])
    await cluster["n1"].start()  # n2 is only us, on this socket
    fake_n2 = await cluster.channel("n1", "?from=n2")
    pushed = rec("pushed", b"v")
    await fake_n2.send([Push(5, [pushed], Mechanism.ANTI_ENTROPY)])
    c1 = await cluster.channel("n1")

    async def stored() -> bool:
        return await c1.read("pushed") == pushed
    await eventually(stored, 10, "the pushed record on n1")
    assert (await cluster["n1"].stats())["healing"]["repaired"]["anti_entropy"] == 1
    # The PushAck was for n2's own link (down): nothing came back on this socket.
    with pytest.raises(asyncio.TimeoutError):
        await fake_n2.ws.receive(timeout=0.3)


async def test_hints_of_large_values_are_replayed(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["--anti-entropy", "off"])
    await cluster["n1"].start()
    c1 = await cluster.channel("n1")
    big = b"x" * (1 << 20)  # the proxy's largest value by default
    for i in range(72):
        [reply] = await c1.call([HintRequest(next(_reqs), rec(f"big{i}", big), "n2")])
        assert isinstance(reply, WriteReply)
    await cluster["n2"].start()

    async def replayed() -> bool:
        return (await cluster["n1"].stats())["hints_held"] == 0
    await eventually(replayed, 20, "72 hints of 1 MiB to reach n2")
