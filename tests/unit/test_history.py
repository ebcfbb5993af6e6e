"""History files: parsing, writing, pairing, and the Recorder."""

from __future__ import annotations

import io

import pytest

from kvlab.chaos.history import (
    Event,
    HistoryError,
    Operation,
    Recorder,
    pair_operations,
    read_history,
    write_history,
)

EVENTS = [
    Event(1, "invoke", "write", "k1", "v1", 10),
    Event(2, "invoke", "read", "k1", None, 11),
    Event(1, "ok", "write", "k1", "v1", 20),
    Event(2, "ok", "read", "k1", "v1", 25),
    Event(3, "invoke", "delete", "k2", None, 30),
    Event(3, "fail", "delete", "k2", None, 31),
    Event(3, "invoke", "write", "k2", "v2", 40),
    Event(3, "info", "write", "k2", "v2", 50),
    Event(4, "invoke", "read", "k2", None, 60),
]


def test_write_history_is_compact_and_in_field_order() -> None:
    out = io.BytesIO()
    write_history(EVENTS[:1], out)
    assert out.getvalue() == (
        b'{"process":1,"type":"invoke","f":"write","key":"k1","value":"v1","time":10}\n'
    )


def test_round_trip_through_binary_and_text_files(tmp_path) -> None:
    path = tmp_path / "h.jsonl"
    with open(path, "wb") as file:
        write_history(EVENTS, file)
    assert read_history(path) == EVENTS
    text = io.StringIO()
    write_history(EVENTS, text)
    assert read_history(io.StringIO(text.getvalue())) == EVENTS


def test_pairing_keeps_ok_and_info_and_drops_fail() -> None:
    assert pair_operations(EVENTS) == [
        Operation(1, "write", "k1", "v1", 10, 20, "ok"),
        Operation(2, "read", "k1", "v1", 11, 25, "ok"),
        Operation(3, "write", "k2", "v2", 40, None, "info"),
        Operation(4, "read", "k2", None, 60, None, "info"),  # cut short: unknown
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"process": 1, "type": "ok"}', "missing field(s) f, key, value, time"),
        (b'{"process":"a","type":"ok","f":"read","key":"k","value":null,"time":1}', "process"),
        (b'{"process":1,"type":"done","f":"read","key":"k","value":null,"time":1}', "type"),
        (b'{"process":1,"type":"ok","f":"cas","key":"k","value":null,"time":1}', "f must"),
        (b'{"process":1,"type":"ok","f":"read","key":7,"value":null,"time":1}', "key"),
        (b'{"process":1,"type":"ok","f":"read","key":"k","value":3,"time":1}', "value"),
        (b'{"process":1,"type":"ok","f":"read","key":"k","value":null,"time":1.5}', "time"),
        (b'{"process":9,"type":"ok","f":"read","key":"k","value":null,"time":9}', "no invoke"),
        (b'{"process":1,"type":"invoke","f":"read","key":"k","value":null,"time":9}', "again"),
        (b'{"process":1,"type":"ok","f":"read","key":"k1","value":null,"time":9}', "invoked"),
        (b'{"process":1,"type":"ok","f":"write","key":"k1","value":"v1","time":1}', "precedes"),
    ],
)
def test_malformed_lines_name_the_line(tmp_path, line: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    first = b'{"process":1,"type":"invoke","f":"write","key":"k1","value":"v1","time":5}\n'
    path.write_bytes(first + b"\n" + line + b"\n")  # a blank line still counts
    with pytest.raises(HistoryError, match=r"bad\.jsonl, line 3: ") as info:
        read_history(path)
    assert message in str(info.value)


def test_pairing_events_names_the_event() -> None:
    with pytest.raises(HistoryError, match="event 2: ok for process 5 with no invoke"):
        pair_operations([EVENTS[0], Event(5, "ok", "read", "k1", None, 3)])


def test_recorder_fills_in_the_operation_on_completion() -> None:
    recorder = Recorder()
    recorder.invoke(1, "write", "k", "v1", 100)
    recorder.invoke(2, "read", "k", None, 101)
    recorder.complete(1, "ok", None, 200)
    recorder.complete(2, "ok", "v1", 201)
    assert recorder.events[2] == Event(1, "ok", "write", "k", "v1", 200)
    assert recorder.events[3] == Event(2, "ok", "read", "k", "v1", 201)
    out = io.BytesIO()
    recorder.write(out)
    assert read_history(io.BytesIO(out.getvalue())) == recorder.events


def test_recorder_rejects_out_of_turn_events() -> None:
    recorder = Recorder()
    with pytest.raises(HistoryError, match="no invoke"):
        recorder.complete(1, "ok", None, 5)
    recorder.invoke(1, "read", "k", None, 1)
    with pytest.raises(HistoryError, match="outstanding"):
        recorder.invoke(1, "read", "k", None, 2)
    with pytest.raises(HistoryError, match="ok, fail or info"):
        recorder.complete(1, "invoke", None, 3)
    assert len(recorder.events) == 1
