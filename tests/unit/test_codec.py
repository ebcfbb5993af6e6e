from kvlab.core.messages import ErrorReply, ReadReply, ReadRequest, WriteReply, WriteRequest
from kvlab.core.record import Record
from kvlab.core.version import Version
from kvlab.net import codec

REC = Record("k \u00e9/&?", b"\x00\xffbin", Version(12, 3, "proxy"))
TOMB = Record("gone", None, Version(13, 0, "proxy"))


def test_requests_round_trip():
    msgs = [ReadRequest(1, "a"), WriteRequest(2, REC), WriteRequest(3, TOMB)]
    assert codec.decode_requests(codec.encode_requests(msgs)) == msgs


def test_replies_round_trip():
    msgs = [ReadReply(1, None), ReadReply(2, REC), ReadReply(3, TOMB), WriteReply(4),
            ErrorReply(5, "disk full")]
    assert codec.decode_replies(codec.encode_replies(msgs)) == msgs
