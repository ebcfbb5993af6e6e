"""Wire format of the replica channel: msgpack frames, each a list of messages.

Messages are short positional lists (cheaper to pack than maps):
  read request   [0, req, key]
  write request  [1, req, key, value, physical, logical, coordinator]   value nil = tombstone
  read reply     [0, req] (no record) or [0, req, key, value, physical, logical, coordinator]
  write reply    [1, req]
  error reply    [2, req, text]
"""

from __future__ import annotations

from collections.abc import Iterable

import msgpack

from kvlab.core.messages import (
    ErrorReply,
    ReadReply,
    ReadRequest,
    Reply,
    Request,
    WriteReply,
    WriteRequest,
)
from kvlab.core.record import Record
from kvlab.core.version import Version

_READ, _WRITE, _ERROR = 0, 1, 2


def _record_fields(r: Record) -> list:
    v = r.version
    return [r.key, r.value, v.physical, v.logical, v.coordinator]


def _record(fields: list) -> Record:
    key, value, physical, logical, coordinator = fields
    return Record(key, value, Version(physical, logical, coordinator))


def encode_requests(requests: Iterable[Request]) -> bytes:
    out = []
    for m in requests:
        if isinstance(m, ReadRequest):
            out.append([_READ, m.req, m.key])
        else:
            out.append([_WRITE, m.req, *_record_fields(m.record)])
    return msgpack.packb(out, use_bin_type=True)


def decode_requests(frame: bytes) -> list[Request]:
    out: list[Request] = []
    for m in msgpack.unpackb(frame, raw=False):
        if m[0] == _READ:
            out.append(ReadRequest(m[1], m[2]))
        elif m[0] == _WRITE:
            out.append(WriteRequest(m[1], _record(m[2:])))
        else:
            raise ValueError(f"unknown request kind {m[0]!r}")
    return out


def encode_replies(replies: Iterable[Reply]) -> bytes:
    out = []
    for m in replies:
        if isinstance(m, ReadReply):
            out.append([_READ, m.req] if m.record is None
                       else [_READ, m.req, *_record_fields(m.record)])
        elif isinstance(m, WriteReply):
            out.append([_WRITE, m.req])
        else:
            out.append([_ERROR, m.req, m.error])
    return msgpack.packb(out, use_bin_type=True)


def decode_replies(frame: bytes) -> list[Reply]:
    out: list[Reply] = []
    for m in msgpack.unpackb(frame, raw=False):
        kind = m[0]
        if kind == _READ:
            # Inlined `_record`: the proxy decodes N replies for every read it serves.
            out.append(ReadReply(m[1], Record(m[2], m[3], Version(m[4], m[5], m[6]))
                                 if len(m) > 2 else None))
        elif kind == _WRITE:
            out.append(WriteReply(m[1]))
        elif kind == _ERROR:
            out.append(ErrorReply(m[1], m[2]))
        else:
            raise ValueError(f"unknown reply kind {kind!r}")
    return out
