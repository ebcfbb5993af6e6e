"""A data node: one replica's store behind the replica channel.

    python -m kvlab.net.node --name n1 --port 8001 --data DIR [--durability fsync|none]

Routes: `GET /health`, `GET /stats`, and `GET /replica`, the WebSocket the proxy keeps open
to send batched requests (see `kvlab.net.codec`). Reads are answered at once; writes are
acknowledged after their group commit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from pathlib import Path

from aiohttp import WSMsgType, web

from kvlab.core import replica
from kvlab.core.messages import ErrorReply, Reply, WriteRequest
from kvlab.net import codec
from kvlab.net.framing import FrameWriter
from kvlab.net.runner import serve
from kvlab.storage.sqlite import SqliteStore

MAX_FRAME = 64 * 1024 * 1024
PURGE_EVERY_S = 60.0


class NodeState:
    def __init__(self, name: str, store: SqliteStore, tombstone_grace_ms: int) -> None:
        self.name = name
        self.store = store
        self.tombstone_grace_ms = tombstone_grace_ms
        self.started = time.time()
        self.reads = 0
        self.last_error: str | None = None
        self.channels: set[web.WebSocketResponse] = set()


NODE = web.AppKey("node", NodeState)


async def health(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.json_response({"status": "ok", "node": node.name, "pid": os.getpid()})


async def stats(request: web.Request) -> web.Response:
    node = request.app[NODE]
    store = node.store
    return web.json_response({
        "node": node.name,
        "pid": os.getpid(),
        "keys": store.count(),
        "reads": node.reads,
        "writes": store.writes,
        "commits": store.commits,
        "uptime_s": round(time.time() - node.started, 3),
        "last_error": node.last_error,
    })


async def replica_channel(request: web.Request) -> web.WebSocketResponse:
    node = request.app[NODE]
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, autoping=True)
    await ws.prepare(request)
    node.channels.add(ws)
    out: FrameWriter[Reply] = FrameWriter(ws, codec.encode_replies)
    commits: set[asyncio.Task] = set()

    async def persist(writes: list[WriteRequest]) -> None:
        try:
            await node.store.apply([w.record for w in writes])
        except Exception as exc:  # the writes are not durable: say so, never ack them
            node.last_error = f"storage: {exc}"
            out.extend([ErrorReply(w.req, node.last_error) for w in writes])
        else:
            out.extend(replica.acknowledge(writes))

    async for msg in ws:
        if msg.type != WSMsgType.BINARY:
            continue
        try:
            requests = codec.decode_requests(msg.data)
        except Exception as exc:
            node.last_error = f"bad frame: {exc}"
            await ws.close(code=1003, message=b"malformed frame")
            break
        replies, writes = replica.serve(requests, node.store.get_many)
        node.reads += len(replies)
        out.extend(replies)
        if writes:
            # Don't wait here: frames that arrive during this commit join the next one.
            task = asyncio.get_running_loop().create_task(persist(writes))
            commits.add(task)
            task.add_done_callback(commits.discard)
    if commits:
        await asyncio.gather(*commits, return_exceptions=True)
    node.channels.discard(ws)
    return ws


async def _close_channels(app: web.Application) -> None:
    # On SIGTERM, end the long-lived replica channels at once: otherwise shutdown waits for
    # them until its timeout, and every restart or `kvlab down` takes a second longer.
    for ws in list(app[NODE].channels):
        await ws.close(code=1001, message=b"node shutting down")


async def _purge_tombstones(app: web.Application):
    node = app[NODE]

    async def loop() -> None:
        while True:
            await asyncio.sleep(PURGE_EVERY_S)
            try:
                node.store.purge(int(time.time() * 1000), node.tombstone_grace_ms)
            except Exception as exc:  # e.g. the writer held the lock too long: next time
                node.last_error = f"purge: {exc}"

    task = asyncio.get_running_loop().create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    node.store.close()


def make_app(name: str, store: SqliteStore, tombstone_grace_ms: int = 86_400_000
             ) -> web.Application:
    app = web.Application()
    app[NODE] = NodeState(name, store, tombstone_grace_ms)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_get("/replica", replica_channel)
    app.cleanup_ctx.append(_purge_tombstones)
    app.on_shutdown.append(_close_channels)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kvlab.net.node",
                                     description="Run one kvlab data node.")
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder for the database")
    parser.add_argument("--durability", choices=("fsync", "none"), default="fsync")
    parser.add_argument("--tombstone-grace", type=float, default=86_400.0,
                        help="seconds before a delete's tombstone may be purged")
    args = parser.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(args.data / "data.db", durable=args.durability == "fsync")
    print(f"node {args.name} pid {os.getpid()} on {args.host}:{args.port}", flush=True)
    serve(make_app(args.name, store, int(args.tombstone_grace * 1000)), args.host, args.port)


if __name__ == "__main__":
    main()
