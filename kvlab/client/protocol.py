"""What the two clients share: how a call becomes an HTTP request on the REST API, and how
a response becomes a result or an exception. No IO here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode


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


def json_result(status: int, body: bytes) -> dict:
    raise_for(status, body)
    return json.loads(body)
