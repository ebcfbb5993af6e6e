"""Blocking and asyncio clients over the proxy's REST API.

    from kvlab.client import KV
    kv = KV("http://127.0.0.1:8000")
    kv.set("user:1", "alice")
    kv.get("user:1")            # 'alice'; None if the key does not exist

Both raise `Unavailable` when the cluster can't answer, never report it as a missing key.
Given the cluster's `secret` (the "secret" in its cluster.json), they show it on every
request: the routes that change the ring or break links need it, and so does the data API
of a cluster started with `kvlab up --protect-data`.
"""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

from kvlab.client.protocol import (
    Call,
    KeyNotFound,
    Result,
    Unavailable,
    delete_call,
    get_call,
    inspect_call,
    json_result,
    partition_call,
    read_result,
    set_call,
    write_result,
)

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
        self._headers = _auth(secret)
        self._conn: http.client.HTTPConnection | None = None
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
            sent = False
            try:
                self._conn.request(call.method, call.path, body=call.body,
                                   headers=self._headers)
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

    def inspect(self, key: str) -> dict:
        """Each replica's own copy of `key` (see `GET /cluster/keys/{key}`)."""
        return json_result(*self._status_body(inspect_call(key)))

    def cluster(self) -> dict:
        return json_result(*self._status_body(Call("GET", "/cluster")))

    def partition(self, node: str, on: bool = True, direction: str = "both") -> dict:
        """Cut (or heal) the proxy's link to `node`: a fault hook for chaos experiments.

        `direction`: "both", "to" (requests are lost) or "from" (replies are lost)."""
        return json_result(*self._status_body(partition_call(node, on, direction)))

    def _status_body(self, call: Call) -> tuple[int, bytes]:
        status, _, body = self._send(call)
        return status, body

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
        self._timeout = _aiohttp().ClientTimeout(total=timeout)
        self.secret = secret
        self._headers = _auth(secret)
        self._session: aiohttp.ClientSession | None = None

    async def _send(self, call: Call) -> tuple[int, dict, bytes]:
        if self._session is None:
            self._session = _aiohttp().ClientSession(timeout=self._timeout,
                                                     headers=self._headers)
        try:
            async with self._session.request(call.method, self.url + call.path,
                                             data=call.body) as response:
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

    async def inspect(self, key: str) -> dict:
        status, _, body = await self._send(inspect_call(key))
        return json_result(status, body)

    async def cluster(self) -> dict:
        status, _, body = await self._send(Call("GET", "/cluster"))
        return json_result(status, body)

    async def partition(self, node: str, on: bool = True, direction: str = "both") -> dict:
        status, _, body = await self._send(partition_call(node, on, direction))
        return json_result(status, body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncKV:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _auth(secret: str | None) -> dict[str, str]:
    return {} if secret is None else {"Authorization": f"Bearer {secret}"}


def _aiohttp():
    """aiohttp, imported when an async client first needs it: the sync client and the
    CLI (whose every command imports this module) are spared its 150 ms import."""
    import aiohttp

    return aiohttp
