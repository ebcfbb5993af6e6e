"""Blocking and asyncio clients over the proxy's REST API.

    from kvlab.client import KV
    kv = KV("http://127.0.0.1:8000")
    kv.set("user:1", "alice")
    kv.get("user:1")            # 'alice'; None if the key does not exist

Both raise `Unavailable` when the cluster can't answer, never report it as a missing key.
Given the cluster's `secret` (the "secret" in its cluster.json), they show a proof of it on
every request (`kvlab.net.auth.proof`, never the secret: whoever listens on the URL's port
while the proxy is down hears it): the routes that change the ring or break links need it,
and so does the data API of a cluster started with `kvlab up --protect-data`.
"""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

from kvlab.client.protocol import (
    Answer,
    Call,
    ChangeAborted,
    ChangeStarted,
    ChangeStatus,
    ClusterInfo,
    HealthInfo,
    KeyInfo,
    KeyNotFound,
    NodeStats,
    PartitionInfo,
    Result,
    Unavailable,
    abort_call,
    add_node_call,
    answer,
    change_call,
    cluster_call,
    delete_call,
    get_call,
    health_call,
    inspect_call,
    partition_call,
    read_result,
    remove_node_call,
    replace_node_call,
    set_call,
    stats_call,
    write_result,
)
from kvlab.net.auth import proof

DEFAULT_URL = "http://127.0.0.1:8000"
# Reopen a connection idle for longer than this: well under aiohttp's 75 s keep-alive.
IDLE_REUSE_S = 30.0


class KV:
    """A blocking client holding one keep-alive connection (use one per thread)."""

    def __init__(self, url: str = DEFAULT_URL, timeout: float = 5.0,
                 secret: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected a URL like {DEFAULT_URL}, got {url!r}")
        self.url = url.rstrip("/")
        self._host, self._port = parts.hostname, parts.port or 80
        self._timeout = timeout
        self.secret = secret
        self._conn: http.client.HTTPConnection | None = None
        self._proof: dict[str, str] = {}  # shown on every request of the connection
        self._used = 0.0

    def _send(self, call: Call) -> tuple[int, http.client.HTTPMessage, bytes]:
        now = time.monotonic()
        if self._conn is not None and now - self._used > IDLE_REUSE_S:
            self.close()  # the server may have closed it: don't find out with a write
        self._used = now
        for attempt in (1, 2):
            fresh = self._conn is None
            if fresh:
                self._conn = http.client.HTTPConnection(self._host, self._port,
                                                        timeout=self._timeout)
            if fresh or self._conn.sock is None:
                # http.client reconnects by itself after a `Connection: close`: a new socket,
                # maybe to a server started since, which takes no proof made before it.
                # Made now, as the connection is: good for whatever already listens.
                self._proof = proof(self.secret, self._port)
            sent = False
            try:
                self._conn.request(call.method, call.path, body=call.body,
                                   headers=self._proof)
                sent = True
                response = self._conn.getresponse()
                return response.status, response.headers, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                # A reused connection closed under us: retry once on a new one, but a write
                # only if it never left, since a repeated write could land twice.
                if fresh or attempt == 2 or (sent and call.method != "GET"):
                    raise Unavailable(f"proxy at {self.url} closed the connection: {exc}") \
                        from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise Unavailable(f"proxy at {self.url} is unreachable: {exc}") from None
        raise AssertionError("unreachable")

    def get(self, key: str, r: int | None = None) -> str | None:
        """The value as text, or None if the key does not exist."""
        try:
            return self.read(key, r).text
        except KeyNotFound:
            return None

    def read(self, key: str, r: int | None = None) -> Result:
        """The value as bytes with its version and replicas; raises KeyNotFound if absent."""
        status, headers, body = self._send(get_call(key, r))
        return read_result(key, status, headers, body)

    def set(self, key: str, value: str | bytes, w: int | None = None,
            sloppy: bool | None = None) -> Result:
        """Store `value`; `sloppy` counts hints toward W (None: the cluster's default)."""
        call = set_call(key, value, w, sloppy)
        status, headers, body = self._send(call)
        return write_result(key, status, headers, body, call.body)

    def delete(self, key: str, w: int | None = None, sloppy: bool | None = None) -> Result:
        status, headers, body = self._send(delete_call(key, w, sloppy))
        return write_result(key, status, headers, body, None)

    # Introspection and membership: typed answers (`kvlab.client.protocol`), `BadAnswer`
    # for one that does not fit. The membership calls and `partition` need the secret.

    def inspect(self, key: str) -> KeyInfo:
        """Each replica's own copy of `key` (see `GET /cluster/keys/{key}`)."""
        return self._ask(inspect_call(key), KeyInfo)

    def cluster(self) -> ClusterInfo:
        """The ring, quorums, membership and each node as the proxy sees it."""
        return self._ask(cluster_call(), ClusterInfo)

    def health(self) -> HealthInfo:
        """`/health` of whatever this client points at: the proxy or a node."""
        return self._ask(health_call(), HealthInfo)

    def stats(self) -> NodeStats:
        """A node's counters: for a client pointed at a node (`KV(node_url, secret=...)`)."""
        return self._ask(stats_call(), NodeStats)

    def change(self) -> ChangeStatus:
        """The membership change in progress, and the last one over."""
        return self._ask(change_call(), ChangeStatus)

    def add_node(self, name: str, url: str) -> ChangeStarted:
        """Join the running, empty node `name` listening on `url` to the ring."""
        return self._ask(add_node_call(name, url), ChangeStarted)

    def remove_node(self, name: str) -> ChangeStarted:
        """Decommission `name`: its ranges stream to their new replicas first."""
        return self._ask(remove_node_call(name), ChangeStarted)

    def replace_node(self, old: str, name: str, url: str) -> ChangeStarted:
        """A running, empty node `name` (on `url`) takes `old`'s place and tokens."""
        return self._ask(replace_node_call(old, name, url), ChangeStarted)

    def abort_change(self) -> ChangeAborted:
        """Give up the change in progress while reads are still on the old ring."""
        return self._ask(abort_call(), ChangeAborted)

    def partition(self, node: str, on: bool = True, direction: str = "both") -> PartitionInfo:
        """Cut (or heal) the proxy's link to `node`: a fault hook for chaos experiments.

        `direction`: "both", "to" (requests are lost) or "from" (replies are lost)."""
        return self._ask(partition_call(node, on, direction), PartitionInfo)

    def _ask(self, call: Call, kind: type[Answer]) -> Answer:
        status, _, body = self._send(call)
        return answer(status, body, kind, self.url + call.path)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> KV:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncKV:
    """The asyncio client: one aiohttp session; use `async with AsyncKV(url) as kv:`."""

    def __init__(self, url: str = DEFAULT_URL, timeout: float = 5.0,
                 secret: str | None = None) -> None:
        self.url = url.rstrip("/")
        self._port = urlsplit(url).port or 80
        self._timeout = _aiohttp().ClientTimeout(total=timeout)
        self.secret = secret
        self._session: aiohttp.ClientSession | None = None

    async def _send(self, call: Call) -> tuple[int, dict, bytes]:
        if self._session is None:
            self._session = _aiohttp().ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(call.method, self.url + call.path, data=call.body,
                                             headers=proof(self.secret, self._port)
                                             ) as response:
                return response.status, response.headers, await response.read()
        except (_aiohttp().ClientError, TimeoutError) as exc:
            raise Unavailable(f"proxy at {self.url} is unreachable: "
                              f"{exc.__class__.__name__}: {exc}") from None

    async def get(self, key: str, r: int | None = None) -> str | None:
        try:
            return (await self.read(key, r)).text
        except KeyNotFound:
            return None

    async def read(self, key: str, r: int | None = None) -> Result:
        return read_result(key, *await self._send(get_call(key, r)))

    async def set(self, key: str, value: str | bytes, w: int | None = None,
                  sloppy: bool | None = None) -> Result:
        call = set_call(key, value, w, sloppy)
        return write_result(key, *await self._send(call), call.body)

    async def delete(self, key: str, w: int | None = None, sloppy: bool | None = None
                     ) -> Result:
        return write_result(key, *await self._send(delete_call(key, w, sloppy)), None)

    # As KV's (see there).

    async def inspect(self, key: str) -> KeyInfo:
        return await self._ask(inspect_call(key), KeyInfo)

    async def cluster(self) -> ClusterInfo:
        return await self._ask(cluster_call(), ClusterInfo)

    async def health(self) -> HealthInfo:
        return await self._ask(health_call(), HealthInfo)

    async def stats(self) -> NodeStats:
        return await self._ask(stats_call(), NodeStats)

    async def change(self) -> ChangeStatus:
        return await self._ask(change_call(), ChangeStatus)

    async def add_node(self, name: str, url: str) -> ChangeStarted:
        return await self._ask(add_node_call(name, url), ChangeStarted)

    async def remove_node(self, name: str) -> ChangeStarted:
        return await self._ask(remove_node_call(name), ChangeStarted)

    async def replace_node(self, old: str, name: str, url: str) -> ChangeStarted:
        return await self._ask(replace_node_call(old, name, url), ChangeStarted)

    async def abort_change(self) -> ChangeAborted:
        return await self._ask(abort_call(), ChangeAborted)

    async def partition(self, node: str, on: bool = True, direction: str = "both"
                        ) -> PartitionInfo:
        return await self._ask(partition_call(node, on, direction), PartitionInfo)

    async def _ask(self, call: Call, kind: type[Answer]) -> Answer:
        status, _, body = await self._send(call)
        return answer(status, body, kind, self.url + call.path)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncKV:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _aiohttp():
    """aiohttp, imported when an async client first needs it: the sync client and the
    CLI (whose every command imports this module) are spared its 150 ms import."""
    import aiohttp

    return aiohttp
