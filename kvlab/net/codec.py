"""Wire format of the replica channel: msgpack frames, each a list of messages.

The format is the message declarations in `kvlab.core.messages`: each is an `array_like`
msgspec Struct, so it travels as a msgpack array of its fields, led by its tag:
  read request   [0, req, key]
  write request  [1, req, [key, value, [physical, logical, coordinator]]]   value nil = delete
  read reply     [0, req, record or nil]
  write reply    [1, req]
  error reply    [2, req, text]
msgspec encodes and decodes whole frames in C, type-checking every field: a malformed frame
raises `msgspec.DecodeError` (a `ValueError`), never yields a half-built message.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from kvlab.core.messages import (
    ErrorReply,
    ReadReply,
    ReadRequest,
    Reply,
    Request,
    WriteReply,
    WriteRequest,
)

_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(list[ReadRequest | WriteRequest])
_replies = msgspec.msgpack.Decoder(list[ReadReply | WriteReply | ErrorReply])


def encode_requests(requests: Sequence[Request]) -> bytes:
    return _encoder.encode(requests)


def decode_requests(frame: bytes) -> list[Request]:
    return _requests.decode(frame)


def encode_replies(replies: Sequence[Reply]) -> bytes:
    return _encoder.encode(replies)


def decode_replies(frame: bytes) -> list[Reply]:
    return _replies.decode(frame)
