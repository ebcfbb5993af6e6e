"""Histories: the events clients record, as JSON lines, and the operations they pair into.

A history is a list of events in real-time order, one JSON object a line:

    {"process": 3, "type": "invoke", "f": "write", "key": "k7", "value": "v12", "time": 1700}

`type` is `invoke`, then later one of `ok` (it happened), `fail` (it certainly did not happen)
or `info` (unknown: it may take effect at any time after its invoke, or never). A read's invoke
carries `null` and its `ok` the value read (`null` = absent); a delete always carries `null`.
Each process has at most one operation outstanding; an invoke with no completion (a history cut
short) counts as `info`. Times are integer nanoseconds.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Literal

import orjson

EventType = Literal["invoke", "ok", "fail", "info"]
Function = Literal["read", "write", "delete"]
Status = Literal["ok", "fail", "info"]

EVENT_TYPES: frozenset[str] = frozenset(("invoke", "ok", "fail", "info"))
FUNCTIONS: frozenset[str] = frozenset(("read", "write", "delete"))
# The on-disk field order; write_history keeps it so files diff cleanly.
FIELDS = ("process", "type", "f", "key", "value", "time")


class HistoryError(ValueError):
    """A history that breaks the format: a malformed line, or events that cannot pair up."""


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history."""

    process: int
    type: EventType
    f: Function
    key: str
    value: str | None
    time: int


@dataclass(frozen=True, slots=True)
class Operation:
    """An invoke paired with its completion.

    `value` is what a write wrote, or what an ok read returned (`None` for absent, and for a
    delete or a read whose result is unknown). `complete_time` is `None` when the outcome is
    unknown (`info`, or no completion recorded): such an operation may take effect at any time
    after `invoke_time`, or never.
    """

    process: int
    f: Function
    key: str
    value: str | None
    invoke_time: int
    complete_time: int | None
    status: Status

    def to_json(self) -> dict[str, object]:
        """A plain dict for reports."""
        return {
            "process": self.process,
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "invoke_time": self.invoke_time,
            "complete_time": self.complete_time,
            "status": self.status,
        }


def _parse_event(line: bytes) -> Event:
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise HistoryError(f"not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise HistoryError("expected a JSON object")
    missing = [name for name in FIELDS if name not in raw]
    if missing:
        raise HistoryError(f"missing field(s) {', '.join(missing)}")
    process, kind, f, key, value, time = (raw[name] for name in FIELDS)
    # bool is an int subclass; a process or time of `true` is certainly a mistake.
    if not isinstance(process, int) or isinstance(process, bool):
        raise HistoryError(f"process must be an integer, got {process!r}")
    if kind not in EVENT_TYPES:
        raise HistoryError(f"type must be one of invoke, ok, fail, info, got {kind!r}")
    if f not in FUNCTIONS:
        raise HistoryError(f"f must be one of read, write, delete, got {f!r}")
    if not isinstance(key, str):
        raise HistoryError(f"key must be a string, got {key!r}")
    if value is not None and not isinstance(value, str):
        raise HistoryError(f"value must be a string or null, got {value!r}")
    if not isinstance(time, int) or isinstance(time, bool):
        raise HistoryError(f"time must be integer nanoseconds, got {time!r}")
    return Event(process, kind, f, key, value, time)


class _Pairer:
    """Matches each completion to its process's outstanding invoke."""

    def __init__(self) -> None:
        self.open: dict[int, Event] = {}

    def feed(self, event: Event) -> Operation | None:
        """Take the next event; return the operation it completes, if any."""
        invoke = self.open.get(event.process)
        if event.type == "invoke":
            if invoke is not None:
                raise HistoryError(
                    f"process {event.process} invokes again while its {invoke.f} "
                    f"at time {invoke.time} is outstanding"
                )
            if event.f != "write" and event.value is not None:
                raise HistoryError(f"a {event.f} invoke must carry value null")
            self.open[event.process] = event
            return None
        if invoke is None:
            raise HistoryError(f"{event.type} for process {event.process} with no invoke")
        if (event.f, event.key) != (invoke.f, invoke.key):
            raise HistoryError(
                f"{event.type} is for {event.f} {event.key!r} but process {event.process} "
                f"invoked {invoke.f} {invoke.key!r}"
            )
        if event.time < invoke.time:
            raise HistoryError(f"{event.type} at time {event.time} precedes its invoke")
        del self.open[event.process]
        if event.type == "ok":
            value = event.value if invoke.f == "read" else invoke.value
            return Operation(
                invoke.process, invoke.f, invoke.key, value, invoke.time, event.time, "ok"
            )
        return _unknown(invoke, event.type)

    def unfinished(self) -> list[Operation]:
        """The operations still outstanding when the history ends, as `info`."""
        return [_unknown(invoke, "info") for invoke in self.open.values()]


def _unknown(invoke: Event, status: Status) -> Operation:
    # A read that did not return ok tells us nothing about the value.
    return Operation(invoke.process, invoke.f, invoke.key, invoke.value, invoke.time, None, status)


def iter_operations(events: Iterable[Event]) -> Iterator[Operation]:
    """Pair events into operations of every status, `fail` included, unfinished ones last."""
    pairer = _Pairer()
    for number, event in enumerate(events, 1):
        try:
            operation = pairer.feed(event)
        except HistoryError as exc:
            raise HistoryError(f"event {number}: {exc}") from None
        if operation is not None:
            yield operation
    yield from pairer.unfinished()


def pair_operations(events: Iterable[Event]) -> list[Operation]:
    """The operations a history describes: ok and info ones, in completion order.

    Failed operations are dropped (they certainly did not happen); invokes with no
    completion become `info`. Raises `HistoryError` if the events cannot pair up.
    """
    return [op for op in iter_operations(events) if op.status != "fail"]


def read_history(source: str | os.PathLike[str] | IO[bytes] | IO[str]) -> list[Event]:
    """Read a JSON-lines history from a path or an open file; blank lines are skipped.

    Raises `HistoryError` naming the file and line of the first malformed event, or of the
    first event that cannot pair with the ones before it.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return _read(file, os.fspath(source))
    return _read(source, getattr(source, "name", "<history>"))


def _read(file: IO[bytes] | IO[str], name: str) -> list[Event]:
    events: list[Event] = []
    pairer = _Pairer()
    for number, line in enumerate(file, 1):
        if not line.strip():
            continue
        try:
            event = _parse_event(line)
            pairer.feed(event)
        except HistoryError as exc:
            raise HistoryError(f"{name}, line {number}: {exc}") from None
        events.append(event)
    return events


def event_line(event: Event) -> bytes:
    """One event as compact JSON with the fields in format order, newline included."""
    # A dict keeps insertion order, and orjson writes it as given: deterministic output.
    return orjson.dumps(
        {
            "process": event.process,
            "type": event.type,
            "f": event.f,
            "key": event.key,
            "value": event.value,
            "time": event.time,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def write_history(events: Iterable[Event], file: IO[bytes] | IO[str]) -> None:
    """Write events as JSON lines to a binary or text file."""
    data = b"".join(event_line(event) for event in events)
    if isinstance(file, io.TextIOBase):
        file.write(data.decode())
    else:
        file.write(data)


class Recorder:
    """Collects events as a workload runs: `invoke` an operation, later `complete` it.

    The recorder remembers each process's outstanding operation, so a completion needs only
    its outcome, and rejects a second invoke or a stray completion at once (`HistoryError`).
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._pairer = _Pairer()

    def invoke(
        self, process: int, f: Function, key: str, value: str | None, time_ns: int
    ) -> Event:
        """Record the start of an operation; `value` is a write's value, else None."""
        return self._append(Event(process, "invoke", f, key, value, time_ns))

    def complete(
        self, process: int, type: EventType, value: str | None, time_ns: int
    ) -> Event:
        """Record the outcome (`ok`, `fail` or `info`) of `process`'s outstanding operation.

        `value` is what an ok read returned; for other operations it is ignored and the
        invoke's value is recorded.
        """
        if type not in ("ok", "fail", "info"):
            raise HistoryError(f"complete() takes ok, fail or info, not {type!r}")
        invoke = self._pairer.open.get(process)
        if invoke is None:
            raise HistoryError(f"{type} for process {process} with no invoke")
        if not (invoke.f == "read" and type == "ok"):
            value = invoke.value
        return self._append(Event(process, type, invoke.f, invoke.key, value, time_ns))

    def _append(self, event: Event) -> Event:
        self._pairer.feed(event)
        self.events.append(event)
        return event

    def write(self, file: IO[bytes] | IO[str]) -> None:
        """Write the recorded events as a history file."""
        write_history(self.events, file)
