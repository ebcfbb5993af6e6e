"""What the two clients share: how a call becomes an HTTP request on the REST API, and how
a response becomes a result or an exception. No IO here.

The introspection and membership answers (`/cluster`, `/cluster/keys/{key}`,
`/cluster/change`, the changes' 202s, a node's `/stats`, `/health`) are typed once, below,
as msgspec Structs: the servers encode them, the clients decode them, and an answer that
does not fit is refused with `BadAnswer` naming the field, rather than read as a dict that
fails somewhere later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import quote, urlencode

import msgspec


class KVError(Exception):
    """Base of the client's errors. `status` is the HTTP status (0: no response at all)."""

    def __init__(self, message: str, status: int = 0, details: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details or {}


class KeyNotFound(KVError, KeyError):
    def __str__(self) -> str:  # KeyError's str() would quote the message
        return self.args[0]


class Unavailable(KVError):
    """The cluster could not answer: quorum not reached, timeout, or proxy unreachable.

    Never raised for a key that does not exist: that is `KeyNotFound`, or `None` from `get`.
    """


class BadRequest(KVError):
    """The request was refused as invalid (empty key, too large, bad quorum override)."""


class BadAnswer(KVError):
    """The server answered 2xx with a body that is not what the route answers (a wrong
    field, a missing one, not JSON): a different program on that port, or a bug."""


@dataclass(frozen=True)
class Result:
    key: str
    value: bytes | None
    version: str | None
    replicas: list[str] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    # A write's primaries that missed it -> the fallback node keeping a hint for each.
    hinted: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str | None:
        return None if self.value is None else self.value.decode("utf-8", "replace")


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: bytes | None = None


def key_path(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise BadRequest("key must be a non-empty string")
    return "/kv/" + quote(key, safe="")


def _with_query(path: str, **params: int | None) -> str:
    query = {k: v for k, v in params.items() if v is not None}
    return f"{path}?{urlencode(query)}" if query else path


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


def get_call(key: str, r: int | None) -> Call:
    return Call("GET", _with_query(key_path(key), r=r))


def set_call(key: str, value: str | bytes, w: int | None, sloppy: bool | None = None) -> Call:
    """`sloppy`: count hints toward W (True), don't (False), or the cluster's default."""
    body = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return Call("PUT", _with_query(key_path(key), w=w, sloppy=_flag(sloppy)), body)


def delete_call(key: str, w: int | None, sloppy: bool | None = None) -> Call:
    return Call("DELETE", _with_query(key_path(key), w=w, sloppy=_flag(sloppy)))


def inspect_call(key: str) -> Call:
    return Call("GET", "/cluster/keys/" + quote(key, safe=""))


def partition_call(node: str, on: bool, direction: str) -> Call:
    return Call("PUT", "/cluster/faults/" + quote(node, safe=""),
                json.dumps({"partitioned": on, "direction": direction}).encode())


def _split(header: str | None) -> list[str]:
    return [p for p in (header or "").split(",") if p]


def raise_for(status: int, body: bytes, key: str | None = None) -> None:
    """Turn an error response into the matching exception; return on success."""
    if status < 400:
        return
    try:
        details = json.loads(body)
        message = details.get("message") or details.get("error") or body.decode()
    except (ValueError, AttributeError):
        details, message = {}, body.decode("utf-8", "replace") or f"HTTP {status}"
    if status == 404 and details.get("error") == "not_found" and key is not None:
        raise KeyNotFound(f"key not found: {key}", status, details)
    if status in (503, 504):
        raise Unavailable(message, status, details)
    if status in (400, 413):
        raise BadRequest(message, status, details)
    raise KVError(message, status, details)


def read_result(key: str, status: int, headers, body: bytes) -> Result:
    raise_for(status, body, key)
    return Result(key, body, headers.get("X-Kvlab-Version"),
                  _split(headers.get("X-Kvlab-Replicas")), _split(headers.get("X-Kvlab-Acked")))


def write_result(key: str, status: int, headers, body: bytes, value: bytes | None) -> Result:
    raise_for(status, body, key)
    hinted = dict(pair.partition("=")[::2] for pair in _split(headers.get("X-Kvlab-Hinted")))
    return Result(key, value, headers.get("X-Kvlab-Version"),
                  _split(headers.get("X-Kvlab-Replicas")), _split(headers.get("X-Kvlab-Acked")),
                  hinted)


# -- the introspection API, typed ----------------------------------------------------------
# Unknown fields are ignored (a newer server may say more); a missing or mistyped one is a
# BadAnswer. Names end in Info (or say what they are) so that none is taken for the
# dashboard's own view classes (kvlab.tui.source), which are built from these.

_STRUCT = {"kw_only": True, "frozen": True}


class ExchangeInfo(msgspec.Struct, **_STRUCT):
    """The last anti-entropy exchange a node started with a peer that repaired keys."""

    at_ms: int
    range: str
    keys_in: int
    keys_out: int
    ms: int  # how long it took
    ago_ms: int


class HealingInfo(msgspec.Struct, **_STRUCT):
    """A node's healing counters since its process started (`Replica.snapshot`)."""

    hints_held: dict[str, int]  # target -> hints kept for it
    hints_stored: int
    hints_replayed: int
    hints_expired: int
    ae_rounds: int
    ae_in_sync: int
    repaired: dict[str, int]  # mechanism -> keys repaired on this node
    repair_bytes: int
    superseded: int
    refused: int
    purged: int
    tombstones: int
    tombstones_unconfirmed: int
    ignored: int
    refused_owner: int
    streamed_keys: int
    streamed_bytes: int
    streams: int
    dropped: int
    strays: int
    ring_version: int
    exchanges: dict[str, ExchangeInfo]  # peer -> its last exchange that repaired keys
    last_exchange_ago_ms: dict[str, int]  # peer -> since the last exchange of any kind


class NodeRingInfo(msgspec.Struct, **_STRUCT):
    """The ring a node holds (its `/stats`)."""

    nodes: list[str]
    vnodes: int
    replicas: int
    version: int
    pending: list[str] | None  # the ring a change moves to, if one is under way


class PeerInfo(msgspec.Struct, **_STRUCT):
    """A node's outgoing link to a peer."""

    url: str
    state: str  # up or down
    sent: int
    connects: int
    errors: int
    last_error: str | None


class NodeStats(msgspec.Struct, **_STRUCT):
    """`GET /stats` of a node."""

    node: str
    pid: int
    keys: int  # live keys
    reads: int
    writes: int  # write requests taken (not superseded or refused)
    stored: int  # records stored, repairs included
    batches: int
    commits: int
    uptime_s: float
    load_s: float
    indexed: bool  # loaded from the index kept at its last stop (not by a scan)
    last_error: str | None
    held: int  # keys held, tombstones included
    hints_held: int
    ring: NodeRingInfo
    peers: dict[str, PeerInfo]
    coordinators: int
    healing: HealingInfo


class ProxyInfo(msgspec.Struct, **_STRUCT):
    """The proxy's own figures in `/cluster`."""

    name: str
    pid: int
    served: dict[str, int]  # operations by the status they ended with
    pending_ops: int
    hints_sent: int
    restamped: int
    high_water_ms: int
    down: list[str]  # nodes the failure detector holds down
    clock_offset_ms: int
    overloaded: int = 0  # requests answered 503 overloaded
    value_bytes_in_flight: int = 0  # of writes waiting for their outcome


class NodeInfo(msgspec.Struct, **_STRUCT):
    """One node as the proxy sees it in `/cluster`."""

    name: str
    url: str
    state: str  # its link: up or down
    health: str | None  # the failure detector's: up, suspect or down
    phi: float | None
    leaving: bool
    joining: bool
    partitioned: str | None  # both, to, from; None: not cut
    sent: int
    replies: int
    errors: int
    last_error: str | None
    p99_ms: float | None  # replica round trips, over the last 2,048
    healing: HealingInfo | None  # None: the node is down or slow to answer
    connects: int = 0  # times its link connected
    expired: int = 0  # requests dropped unsent: queued past their operation's timeout


class RingInfo(msgspec.Struct, **_STRUCT):
    """The ring reads are placed by: nodes, vnodes, and seats (node, the node whose tokens
    it took) of replacements."""

    nodes: list[str]
    vnodes: int
    seats: list[tuple[str, str]]


class Detected(msgspec.Struct, **_STRUCT):
    """The failure detector's view of one node."""

    health: str  # up, suspect or down
    phi: float
    silent_ms: int | None
    ring_version: int | None  # the ring version the node last said it holds


class StreamInfo(msgspec.Struct, **_STRUCT):
    """One stream of a change: `arcs` (each `(start, end]`) from `source` to `target`."""

    source: str
    target: str
    arcs: list[tuple[int, int]]
    share: float  # of the key space
    keys: int
    bytes: int
    done: bool
    error: str


class ChangeInfo(msgspec.Struct, **_STRUCT):
    """A membership change and how far it got."""

    kind: str  # add, remove, replace (resume: one a restarted proxy found)
    node: str
    replaced: str | None
    phase: str  # joining, streaming, handoff, settling, done, aborted
    nodes_before: list[str]
    nodes_after: list[str]
    started_ms: int
    elapsed_ms: int
    streams: int
    streams_done: int
    keys: int
    bytes: int
    fraction: float
    rate_bytes_s: int
    eta_ms: int | None
    moving: list[StreamInfo]


class DetectorInfo(msgspec.Struct, **_STRUCT):
    heartbeat_ms: int
    suspect_phi: float
    down_phi: float
    suspect_after_ms: int
    down_after_ms: int


class MembershipInfo(msgspec.Struct, **_STRUCT):
    """The membership in `/cluster`: ring, version, detector, change."""

    version: int
    ring: RingInfo
    pending: list[str] | None
    nodes: dict[str, Detected]
    change: ChangeInfo | None
    last_change: ChangeInfo | None
    detector: DetectorInfo


class ClusterInfo(msgspec.Struct, **_STRUCT):
    """`GET /cluster`."""

    proxy: ProxyInfo
    n: int
    r: int
    w: int
    vnodes: int
    timeout_ms: int
    hints: bool
    sloppy: bool
    nodes: list[NodeInfo]  # every node the membership watches, joining and leaving ones too
    membership: MembershipInfo


class ChangeStatus(msgspec.Struct, **_STRUCT):
    """`GET /cluster/change`: the change in progress and the last one over."""

    change: ChangeInfo | None
    last_change: ChangeInfo | None


class ChangeStarted(msgspec.Struct, **_STRUCT):
    """The 202 of `POST /cluster/nodes`, `DELETE /cluster/nodes/{name}` and
    `POST /cluster/nodes/{name}/replace`: the change, and the nodes it ends with."""

    change: ChangeInfo
    nodes: list[str]


class ChangeAborted(msgspec.Struct, **_STRUCT):
    """`DELETE /cluster/change`: the change given up, and the nodes the ring is back to."""

    aborted: ChangeInfo
    nodes: list[str]


class ReplicaCopy(msgspec.Struct, **_STRUCT):
    """One replica's own copy of a key (`/cluster/keys/{key}`)."""

    node: str
    state: str  # ok, missing or unreachable
    version: str | None = None
    value: str | None = None
    deleted: bool = False
    reason: str | None = None  # why it was unreachable


class KeyInfo(msgspec.Struct, **_STRUCT):
    """`GET /cluster/keys/{key}`: each replica's copy, in preference order."""

    key: str
    replicas: list[ReplicaCopy]


class PartitionInfo(msgspec.Struct, **_STRUCT):
    """`PUT /cluster/faults/{node}`."""

    node: str
    partitioned: str | None


class HealthInfo(msgspec.Struct, omit_defaults=True, **_STRUCT):
    """`GET /health` of the proxy (`proxy`, its links in `nodes`) or of a node (`node`, its
    peer links in `peers`; a node whose database failed answers 503 with the `reason`)."""

    status: str  # ok, or failed
    pid: int
    proxy: str | None = None
    node: str | None = None
    nodes: dict[str, str] = {}
    peers: dict[str, str] = {}
    reason: str | None = None


Answer = TypeVar("Answer", bound=msgspec.Struct)
_decoders: dict[type, msgspec.json.Decoder] = {}


def encode(answer: msgspec.Struct) -> bytes:
    """An answer's JSON, as the servers send it."""
    return msgspec.json.encode(answer)


def decode(body: bytes, kind: type[Answer], what: str = "the server") -> Answer:
    """The answer of a 2xx response as `kind`; `BadAnswer` if it is not one."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError too
        raise BadAnswer(f"{what} answered with something that is not a {kind.__name__}: "
                        f"{exc}", 200) from None


def answer(status: int, body: bytes, kind: type[Answer], what: str = "the server",
           key: str | None = None) -> Answer:
    """Raise for an error response (as `raise_for`), else decode the answer as `kind`."""
    raise_for(status, body, key)
    return decode(body, kind, what)


def health_call() -> Call:
    return Call("GET", "/health")


def cluster_call() -> Call:
    return Call("GET", "/cluster")


def stats_call() -> Call:
    return Call("GET", "/stats")


def change_call() -> Call:
    return Call("GET", "/cluster/change")


def abort_call() -> Call:
    return Call("DELETE", "/cluster/change")


def add_node_call(name: str, url: str) -> Call:
    return Call("POST", "/cluster/nodes", json.dumps({"name": name, "url": url}).encode())


def remove_node_call(name: str) -> Call:
    return Call("DELETE", "/cluster/nodes/" + quote(name, safe=""))


def replace_node_call(old: str, name: str, url: str) -> Call:
    return Call("POST", f"/cluster/nodes/{quote(old, safe='')}/replace",
                json.dumps({"name": name, "url": url}).encode())
