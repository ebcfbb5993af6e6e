"""The proxy: kvlab's public HTTP API, coordinating every request over the replicas.

    python -m kvlab.net.proxy --port 8000 --node n1=http://127.0.0.1:8001 ... [--replicas 3]

Go-compatible routes (`POST /set`, `GET /get?key=`, `DELETE /delete?key=`), the REST form
(`GET|PUT|DELETE /kv/{key}`), introspection (`/cluster`, `/cluster/keys/{key}`,
`/cluster/change`, `/health`), Prometheus metrics (`/metrics`), and membership changes, carried out in steps by the core's
committer (`kvlab.core.membership`): `POST /cluster/nodes` (add), `DELETE
/cluster/nodes/{name}` (decommission), `POST /cluster/nodes/{name}/replace`; each answers
202 at once with the change, which `/cluster/change` follows to its end, and `DELETE
/cluster/change` gives up before reads have moved.

Every read and write route takes `r=` / `w=` overrides, every write route `sloppy=1|0`
(hints on fallback nodes count toward W, or not), and each reports the version, the
replicas that acknowledged and the hints that stood in for replicas in `X-Kvlab-*` headers
(and in the JSON of REST writes).

With `--state DIR` the coordinator's clock survives restarts (see `kvlab.net.clock_state`),
and so does the ring it committed to (`kvlab.net.ring_state`): a restarted proxy goes on
from that ring, whatever `--node` says, and a move it was in the middle of starts over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import ipaddress
import os
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiohttp
import msgspec
import orjson

from kvlab.client import protocol
from kvlab.client.protocol import (
    ChangeAborted,
    ChangeInfo,
    ChangeStarted,
    ChangeStatus,
    ClusterInfo,
    HealingInfo,
    HealthInfo,
    KeyInfo,
    MembershipInfo,
    NodeInfo,
    NodeStats,
    PartitionInfo,
    ProxyInfo,
    ReplicaCopy,
)
from kvlab.core.coordinator import Coordinator, Quorum
from kvlab.core.detector import Health
from kvlab.core.membership import BadName, Membership, MembershipError
from kvlab.core.messages import NOT_FOUND, OK, Outcome
from kvlab.core.record import Record
from kvlab.core.ring import DEFAULT_VNODES, Ring
from kvlab.core.topology import Topology
from kvlab.core.version import MAX_AHEAD_MS
from kvlab.net.admission import Admission
from kvlab.net.api_errors import overloaded, quorum_error
from kvlab.net.args import name_url, on_off
from kvlab.net.auth import MESSAGE, UNAUTHORIZED, Guard, proof, secret_from_env
from kvlab.net.clock_state import ClockState, ClockStateError
from kvlab.net.engine import Engine, wall_clock
from kvlab.net.framing import MAX_KEY, MAX_VALUE
from kvlab.net.http import (
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT_S,
    HttpError,
    HttpServer,
    Later,
    Request,
    Response,
    Router,
    json_response,
)
from kvlab.net.link import UP, ReplicaLink
from kvlab.net.ring_state import RingState, RingStateError
from kvlab.net.runner import run

if TYPE_CHECKING:
    from kvlab.net.metrics import Exposition

# /cluster asks every node for its healing counters; one that can't answer this fast is
# shown without them rather than holding up the dashboard's poll.
STATS_TIMEOUT = aiohttp.ClientTimeout(total=0.5)


@dataclass(frozen=True)
class Limits:
    """Sizes a request may have; operations and bytes of values being written that the
    proxy takes on at once (see `kvlab.net.admission`)."""

    max_key: int = 1024
    max_value: int = 1024 * 1024
    max_inflight: int = 4096
    max_inflight_bytes: int = 8 * 1024 * 1024


class Proxy:
    """The proxy's state: the coordinator, its links to the nodes, and the limits.

    `hints`: the coordinator hands writes a primary missed to a fallback node; `sloppy`:
    those hints count toward W unless a write says `sloppy=0` (needs `hints`).
    `clock_offset_ms` shifts the wall clock the coordinator is given (a wrong clock, for
    tests and demos); `state_dir` keeps the clock's high water across restarts;
    `heartbeat_ms` paces the failure detector's pings. `secret`: what the control routes
    ask of a client (and the data routes too if `protect_data`), itself or a proof of it
    made for `port` (where the proxy is about to listen), and what the proxy proves to the
    nodes; None: nothing is asked (see `kvlab.net.auth`).
    """

    def __init__(self, name: str, nodes: dict[str, str], quorum: Quorum, vnodes: int,
                 timeout_ms: int, limits: Limits, *, hints: bool = True, sloppy: bool = False,
                 max_ahead_ms: int = MAX_AHEAD_MS, clock_offset_ms: int = 0,
                 state_dir: Path | None = None, heartbeat_ms: int = 100,
                 secret: str | None = None, protect_data: bool = False,
                 port: int | None = None) -> None:
        if sloppy and not hints:
            raise ValueError("a sloppy quorum counts hints: it needs hints on")
        self.name = name
        self.limits = limits
        self.sloppy = sloppy
        self.clock_offset_ms = clock_offset_ms
        self.secret = secret
        self.guard = None if secret is None else Guard(secret, port)
        self.protect_data = protect_data
        coordinator = Coordinator(name, Ring(tuple(nodes), vnodes), quorum, timeout_ms,
                                  hints=hints, max_ahead_ms=max_ahead_ms)
        self.membership = Membership(coordinator, heartbeat_ms=heartbeat_ms)
        # Where each node listens: the nodes are told it with every ring, to reach each other.
        self.membership.addresses.update(nodes)
        self.ring_state = None if state_dir is None else RingState(state_dir)
        self.engine = Engine(coordinator, self.membership, wall_clock(clock_offset_ms),
                             keep=None if self.ring_state is None else self.ring_state.save)
        self.clock_state = (None if state_dir is None
                            else ClockState(state_dir, coordinator.clock, self.engine.now_ms))
        self.session: aiohttp.ClientSession | None = None
        self.admission = Admission(limits.max_inflight, limits.max_inflight_bytes)
        self.listening: tuple[str, int] | None = None  # (host, port) of its own server
        self.server: HttpServer | None = None
        self._exposition: Exposition | None = None  # made at the first scrape

    @property
    def coordinator(self) -> Coordinator:
        return self.engine.coordinator

    def restore_ring(self) -> Topology | None:
        """Go on from the ring saved by an earlier run, if any (and newer than `--node`'s).

        Addresses from `--node` win over saved ones (they are the newer word). Raises
        `RingStateError` if the saved ring is unreadable, or names a node with no address.
        """
        update = None if self.ring_state is None else self.ring_state.load()
        if update is None:
            return None
        membership = self.membership
        if update.version <= membership.topology.version:
            return None
        membership.addresses.update({**update.addresses, **membership.addresses})
        # No link is open yet: what this sends, each node hears when its link opens.
        self.engine.control(membership.restore(Topology.of(update), self.engine.now_ms()))
        missing = [n for n in membership.watched if n not in membership.addresses]
        if missing:
            raise RingStateError(f"the saved ring has {', '.join(missing)}, with no address "
                                 f"known: give --node NAME=URL for each")
        return membership.topology

    def metrics(self, accept: str) -> tuple[bytes, str]:
        """The Prometheus exposition of this proxy and its content type."""
        from kvlab.net import metrics  # at the first scrape (see kvlab.net.metrics)

        if self._exposition is None:
            self._exposition = metrics.Exposition(metrics.ProxyCollector(self))
        return self._exposition.render(accept)

    def add_link(self, name: str, url: str) -> None:
        assert self.session is not None
        engine = self.engine
        if name in engine.links:  # a node back under its old name before its link closed
            engine.close_link(name)
        # A request still queued for its frame after an operation's whole timeout is
        # dropped: its operation is over.
        link = ReplicaLink(name, url, self.session, engine.on_replies, engine.on_lost,
                           engine.on_reports, engine.on_connected,
                           max_wait_s=self.coordinator.timeout_ms / 1000, secret=self.secret)
        engine.links[name] = link
        link.start()


# -- request parsing --------------------------------------------------------------------


def _check_key(proxy: Proxy, key: str | None) -> str:
    if not key:
        raise HttpError(400, "bad_request", "key must be a non-empty string")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > proxy.limits.max_key:
        raise HttpError(413, "key_too_large",
                        f"key is {size} bytes, the limit is {proxy.limits.max_key}")
    return key


def _check_value(proxy: Proxy, value: bytes) -> bytes:
    if len(value) > proxy.limits.max_value:
        raise HttpError(413, "value_too_large",
                        f"value is {len(value)} bytes, the limit is {proxy.limits.max_value}")
    return value


def _path_key(proxy: Proxy, request: Request) -> str:
    """The key from a REST path, percent-decoded exactly once (so `%2F`, `%25` survive)."""
    try:
        key = unquote(request.tail, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, "bad_request", "key is not valid UTF-8") from None
    return _check_key(proxy, key)


def _query_key(proxy: Proxy, request: Request) -> str:
    if "key" not in request.query:
        raise HttpError(400, "bad_request", "missing query parameter: key")
    return _check_key(proxy, request.query["key"])


def _quorum_override(proxy: Proxy, request: Request, name: str) -> int | None:
    if not request.query_string:
        return None
    text = request.query.get(name)
    if text is None:
        return None
    n = proxy.coordinator.quorum.n
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= n:
        raise HttpError(400, "bad_request", f"{name} must be an integer from 1 to N={n}, "
                        f"got {text!r}")
    return value


def _sloppy(proxy: Proxy, request: Request) -> bool:
    if not request.query_string:
        return proxy.sloppy
    text = request.query.get("sloppy")
    if text is None:
        return proxy.sloppy
    if text in ("1", "true"):
        if not proxy.coordinator.hints:
            raise HttpError(400, "bad_request", "sloppy=1 counts hints toward W, and this "
                            "proxy keeps no hints (--hints off)")
        return True
    if text in ("0", "false"):
        return False
    raise HttpError(400, "bad_request", f"sloppy must be 1 or 0, got {text!r}")


def _headers(outcome: Outcome) -> dict[str, str]:
    headers = {
        "X-Kvlab-Replicas": ",".join(outcome.replicas),
        "X-Kvlab-Acked": ",".join(outcome.acked),
    }
    if outcome.record is not None:
        headers["X-Kvlab-Version"] = str(outcome.record.version)
    if outcome.hinted:
        headers["X-Kvlab-Hinted"] = ",".join(f"{p}={f}" for p, f in outcome.hinted.items())
    return headers


def _text(value: bytes) -> str:
    # JSON can't carry raw bytes; the REST routes are the binary-safe way to read them.
    return value.decode("utf-8", "replace")


# The data routes are direct handlers (see `kvlab.net.http.Later`): each starts its
# operation and names the function that turns the outcome into the answer.


def _admit(proxy: Proxy, body: int) -> None:
    """Refuse the request (503 overloaded) if the proxy has as much in flight as it takes;
    `body`: the bytes of the value a write carries (0 for a read or a delete)."""
    engine = proxy.engine
    admission = proxy.admission
    if not admission.admits(engine.pending, engine.value_bytes, body):
        retry_after = admission.refuse(time.monotonic(), sum(engine.served.values()))
        if engine.pending >= admission.max_inflight:
            why = f"{engine.pending} operations in flight (the limit is {admission.max_inflight})"
        else:
            why = (f"{engine.value_bytes} bytes of values being written (the limit is "
                   f"{admission.max_inflight_bytes})")
        raise overloaded(why, retry_after)


def _read(proxy: Proxy, request: Request, key: str, answer: Callable[[Outcome], Response]
          ) -> Later:
    return Later(proxy.engine.read(key, r=_quorum_override(proxy, request, "r")), answer)


def _write(proxy: Proxy, request: Request, key: str, value: bytes | None,
           answer: Callable[[Outcome], Response]) -> Later:
    w = _quorum_override(proxy, request, "w")
    return Later(proxy.engine.write(key, value, w=w, sloppy=_sloppy(proxy, request)), answer)


def _found(outcome: Outcome) -> bytes:
    """The value a read returned; a missing key is 404, a failed quorum 503/504."""
    if outcome.status == NOT_FOUND:
        raise HttpError(404, "not_found", "key not found", key=outcome.key)
    if outcome.status != OK:
        raise quorum_error(outcome)
    assert outcome.record is not None and outcome.record.value is not None
    return outcome.record.value


def _written(outcome: Outcome) -> Outcome:
    if outcome.status != OK:
        raise quorum_error(outcome)
    return outcome


# -- Go-compatible routes ---------------------------------------------------------------


def compat_set(proxy: Proxy, request: Request) -> Later:
    _admit(proxy, len(request.body))  # before the work of parsing a body it may refuse
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise HttpError(400, "bad_request", "body must be JSON: {\"key\": K, \"value\": V}") \
            from None
    if not isinstance(body, dict) or not isinstance(body.get("value"), str) \
            or not isinstance(body.get("key"), str):
        raise HttpError(400, "bad_request", "body must be {\"key\": string, \"value\": string}")
    key = _check_key(proxy, body["key"])
    value = _check_value(proxy, body["value"].encode("utf-8"))
    return _write(proxy, request, key, value, _compat_ok)


def compat_get(proxy: Proxy, request: Request) -> Later:
    _admit(proxy, 0)
    return _read(proxy, request, _query_key(proxy, request), _compat_value)


def compat_delete(proxy: Proxy, request: Request) -> Later:
    _admit(proxy, 0)
    return _write(proxy, request, _query_key(proxy, request), None, _compat_ok)


def _compat_ok(outcome: Outcome) -> Response:
    return Response(body=b"OK", headers=_headers(_written(outcome)))


def _compat_value(outcome: Outcome) -> Response:
    return json_response({"value": _text(_found(outcome))}, headers=_headers(outcome))


# -- REST routes ------------------------------------------------------------------------


def rest_get(proxy: Proxy, request: Request) -> Later:
    _admit(proxy, 0)
    return _read(proxy, request, _path_key(proxy, request), _rest_value)


def rest_put(proxy: Proxy, request: Request) -> Later:
    _admit(proxy, len(request.body))
    key = _path_key(proxy, request)
    value = _check_value(proxy, request.body)
    return _write(proxy, request, key, value, _rest_written)


def rest_delete(proxy: Proxy, request: Request) -> Later:
    _admit(proxy, 0)
    return _write(proxy, request, _path_key(proxy, request), None, _rest_written)


def _rest_value(outcome: Outcome) -> Response:
    return Response(body=_found(outcome), headers=_headers(outcome),
                    content_type="application/octet-stream")


def _rest_written(outcome: Outcome) -> Response:
    record = _written(outcome).record
    assert record is not None
    return json_response({
        "key": outcome.key,
        "version": str(record.version),
        "replicas": list(outcome.replicas),
        "acked": list(outcome.acked),
        "hinted": outcome.hinted,
    }, headers=_headers(outcome))


async def rest_empty_key(proxy: Proxy, request: Request) -> Response:
    raise HttpError(400, "bad_request", "key must be a non-empty string: /kv/{key}")


# -- introspection ----------------------------------------------------------------------


def typed_response(answer: msgspec.Struct, status: int = 200) -> Response:
    """An introspection answer, encoded from its type in `kvlab.client.protocol`."""
    return Response(status, protocol.encode(answer), "application/json")


def _change(view: dict | None) -> ChangeInfo | None:
    """The core's view of a change (`Change.view`), as the API types it."""
    return None if view is None else msgspec.convert(view, ChangeInfo)


async def health(proxy: Proxy, request: Request) -> Response:
    return typed_response(HealthInfo(
        status="ok", proxy=proxy.name, pid=os.getpid(),
        nodes={n: link.state for n, link in proxy.engine.links.items()}))


async def metrics(proxy: Proxy, request: Request) -> Response:
    """`GET /metrics`: Prometheus's text format (OpenMetrics if `Accept` asks for it)."""
    body, content_type = proxy.metrics(request.headers.get("accept", ""))
    return Response(body=body, content_type=content_type)


async def _healing(proxy: Proxy, link: ReplicaLink) -> HealingInfo | None:
    """The node's own healing counters (its `/stats`), or None if it can't say now."""
    if link.state != UP or proxy.session is None \
            or proxy.membership.health(link.name, proxy.engine.now_ms()) != Health.UP:
        return None  # down, or suspect (heartbeats late): don't wait to find out
    try:
        async with proxy.session.get(f"{link.url}/stats", timeout=STATS_TIMEOUT,
                                     headers=proof(proxy.secret, link.port)) as response:
            if response.status != 200:
                return None
            body = await response.read()
        return protocol.decode(body, NodeStats, f"{link.name}'s /stats").healing
    except (aiohttp.ClientError, asyncio.TimeoutError, protocol.BadAnswer):
        return None


async def cluster(proxy: Proxy, request: Request) -> Response:
    """The ring, the quorums, the membership (with the change in progress), and per node
    the proxy's view of it, the failure detector's verdict, and its healing counters.

    Every node the membership watches is listed: during a change, the one leaving
    (`leaving`) and the one joining (`joining`) too."""
    coord = proxy.coordinator
    q = coord.quorum
    membership = proxy.membership
    # Every watched node has a link: opened at start or by the change that brought it in,
    # closed only once the membership stops watching it.
    links = [proxy.engine.links[name] for name in membership.watched]
    healing = await asyncio.gather(*(_healing(proxy, link) for link in links))
    view = membership.view(proxy.engine.now_ms())  # after the wait: as of the answer
    change = membership.change
    before = () if change is None else change.old.nodes
    after = () if change is None else change.new.nodes
    nodes = []
    for link, heal in zip(links, healing):
        detected = view["nodes"].get(link.name, {})
        nodes.append(NodeInfo(
            name=link.name, url=link.url, state=link.state,
            health=detected.get("health"), phi=detected.get("phi"),
            leaving=link.name in before and link.name not in after,
            joining=link.name in after and link.name not in before,
            partitioned=link.partitioned, sent=link.sent,
            replies=link.replies, errors=link.errors, last_error=link.last_error,
            p99_ms=link.p99_ms(), healing=heal, connects=link.connects,
            expired=link.expired,
        ))
    return typed_response(ClusterInfo(
        proxy=ProxyInfo(name=proxy.name, pid=os.getpid(),
                        served={str(k): v for k, v in proxy.engine.served.items()},
                        pending_ops=coord.pending_ops(), hints_sent=coord.hints_sent,
                        restamped=coord.restamped, high_water_ms=coord.clock.high_water_ms,
                        # the nodes it does not ask (held down at the last heartbeat tick)
                        down=sorted(coord.down), clock_offset_ms=proxy.clock_offset_ms,
                        overloaded=proxy.admission.refused,
                        value_bytes_in_flight=proxy.engine.value_bytes),
        n=q.n, r=q.r, w=q.w, vnodes=coord.ring.vnodes, timeout_ms=coord.timeout_ms,
        hints=coord.hints, sloppy=proxy.sloppy, nodes=nodes,
        membership=msgspec.convert(view, MembershipInfo),
    ))


def _replica_copy(node: str, outcome: Outcome) -> ReplicaCopy:
    if node in outcome.failed:
        return ReplicaCopy(node=node, state="unreachable", reason=outcome.failed[node])
    record: Record | None = outcome.answers.get(node)
    if record is None:
        return ReplicaCopy(node=node, state="missing")
    return ReplicaCopy(node=node, state="ok", version=str(record.version),
                       value=None if record.value is None else _text(record.value),
                       deleted=record.tombstone)


async def cluster_key(proxy: Proxy, request: Request) -> Response:
    key = _path_key(proxy, request)
    _admit(proxy, 0)  # it asks every replica: an open route that counts as a read
    outcome = await proxy.engine.inspect(key)
    return typed_response(KeyInfo(
        key=key, replicas=[_replica_copy(n, outcome) for n in outcome.replicas]))


# -- membership -------------------------------------------------------------------------


def _new_node(proxy: Proxy, request: Request) -> tuple[str, str]:
    """The node a change brings in: `{"name": N, "url": U}`, U as `http://host:port`.

    A URL the proxy itself or a node already in the cluster listens on is refused (409):
    the change would wait for ever on a node that is not there."""
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) \
            or not isinstance(body.get("url"), str):
        raise HttpError(400, "bad_request", "body must be {\"name\": N, \"url\": U}: the new "
                        "node's name and where it listens, e.g. http://127.0.0.1:8004")
    url = body["url"]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme != "http" or not _ip_or_localhost(parts.hostname) \
            or not port or parts.username is not None or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        raise HttpError(400, "bad_request", f"url must be http://HOST:PORT, HOST an IP address "
                        f"or localhost (no path), got {url!r}")
    url = f"http://{parts.netloc}"
    taken = {_where(u): n for n, u in proxy.membership.addresses.items()}
    if proxy.listening is not None:
        taken[proxy.listening] = "the proxy"
    holder = taken.get((parts.hostname, port))
    if holder is not None:
        raise HttpError(409, "conflict", f"{url} is where {holder} listens already")
    return body["name"], url


def _ip_or_localhost(host: str | None) -> bool:
    # No names to look up: the proxy reconnects to a node for as long as it is a member.
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True


def _where(url: str) -> tuple[str | None, int | None]:
    try:
        parts = urlsplit(url)
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def _node_name(request: Request) -> str:
    return unquote(request.tail)


def _known(proxy: Proxy, name: str) -> None:
    if name not in proxy.membership.watched:
        raise HttpError(404, "not_found", f"no node {name} in the ring")


def _started(proxy: Proxy, begin: Callable[[int], list]) -> Response:
    """Start a change (`begin(now)` returns the membership's effects): 202 with its view,
    and the nodes it ends with. Refused (busy, too few nodes, a bad name): 409."""
    engine = proxy.engine
    now = engine.now_ms()
    try:
        effects = begin(now)
    except BadName as exc:
        raise HttpError(400, "bad_request", str(exc)) from None
    except MembershipError as exc:
        raise HttpError(409, "conflict", str(exc)) from None
    engine.control(effects)
    change = proxy.membership.change
    assert change is not None
    return typed_response(ChangeStarted(change=msgspec.convert(change.view(now), ChangeInfo),
                                        nodes=list(change.new.nodes)), status=202)


def _join(proxy: Proxy, name: str, url: str, begin: Callable[[int], list]) -> Response:
    """A change that brings in `name`: its link opens once the change is under way (the
    node hears the new ring first thing on it)."""
    response = _started(proxy, begin)
    proxy.add_link(name, url)
    return response


async def add_node(proxy: Proxy, request: Request) -> Response:
    """Join a running, empty node: it takes its ranges from their current replicas."""
    name, url = _new_node(proxy, request)
    return _join(proxy, name, url,
                 lambda now: proxy.membership.add(name, now, address=url))


async def remove_node(proxy: Proxy, request: Request) -> Response:
    """Decommission a node: its ranges stream to their new replicas, then it leaves (its
    link closes when the change is over; stopping the process is the caller's part)."""
    name = _node_name(request)
    _known(proxy, name)
    return _started(proxy, lambda now: proxy.membership.remove(name, now))


async def replace_node(proxy: Proxy, request: Request) -> Response:
    """`POST /cluster/nodes/{old}/replace`: a new, empty node takes `old`'s place and
    ranges, streamed from the other replicas (`old` may be dead)."""
    old, _, action = request.tail.rpartition("/")
    if action != "replace" or not old:
        raise HttpError(404, "not_found", f"no route for {request.path}")
    old = unquote(old)
    _known(proxy, old)
    name, url = _new_node(proxy, request)
    return _join(proxy, name, url,
                 lambda now: proxy.membership.replace(old, name, now, address=url))


async def cluster_change(proxy: Proxy, request: Request) -> Response:
    """The change in progress (null when none) and the last one finished."""
    view = proxy.membership.view(proxy.engine.now_ms())
    return typed_response(ChangeStatus(change=_change(view["change"]),
                                       last_change=_change(view["last_change"])))


async def abort_change(proxy: Proxy, request: Request) -> Response:
    """`DELETE /cluster/change`: give up the change in progress while reads are still on
    the old ring (404 if there is none, 409 once reads have moved)."""
    if proxy.membership.change is None:
        raise HttpError(404, "not_found", "no change is in progress")
    now = proxy.engine.now_ms()
    try:
        effects = proxy.membership.abort(now)
    except MembershipError as exc:
        raise HttpError(409, "conflict", str(exc)) from None
    proxy.engine.control(effects)
    last = proxy.membership.last
    assert last is not None
    return typed_response(ChangeAborted(aborted=msgspec.convert(last.view(now), ChangeInfo),
                                        nodes=list(last.old.nodes)))


PARTITION_DIRECTIONS = ("both", "to", "from")


async def set_fault(proxy: Proxy, request: Request) -> Response:
    """Cut or heal the link between the proxy and a node.

    Body: `{"partitioned": true|false, "direction": "both"|"to"|"from"}` ("to": requests to
    the node are lost; "from": its replies are lost, though its writes still apply).
    """
    name = _node_name(request)
    link = proxy.engine.links.get(name)
    if link is None:
        raise HttpError(404, "not_found", f"no node {name} in the ring")
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        body = None
    on = body.get("partitioned") if isinstance(body, dict) else None
    direction = body.get("direction", "both") if isinstance(body, dict) else None
    if not isinstance(on, bool) or direction not in PARTITION_DIRECTIONS:
        raise HttpError(400, "bad_request", "body must be {\"partitioned\": true|false, "
                       "\"direction\": \"both\"|\"to\"|\"from\"}")
    link.partition(direction if on else None)
    return typed_response(PartitionInfo(node=name, partitioned=link.partitioned))


Route = Callable[[Proxy, Request], Awaitable[Response]] | Callable[[Proxy, Request], Later]

ROUTES: list[tuple[str, str, Route]] = [
    ("POST", "/set", compat_set),
    ("GET", "/get", compat_get),
    ("DELETE", "/delete", compat_delete),
    *((method, "/kv/", rest_empty_key) for method in ("GET", "PUT", "DELETE")),
    ("GET", "/kv/*", rest_get),
    ("PUT", "/kv/*", rest_put),
    ("DELETE", "/kv/*", rest_delete),
    ("GET", "/health", health),
    ("GET", "/metrics", metrics),
    ("GET", "/cluster", cluster),
    ("GET", "/cluster/keys/*", cluster_key),
    ("GET", "/cluster/change", cluster_change),
    ("DELETE", "/cluster/change", abort_change),
    ("POST", "/cluster/nodes", add_node),
    ("DELETE", "/cluster/nodes/*", remove_node),
    ("POST", "/cluster/nodes/*", replace_node),
    ("PUT", "/cluster/faults/*", set_fault),
]


# What the cluster's secret guards: the routes that change the ring or break links always,
# the data and what a replica holds with --protect-data.
CONTROL_ROUTES = frozenset({add_node, remove_node, replace_node, abort_change, set_fault})
DATA_ROUTES = frozenset({compat_set, compat_get, compat_delete, rest_empty_key, rest_get,
                         rest_put, rest_delete, cluster_key})


def make_router(proxy: Proxy) -> Router:
    """The API's routes; a path ending in `*` matches any non-empty rest (`request.tail`)."""
    router = Router()
    guarded = CONTROL_ROUTES | (DATA_ROUTES if proxy.protect_data else frozenset())
    for method, path, route in ROUTES:
        prefix = path.endswith("*")
        handler = partial(route, proxy)
        if proxy.guard is not None and route in guarded:
            handler = _guarded(handler, proxy.guard)
        router.add(method, path.rstrip("*"), handler, prefix=prefix)
    return router


def _guarded(handler: Callable[[Request], Any], guard: Guard) -> Callable[[Request], Any]:
    """`handler`, answering 401 to a request without the secret. A direct handler stays
    direct (a plain function), so the data routes keep their fast path when protected."""
    def check(request: Request) -> None:
        if not guard.allows(request.headers.get("authorization")):
            raise HttpError(401, "unauthorized", MESSAGE, headers=UNAUTHORIZED)

    if inspect.iscoroutinefunction(handler):
        async def guarded_async(request: Request) -> Response:
            check(request)
            return await handler(request)
        return guarded_async

    def guarded(request: Request) -> Response | Later:
        check(request)
        return handler(request)
    return guarded


async def serve_proxy(proxy: Proxy, host: str, port: int, stopped: asyncio.Event, *,
                      max_connections: int = MAX_CONNECTIONS,
                      request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
    """Open the links to the nodes, serve the API until `stopped`, then close everything."""
    # Each request to a node (a channel, /stats) shows a proof of the secret made for it.
    proxy.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    membership = proxy.membership
    for name in membership.watched:  # a --node the ring no longer has is not linked
        proxy.add_link(name, membership.addresses[name])
    proxy.engine.start()
    # Room for the largest value plus the JSON around it; larger bodies get 413.
    server = HttpServer(make_router(proxy),
                        max_body=proxy.limits.max_value + proxy.limits.max_key + 4096,
                        max_connections=max_connections, request_timeout_s=request_timeout_s)
    state = proxy.clock_state
    saving = None if state is None else asyncio.get_running_loop().create_task(
        state.keep_saved(stopped))
    proxy.server = server
    try:
        await server.start(host, port)
        proxy.listening = (host, port)
        await stopped.wait()
    finally:
        await server.close()
        await proxy.engine.stop()
        await proxy.session.close()
        if state is not None and saving is not None:
            stopped.set()  # also when the server failed to start
            await saving
            state.save(final=True)  # nothing can be stamped any more: the high water itself


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kvlab.net.proxy",
        description="Run the kvlab proxy: the coordinator of every read and write, the "
                    "committer of membership changes (POST/DELETE /cluster/nodes), and the "
                    "failure detector.")
    parser.add_argument("--name", default="proxy", help="coordinator id stamped on versions")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--node", type=name_url, action="append", required=True,
                        metavar="NAME=URL",
                        help="a data node (repeat for each): the ring on a first start; "
                             "with --state, a ring saved by an earlier run wins")
    parser.add_argument("--replicas", type=int, default=3, metavar="N",
                        help="replicas per key (default: %(default)s)")
    parser.add_argument("--read-quorum", type=int, default=2, metavar="R",
                        help="replies a read waits for (default: %(default)s)")
    parser.add_argument("--write-quorum", type=int, default=2, metavar="W",
                        help="acknowledgements a write waits for (default: %(default)s)")
    parser.add_argument("--vnodes", type=int, default=DEFAULT_VNODES,
                        help="virtual nodes per node, as the nodes' (default: %(default)s)")
    parser.add_argument("--timeout-ms", type=int, default=1000,
                        help="how long an operation waits for its replicas (default: "
                             "%(default)s)")
    parser.add_argument("--heartbeat-ms", type=int, default=100, metavar="MS",
                        help="the failure detector pings every node this often; a node "
                             "silent for about 7 intervals is suspect, for about 18.5 down "
                             "(0.7 s and 1.85 s at the default: %(default)s)")
    parser.add_argument("--max-key", type=int, default=Limits.max_key, metavar="BYTES",
                        help=f"the longest key; at most {MAX_KEY} (default: %(default)s)")
    parser.add_argument("--max-value", type=int, default=Limits.max_value,
                        metavar="BYTES",
                        help=f"the largest value; at most {MAX_VALUE}, half the largest "
                             f"frame a node takes (default: %(default)s)")
    parser.add_argument("--max-inflight", type=int, default=Limits.max_inflight, metavar="N",
                        help="operations in flight at once; beyond, requests are answered "
                             "503 overloaded (default: %(default)s)")
    parser.add_argument("--max-inflight-bytes", type=int, default=Limits.max_inflight_bytes,
                        metavar="BYTES",
                        help="bytes of values being written at once; beyond, writes are "
                             "answered 503 overloaded (a write alone always gets in) "
                             "(default: %(default)s)")
    parser.add_argument("--hints", type=on_off, default=True, metavar="on|off",
                        help="keep a write a primary missed as a hint on a fallback node "
                             "(default: on)")
    parser.add_argument("--sloppy", action="store_true",
                        help="hints count toward W unless a write says sloppy=0 (a sloppy "
                             "quorum; needs --hints on)")
    parser.add_argument("--max-clock-ahead", type=float, default=MAX_AHEAD_MS / 1000,
                        metavar="SECONDS",
                        help="versions further ahead of this clock are not followed (a "
                             "broken clock elsewhere); as the nodes' (default: %(default)g)")
    parser.add_argument("--state", type=Path, metavar="DIR",
                        help="folder for the clock's high water, so that versions never go "
                             "back across restarts, and for the ring last committed, so "
                             "that a restart goes on from it")
    parser.add_argument("--clock-offset-ms", type=int, default=0, metavar="N",
                        help="run the coordinator's clock N ms off the wall clock (negative: "
                             "behind); for tests and demos of clock skew")
    parser.add_argument("--protect-data", action="store_true",
                        help="the data routes and /cluster/keys/* need the secret too (the "
                             "secret comes in $KVLAB_SECRET; without it, nothing is checked)")
    parser.add_argument("--max-connections", type=int, metavar="N",
                        help="client connections served at once; beyond, a 503 "
                             "too_many_connections (default: %d, or less if the file "
                             "descriptors allowed can't hold them)" % MAX_CONNECTIONS)
    parser.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S,
                        metavar="SECONDS",
                        help="a request's head must arrive whole in this, and the whole "
                             "request in twice this plus 1 s per 16 KiB of body; else 408 "
                             "(default: %(default)g)")
    args = parser.parse_args(argv)
    fds = _raise_fd_limit()
    max_connections = args.max_connections or max(1, min(MAX_CONNECTIONS, fds - FD_RESERVE))
    if max_connections < 1 or max_connections > fds - FD_RESERVE:
        parser.error(f"--max-connections must be 1..{fds - FD_RESERVE}: the {fds} file "
                     f"descriptors allowed, less {FD_RESERVE} kept for the node links, logs "
                     f"and refusals")
    if args.request_timeout <= 0:
        parser.error("--request-timeout must be positive")
    if args.sloppy and not args.hints:
        parser.error("--sloppy counts hints toward W: it needs --hints on")
    if args.heartbeat_ms < 1:
        parser.error("--heartbeat-ms must be at least 1")
    if not 1 <= args.max_key <= MAX_KEY:
        parser.error(f"--max-key must be from 1 to {MAX_KEY}")
    if not 1 <= args.max_value <= MAX_VALUE:
        parser.error(f"--max-value must be from 1 to {MAX_VALUE}: a value travels to the "
                     f"nodes in one frame")
    if args.max_inflight < 1 or args.max_inflight_bytes < 1:
        parser.error("--max-inflight and --max-inflight-bytes must be at least 1")
    names = [name for name, _ in args.node]
    if len(set(names)) != len(names):
        parser.error("a --node name is given twice")
    quorum = Quorum(args.replicas, args.read_quorum, args.write_quorum)
    os.umask(0o077)  # the clock and ring it keeps in --state: its owner's only
    proxy = Proxy(args.name, dict(args.node), quorum, args.vnodes, args.timeout_ms,
                  Limits(args.max_key, args.max_value, args.max_inflight,
                         args.max_inflight_bytes), hints=args.hints, sloppy=args.sloppy,
                  max_ahead_ms=round(args.max_clock_ahead * 1000),
                  clock_offset_ms=args.clock_offset_ms, state_dir=args.state,
                  heartbeat_ms=args.heartbeat_ms, secret=secret_from_env(),
                  protect_data=args.protect_data, port=args.port)
    restored = ring = None
    if proxy.clock_state is not None:
        try:
            restored = proxy.clock_state.restore()
            ring = proxy.restore_ring()
        except (ClockStateError, RingStateError) as exc:
            parser.exit(2, f"proxy: {exc}\n")
    clock = "" if restored is None else f", clock restored to {restored}"
    if ring is not None:
        moving = "" if ring.pending is None else \
            f", moving to {', '.join(ring.pending.nodes)} (started over)"
        clock += f"; ring version {ring.version} restored: {', '.join(ring.ring.nodes)}{moving}"
    print(f"proxy {args.name} pid {os.getpid()} on {args.host}:{args.port}{clock}", flush=True)
    run(partial(serve_proxy, proxy, args.host, args.port, max_connections=max_connections,
                request_timeout_s=args.request_timeout))


FD_RESERVE = 1024  # file descriptors kept beyond the client connections


def _raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to the hard one; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return soft


if __name__ == "__main__":
    main()
