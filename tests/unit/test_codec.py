"""The replica channels' wire format: every message round-trips; bad frames raise."""

from __future__ import annotations

import typing

import msgspec
import pytest

from kvlab.core.hashtree import BRANCHES, PER_BRANCH
from kvlab.core.messages import (
    ErrorReply,
    HintRequest,
    KeysReply,
    KeysRequest,
    Mechanism,
    Message,
    Ping,
    Pong,
    Purge,
    Push,
    PushAck,
    ReadReply,
    ReadRequest,
    RingSpec,
    RingUpdate,
    StreamOrder,
    StreamProgress,
    Superseded,
    TreeReply,
    TreeRequest,
    WriteReply,
    WriteRequest,
)
from kvlab.core.record import Record
from kvlab.core.version import Version
from kvlab.net import codec

V = Version(12, 3, "proxy")
REC = Record("k \u00e9/&?", b"\x00\xffbin", V)
TOMB = Record("gone", None, Version(13, 0, "proxy"))
RANGE = ("n1", "n2", "n3")

EVERY_KIND = [
    ReadRequest(1, "a"), WriteRequest(2, REC), WriteRequest(3, TOMB, repair=True),
    HintRequest(4, REC, "n3"),
    ReadReply(5, None), ReadReply(6, REC), ReadReply(7, TOMB), WriteReply(8),
    ErrorReply(9, "disk full"), Superseded(10, V),
    TreeRequest(11, RANGE, list(range(BRANCHES))),
    TreeReply(12, [(0, [1] * PER_BRANCH), (BRANCHES - 1, [2 ** 64 - 1] * PER_BRANCH)]),
    KeysRequest(13, RANGE, [0, 1023], [("a", V), ("b", V)]),
    KeysReply(14, [REC, TOMB], ["x", "y"]),
    Push(15, [REC, TOMB], Mechanism.HINT), Push(16, [], Mechanism.ANTI_ENTROPY),
    PushAck(17, 2), Purge([("gone", V)]),
    RingUpdate(3, RingSpec(["n1", "n2"], 64), RingSpec(["n1", "n2", "n4"], 64, [("n4", "n3")]),
               {"n4": "http://127.0.0.1:9"}),
    Ping(18), Pong(18, 3), StreamOrder(19, "n4", [(2 ** 64 - 5, 7)], after=-1),
    RingUpdate(4, RingSpec(["n1", "n2", "n4"], 64), clean=True),
    StreamProgress(19, 10, 1000, 2 ** 63, False), StreamProgress(19, 0, 0, -1, False, "down"),
]


def test_every_message_kind_round_trips_in_one_frame():
    assert {type(m) for m in EVERY_KIND} == set(typing.get_args(Message))
    decoded = codec.decode(codec.encode(EVERY_KIND))
    assert decoded == EVERY_KIND
    assert [type(m) for m in decoded] == [type(m) for m in EVERY_KIND]
    assert isinstance(decoded[14].mechanism, Mechanism)


def test_tags_are_unique_across_every_message():
    tags = [t.__struct_config__.tag for t in typing.get_args(Message)]
    assert len(tags) == len(set(tags))


def test_replies_round_trip_on_the_proxys_decoder():
    msgs = [ReadReply(1, None), ReadReply(2, REC), ReadReply(3, TOMB), WriteReply(4),
            ErrorReply(5, "disk full"), Superseded(6, V)]
    assert codec.decode_replies(codec.encode(msgs)) == msgs


def test_the_proxy_takes_nothing_but_replies():
    with pytest.raises(ValueError):
        codec.decode_replies(codec.encode([WriteReply(1), Push(2, [REC], Mechanism.HINT)]))


@pytest.mark.parametrize("frame", [
    b"",
    b"\x01",
    msgspec.msgpack.encode([[99, 1]]),  # an unknown tag
    msgspec.msgpack.encode([[1, 1, ["k", "not bytes", [1, 0, "p"]]]]),
    msgspec.msgpack.encode([[0, "not an int", "k"]]),
    msgspec.msgpack.encode({"not": "a list"}),
    codec.encode([WriteReply(1)])[:-1],  # truncated
])
def test_malformed_frames_raise_value_error(frame):
    with pytest.raises(ValueError):
        codec.decode(frame)


@pytest.mark.parametrize("message", [
    TreeRequest(1, RANGE, [0] * (BRANCHES - 1)),
    TreeRequest(1, RANGE, [0] * (BRANCHES + 1)),
    TreeReply(1, [(BRANCHES, [0] * PER_BRANCH)]),
    TreeReply(1, [(-1, [0] * PER_BRANCH)]),
    TreeReply(1, [(0, [0] * (PER_BRANCH - 1))]),
])
def test_tree_messages_of_the_wrong_shape_are_refused(message):
    """The replica indexes them by branch and leaf: a short list would fail it mid-frame."""
    with pytest.raises(ValueError):
        codec.decode(codec.encode([WriteRequest(1, REC), message]))


def test_a_message_weighs_about_what_it_takes_in_a_frame() -> None:
    # Frames are cut by these weights (kvlab.net.framing): a value-carrying message weighs
    # at least its encoded size and at most `LIGHT` more, and any other fits in `LIGHT`.
    big = WriteRequest(1, Record("k" * 1024, bytes(1 << 20), V))
    encoded = len(codec.encode([big]))
    assert encoded <= codec.weight(big) <= encoded + codec.LIGHT
    reply = ReadReply(2, Record("k", b"v" * 1000, V))
    assert len(codec.encode([reply])) <= codec.weight(reply)
    for light in (ReadRequest(3, "k" * 1024, 7), WriteReply(4), Ping(5)):
        assert type(light) not in codec.HEAVY and len(codec.encode([light])) <= codec.LIGHT
