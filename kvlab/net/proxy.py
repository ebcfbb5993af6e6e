"""The proxy: kvlab's public HTTP API, coordinating every request over the replicas.

    python -m kvlab.net.proxy --port 8000 --node n1=http://127.0.0.1:8001 ... [--replicas 3]

Go-compatible routes (`POST /set`, `GET /get?key=`, `DELETE /delete?key=`), the REST form
(`GET|PUT|DELETE /kv/{key}`), and introspection (`/cluster`, `/cluster/keys/{key}`,
`/health`). Every read and write route takes `r=` / `w=` overrides and reports the version and
the replicas that acknowledged in `X-Kvlab-*` headers (and in the JSON of REST writes).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from urllib.parse import unquote

import aiohttp
import orjson
from aiohttp import web

from kvlab.core.coordinator import Coordinator, Quorum
from kvlab.core.messages import NOT_FOUND, OK, Outcome
from kvlab.core.record import Record
from kvlab.core.ring import DEFAULT_VNODES, Ring
from kvlab.net.api_errors import ApiError, json_errors, json_response, quorum_error
from kvlab.net.engine import Engine
from kvlab.net.link import ReplicaLink
from kvlab.net.runner import serve


@dataclass(frozen=True)
class Limits:
    max_key: int = 1024
    max_value: int = 1024 * 1024


class Proxy:
    """The proxy's state: the coordinator, its links to the nodes, and the limits."""

    def __init__(self, name: str, nodes: dict[str, str], quorum: Quorum, vnodes: int,
                 timeout_ms: int, limits: Limits) -> None:
        self.name = name
        self.urls = dict(nodes)
        self.limits = limits
        self.engine = Engine(Coordinator(name, Ring(tuple(nodes), vnodes), quorum, timeout_ms))
        self.session: aiohttp.ClientSession | None = None
        self.served: dict[str, int] = {}

    @property
    def coordinator(self) -> Coordinator:
        return self.engine.coordinator

    def add_link(self, name: str, url: str) -> None:
        assert self.session is not None
        link = ReplicaLink(name, url, self.session, self.engine.on_replies, self.engine.on_lost)
        self.engine.links[name] = link
        link.start()

    async def run(self, kind: str, key: str, value: bytes | None = None,
                  r: int | None = None, w: int | None = None) -> Outcome:
        coord = self.coordinator
        if kind == "read":
            outcome = await self.engine.run(lambda now: coord.read(key, now, r=r))
        elif kind == "write":
            outcome = await self.engine.run(lambda now: coord.write(key, value, now, w=w))
        else:
            outcome = await self.engine.run(lambda now: coord.inspect(key, now))
        self.served[outcome.status] = self.served.get(outcome.status, 0) + 1
        return outcome


PROXY = web.AppKey("proxy", Proxy)


# -- request parsing --------------------------------------------------------------------


def _check_key(proxy: Proxy, key: str | None) -> str:
    if not key:
        raise ApiError(400, "bad_request", "key must be a non-empty string")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > proxy.limits.max_key:
        raise ApiError(413, "key_too_large",
                       f"key is {size} bytes, the limit is {proxy.limits.max_key}")
    return key


def _check_value(proxy: Proxy, value: bytes) -> bytes:
    if len(value) > proxy.limits.max_value:
        raise ApiError(413, "value_too_large",
                       f"value is {len(value)} bytes, the limit is {proxy.limits.max_value}")
    return value


def _path_key(request: web.Request, prefix: str) -> str:
    """The key from a REST path, percent-decoded exactly once (so `%2F`, `%25` survive)."""
    raw = request.rel_url.raw_path[len(prefix):]
    try:
        key = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "key is not valid UTF-8") from None
    return _check_key(request.app[PROXY], key)


def _query_key(request: web.Request) -> str:
    if "key" not in request.query:
        raise ApiError(400, "bad_request", "missing query parameter: key")
    return _check_key(request.app[PROXY], request.query["key"])


def _quorum_override(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    n = request.app[PROXY].coordinator.quorum.n
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= n:
        raise ApiError(400, "bad_request", f"{name} must be an integer from 1 to N={n}, "
                       f"got {text!r}")
    return value


def _headers(outcome: Outcome) -> dict[str, str]:
    headers = {
        "X-Kvlab-Replicas": ",".join(outcome.replicas),
        "X-Kvlab-Acked": ",".join(outcome.acked),
    }
    if outcome.record is not None:
        headers["X-Kvlab-Version"] = str(outcome.record.version)
    return headers


def _text(value: bytes) -> str:
    # JSON can't carry raw bytes; the REST routes are the binary-safe way to read them.
    return value.decode("utf-8", "replace")


async def _read(request: web.Request, key: str) -> Outcome:
    proxy = request.app[PROXY]
    outcome = await proxy.run("read", key, r=_quorum_override(request, "r"))
    if outcome.status == NOT_FOUND:
        raise ApiError(404, "not_found", "key not found", key=key)
    if outcome.status != OK:
        raise quorum_error(outcome)
    return outcome


async def _write(request: web.Request, key: str, value: bytes | None) -> Outcome:
    proxy = request.app[PROXY]
    outcome = await proxy.run("write", key, value, w=_quorum_override(request, "w"))
    if outcome.status != OK:
        raise quorum_error(outcome)
    return outcome


# -- Go-compatible routes ---------------------------------------------------------------


async def compat_set(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, "bad_request", "body must be JSON: {\"key\": K, \"value\": V}") \
            from None
    if not isinstance(body, dict) or not isinstance(body.get("value"), str) \
            or not isinstance(body.get("key"), str):
        raise ApiError(400, "bad_request", "body must be {\"key\": string, \"value\": string}")
    proxy = request.app[PROXY]
    key = _check_key(proxy, body["key"])
    value = _check_value(proxy, body["value"].encode("utf-8"))
    outcome = await _write(request, key, value)
    return web.Response(text="OK", headers=_headers(outcome))


async def compat_get(request: web.Request) -> web.Response:
    outcome = await _read(request, _query_key(request))
    assert outcome.record is not None and outcome.record.value is not None
    return json_response({"value": _text(outcome.record.value)}, headers=_headers(outcome))


async def compat_delete(request: web.Request) -> web.Response:
    outcome = await _write(request, _query_key(request), None)
    return web.Response(text="OK", headers=_headers(outcome))


# -- REST routes ------------------------------------------------------------------------


async def rest_get(request: web.Request) -> web.Response:
    outcome = await _read(request, _path_key(request, "/kv/"))
    assert outcome.record is not None
    return web.Response(body=outcome.record.value, headers=_headers(outcome),
                        content_type="application/octet-stream")


async def rest_put(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    key = _path_key(request, "/kv/")
    value = _check_value(proxy, await request.read())
    return _write_response(await _write(request, key, value))


async def rest_delete(request: web.Request) -> web.Response:
    return _write_response(await _write(request, _path_key(request, "/kv/"), None))


def _write_response(outcome: Outcome) -> web.Response:
    assert outcome.record is not None
    return json_response({
        "key": outcome.key,
        "version": str(outcome.record.version),
        "replicas": list(outcome.replicas),
        "acked": list(outcome.acked),
    }, headers=_headers(outcome))


async def rest_empty_key(request: web.Request) -> web.Response:
    raise ApiError(400, "bad_request", "key must be a non-empty string: /kv/{key}")


# -- introspection ----------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    return json_response({"status": "ok", "proxy": proxy.name, "pid": os.getpid(),
                          "nodes": {n: link.state for n, link in proxy.engine.links.items()}})


async def cluster(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    coord = proxy.coordinator
    q = coord.quorum
    nodes = []
    for name in coord.ring.nodes:
        link = proxy.engine.links[name]
        nodes.append({
            "name": name, "url": link.url, "state": link.state,
            "partitioned": link.partitioned, "sent": link.sent,
            "replies": link.replies, "errors": link.errors, "last_error": link.last_error,
            "p99_ms": link.p99_ms(),
        })
    return json_response({
        "proxy": {"name": proxy.name, "pid": os.getpid(), "served": proxy.served,
                  "pending_ops": coord.pending_ops()},
        "n": q.n, "r": q.r, "w": q.w, "vnodes": coord.ring.vnodes,
        "timeout_ms": coord.timeout_ms, "nodes": nodes,
    })


def _replica_view(node: str, outcome: Outcome) -> dict:
    if node in outcome.failed:
        return {"node": node, "state": "unreachable", "reason": outcome.failed[node],
                "version": None, "value": None}
    record: Record | None = outcome.answers.get(node)
    if record is None:
        return {"node": node, "state": "missing", "version": None, "value": None}
    return {"node": node, "state": "ok", "version": str(record.version),
            "value": None if record.value is None else _text(record.value),
            "deleted": record.tombstone}


async def cluster_key(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    key = _path_key(request, "/cluster/keys/")
    outcome = await proxy.run("inspect", key)
    return json_response({"key": key,
                          "replicas": [_replica_view(n, outcome) for n in outcome.replicas]})


async def add_node(request: web.Request) -> web.Response:
    """Join a running node to the ring (its data arrives by read repair; no rebalancing)."""
    proxy = request.app[PROXY]
    try:
        body = orjson.loads(await request.read())
        name, url = body["name"], body["url"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ApiError(400, "bad_request", "body must be {\"name\": N, \"url\": U}") from None
    coord = proxy.coordinator
    if name in coord.ring.nodes:
        raise ApiError(409, "conflict", f"node {name} is already in the ring")
    coord.ring = coord.ring.with_node(name)
    proxy.urls[name] = url
    proxy.add_link(name, url)
    return json_response({"nodes": list(coord.ring.nodes)})


async def remove_node(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    name = request.match_info["name"]
    coord = proxy.coordinator
    if name not in coord.ring.nodes:
        raise ApiError(404, "not_found", f"no node {name} in the ring")
    coord.ring = coord.ring.without_node(name)
    proxy.urls.pop(name, None)
    link = proxy.engine.links.pop(name)
    await link.stop()
    return json_response({"nodes": list(coord.ring.nodes)})


PARTITION_DIRECTIONS = ("both", "to", "from")


async def set_fault(request: web.Request) -> web.Response:
    """Cut or heal the link between the proxy and a node.

    Body: `{"partitioned": true|false, "direction": "both"|"to"|"from"}` ("to": requests to
    the node are lost; "from": its replies are lost, though its writes still apply).
    """
    proxy = request.app[PROXY]
    name = request.match_info["name"]
    link = proxy.engine.links.get(name)
    if link is None:
        raise ApiError(404, "not_found", f"no node {name} in the ring")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    on = body.get("partitioned") if isinstance(body, dict) else None
    direction = body.get("direction", "both") if isinstance(body, dict) else None
    if not isinstance(on, bool) or direction not in PARTITION_DIRECTIONS:
        raise ApiError(400, "bad_request", "body must be {\"partitioned\": true|false, "
                       "\"direction\": \"both\"|\"to\"|\"from\"}")
    link.partition(direction if on else None)
    return json_response({"node": name, "partitioned": link.partitioned})


async def _links(app: web.Application):
    proxy = app[PROXY]
    proxy.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    for name, url in proxy.urls.items():
        proxy.add_link(name, url)
    yield
    for link in proxy.engine.links.values():
        await link.stop()
    await proxy.session.close()


def make_app(proxy: Proxy) -> web.Application:
    # Room for the largest value plus the JSON around it; larger bodies get 413.
    app = web.Application(middlewares=[json_errors],
                          client_max_size=proxy.limits.max_value + proxy.limits.max_key + 4096)
    app[PROXY] = proxy
    app.router.add_post("/set", compat_set)
    app.router.add_get("/get", compat_get)
    app.router.add_delete("/delete", compat_delete)
    app.router.add_route("*", "/kv/", rest_empty_key)
    app.router.add_get("/kv/{key:.+}", rest_get)
    app.router.add_put("/kv/{key:.+}", rest_put)
    app.router.add_delete("/kv/{key:.+}", rest_delete)
    app.router.add_get("/health", health)
    app.router.add_get("/cluster", cluster)
    app.router.add_get("/cluster/keys/{key:.+}", cluster_key)
    app.router.add_post("/cluster/nodes", add_node)
    app.router.add_delete("/cluster/nodes/{name}", remove_node)
    app.router.add_put("/cluster/faults/{name}", set_fault)
    app.cleanup_ctx.append(_links)
    return app


def _node_arg(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise argparse.ArgumentTypeError(f"expected NAME=URL, got {text!r}")
    return name, url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kvlab.net.proxy",
                                     description="Run the kvlab proxy (the coordinator).")
    parser.add_argument("--name", default="proxy", help="coordinator id stamped on versions")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--node", type=_node_arg, action="append", required=True,
                        metavar="NAME=URL", help="a data node (repeat for each)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--read-quorum", type=int, default=2)
    parser.add_argument("--write-quorum", type=int, default=2)
    parser.add_argument("--vnodes", type=int, default=DEFAULT_VNODES)
    parser.add_argument("--timeout-ms", type=int, default=1000)
    parser.add_argument("--max-key", type=int, default=Limits.max_key)
    parser.add_argument("--max-value", type=int, default=Limits.max_value)
    args = parser.parse_args(argv)
    quorum = Quorum(args.replicas, args.read_quorum, args.write_quorum)
    proxy = Proxy(args.name, dict(args.node), quorum, args.vnodes, args.timeout_ms,
                  Limits(args.max_key, args.max_value))
    print(f"proxy {args.name} pid {os.getpid()} on {args.host}:{args.port}", flush=True)
    serve(make_app(proxy), args.host, args.port)


if __name__ == "__main__":
    main()
