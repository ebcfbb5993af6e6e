"""Wire format of the replica channels: msgpack frames, each a list of messages.

The format is the message declarations in `kvlab.core.messages`: each is an `array_like`
msgspec Struct, so it travels as a msgpack array of its fields led by its tag, which is
unique across every message, so one channel (coordinator <-> node, node -> node) can carry
any of them:
  read request   [0, req, key, ring version]
  write request  [1, req, [key, value, [physical, logical, coordinator]], repair]
  hint request   [2, req, record, target]
  read reply     [3, req, record or nil]          write reply [4, req]
  error reply    [5, req, text]                   superseded  [6, req, version]
  tree request   [10, xid, range, branches]       tree reply  [11, xid, [[branch, leaves]]]
  keys request   [12, xid, range, segments, [[key, version]]]
  keys reply     [13, xid, records, want]
  push           [14, xid, records, mechanism]    push ack    [15, xid, stored]
  purge          [16, [[key, version]]]
  ring update    [7, version, [nodes, vnodes, seats], pending ring or nil, addresses, clean]
  ping           [8, seq]                         pong        [9, seq, ring version, hints]
  stream order   [20, xid, target, [[start, end]], after, attempt]
  stream progress [22, xid, keys, bytes, cursor, done, error, attempt]
(value nil = a tombstone; trailing fields with defaults may be left out.)

msgspec encodes and decodes whole frames in C, type-checking every field: a malformed frame
raises `msgspec.DecodeError` (a `ValueError`), never yields a half-built message. One
decoder for the union costs no more per message than one for a single kind (measured:
~105 ns per reply and ~120 ns per request either way); `decode_replies` stays for the
proxy, which must never take anything from a node but replies and reports (heartbeats,
stream progress).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from kvlab.core.hashtree import BRANCHES, PER_BRANCH
from kvlab.core.messages import (
    HintRequest,
    KeysReply,
    KeysRequest,
    Message,
    Purge,
    Push,
    ReadReply,
    ReadRequest,
    Reply,
    Report,
    TreeReply,
    TreeRequest,
    WriteRequest,
)

_encoder = msgspec.msgpack.Encoder()
_messages = msgspec.msgpack.Decoder(list[Message])
_replies = msgspec.msgpack.Decoder(list[Reply | Report])


def encode(messages: Sequence[Message]) -> bytes:
    """One frame holding `messages`, in order."""
    return _encoder.encode(messages)


# What a message costs in a frame besides its keys and values (tags, numbers, versions), and
# what an entry of a key list costs besides its key: estimates, rounded up. Frames are cut by
# these weights (`kvlab.net.framing`), which only need to keep a frame well under the
# node's limit; values are nearly all of a big frame.
OVERHEAD = 48
_ENTRY = 32
_RECORDS = (KeysReply, Push)
_MANY = (KeysReply, Push, KeysRequest, Purge)


# The messages worth weighing on their way into a frame: those that carry values, or lists
# of keys. Any other is at most `LIGHT` bytes: numbers, a ring, and at most one key (of at
# most `kvlab.net.framing.MAX_KEY` bytes).
HEAVY = frozenset({WriteRequest, HintRequest, ReadReply, KeysReply, Push, KeysRequest, Purge,
                   TreeReply})
LIGHT = 2048


def weight(message: Message) -> int:
    """About how many bytes `message` takes in a frame (keys counted in characters)."""
    # Each request a coordinator sends and each reply a node sends is weighed, so the common
    # kinds are told apart first, by identity (a tuple's `in` costs more).
    cls = message.__class__
    if cls is WriteRequest:  # every write, three times: the shortest way
        value = message.record.value  # type: ignore[union-attr]
        return LIGHT + (0 if value is None else len(value))
    if cls is ReadReply or cls is HintRequest:
        record = message.record  # type: ignore[union-attr]
        if record is None:  # a read reply for a key never heard of
            return OVERHEAD
        value = record.value
        return OVERHEAD + len(record.key) + (0 if value is None else len(value))
    if cls is ReadRequest:
        return OVERHEAD + len(message.key)  # type: ignore[union-attr]
    if cls is TreeReply:  # numbers only: a branch and its leaf hashes
        branches = message.leaves  # type: ignore[union-attr]
        return OVERHEAD + 10 * sum(len(leaves) for _, leaves in branches)
    if cls in _MANY:
        if cls in _RECORDS:
            return OVERHEAD + sum(OVERHEAD + len(r.key) + (0 if r.value is None else len(r.value))
                                  for r in message.records)  # type: ignore[union-attr]
        entries = message.entries  # type: ignore[union-attr]
        return OVERHEAD + sum(_ENTRY + len(key) for key, _ in entries)
    return OVERHEAD


def decode(frame: bytes) -> list[Message]:
    """Every message in `frame`; raises `ValueError` if any is malformed."""
    messages = _messages.decode(frame)
    for message in messages:
        if type(message) in _SHAPED:  # rare (anti-entropy), so cheap to look for
            _check_shape(message)
    return messages


def decode_replies(frame: bytes) -> list[Reply | Report]:
    """A frame a node sent a coordinator: replies and reports only."""
    return _replies.decode(frame)


# Hash tree messages must match the tree's dimensions: the replica indexes them by branch
# and leaf, and a short list would fail it half-way through a frame.
_SHAPED = (TreeRequest, TreeReply)


def _check_shape(message: Message) -> None:
    if isinstance(message, TreeRequest):
        if len(message.branches) != BRANCHES:
            raise msgspec.ValidationError(
                f"TreeRequest has {len(message.branches)} branches, expected {BRANCHES}")
    elif isinstance(message, TreeReply):
        for branch, leaves in message.leaves:
            if not 0 <= branch < BRANCHES or len(leaves) != PER_BRANCH:
                raise msgspec.ValidationError(
                    f"TreeReply branch {branch} with {len(leaves)} leaves: expected a branch "
                    f"below {BRANCHES} with {PER_BRANCH} leaves")
