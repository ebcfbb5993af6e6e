"""The IO half of `kvlab bench`: workers, each with one keep-alive connection, drive a target.

The generator must not be the bottleneck, so the hot loop does little: keys, values and read
requests are made up front, the next operation is one counter bump, the request goes out as
prepared bytes (see `http_client`), and each answer costs a status check and an append of its
latency (see `stats.Tally`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import quote, urlsplit

import orjson

from kvlab.bench.http_client import Connection, parse_target
from kvlab.bench.stats import CONNECTION, TIMEOUT, Mix, Report, Tally, outcome, progress_line

# How often the progress line is redrawn.
PROGRESS_INTERVAL = 0.25
# Distinct values written; a few so that not every write carries the same bytes.
VALUE_VARIANTS = 16

Plan = Callable[[int], tuple[bool, int]]


class Unreachable(Exception):
    """The target did not answer a single request at the start."""


@dataclass(frozen=True)
class LoadSpec:
    """Everything one `kvlab bench` run needs to know."""

    url: str = "http://127.0.0.1:8000"
    api: str = "rest"
    concurrency: int = 32
    duration: float | None = 10.0
    requests: int | None = None
    value_size: int = 100
    keys: int = 10_000
    mix: Mix = Mix(9, 1)
    r: int | None = None
    w: int | None = None
    preload: bool = False
    seed: int | None = None
    timeout: float = 5.0


def key_name(index: int) -> str:
    """The key for slot `index` of the key space; scripts/wrk_kvlab.lua makes the same names."""
    return f"key-{index}"


class Target:
    """Builds the bytes of the request that reads or writes one key in the chosen API."""

    def __init__(self, spec: LoadSpec) -> None:
        self.api = spec.api
        self.host, self.port, self.prefix = parse_target(spec.url)
        self.host_header = urlsplit(spec.url).netloc
        self.read_q = f"r={spec.r}" if spec.r is not None else ""
        self.write_q = f"w={spec.w}" if spec.w is not None else ""

    def read(self, key: str) -> bytes:
        if self.api == "compat":
            return self._request("GET", self._path("/get", f"key={quote(key, safe='')}",
                                                   self.read_q))
        return self._request("GET", self._path(f"/kv/{quote(key, safe='')}", self.read_q))

    def write(self, key: str, value: str) -> bytes:
        if self.api == "compat":
            body = orjson.dumps({"key": key, "value": value})
            return self._request("POST", self._path("/set", self.write_q), body,
                                 "application/json")
        return self._request("PUT", self._path(f"/kv/{quote(key, safe='')}", self.write_q),
                             value.encode(), "application/octet-stream")

    def _path(self, path: str, *query: str) -> str:
        q = "&".join(part for part in query if part)
        return f"{self.prefix}{path}?{q}" if q else f"{self.prefix}{path}"

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str = "") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
        if body is None:
            return f"{head}\r\n".encode()
        return (f"{head}Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
                .encode() + body)


class LoadGenerator:
    """One run against one target: optional preload, then the measured phase."""

    def __init__(self, spec: LoadSpec, progress: TextIO | None = None) -> None:
        self.spec = spec
        self.progress = progress
        self.target = Target(spec)
        self.rng = random.Random(spec.seed)
        self.keys = [key_name(i) for i in range(spec.keys)]
        self.reads = [self.target.read(key) for key in self.keys]
        alphabet = string.ascii_letters + string.digits
        self.values = [
            "".join(self.rng.choices(alphabet, k=spec.value_size)) for _ in range(VALUE_VARIANTS)
        ]
        self.interrupted = False
        self._stopping = False
        self._issued = 0
        self._limit: int | None = None

    def stop(self) -> None:
        """Issue no more operations; those in flight finish and are counted."""
        self._stopping = True

    def interrupt(self) -> None:
        self.interrupted = True
        self.stop()

    async def run(self) -> Report:
        """Probe, preload if asked, measure; raises Unreachable if the probe gets no answer."""
        spec = self.spec
        await self._probe()
        preload = None
        if spec.preload:
            preload = await self._preload()
        tally = Tally()
        duration = 0.0
        if not self.interrupted and spec.requests != 0:
            duration = await self._drive(
                self._mixed_plan(), spec.requests, spec.duration, tally, "bench  "
            )
        settings = {
            "value_size": spec.value_size, "keys": spec.keys, "r": spec.r, "w": spec.w,
            "seed": spec.seed, "timeout_s": spec.timeout,
        }
        if self.interrupted:
            settings["interrupted"] = True
        return Report.of(
            tally, duration, url=spec.url, api=spec.api, concurrency=spec.concurrency,
            mix=spec.mix, settings=settings, preload=preload,
        )

    def _connection(self) -> Connection:
        return Connection(self.target.host, self.target.port, self.spec.timeout)

    async def _probe(self) -> None:
        connection = self._connection()
        try:
            status = await connection.exchange(self.reads[0])
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"cannot reach {self.spec.url}: {_describe(exc)}") from exc
        finally:
            connection.close()
        if status not in (200, 404) and self.progress is not None:
            path = self.reads[0].split(b" ")[1].decode()
            self.progress.write(
                f"warning: a probe read of {path} answered HTTP {status}; is --api right?\n"
            )

    async def _preload(self) -> dict:
        tally = Tally()
        duration = await self._drive(
            lambda i: (False, i), self.spec.keys, None, tally, "preload"
        )
        if tally.errors and self.progress is not None:
            self.progress.write(f"warning: preload had {tally.error_count:,} errors\n")
        return {
            "keys": tally.writes, "duration_s": round(duration, 3),
            "errors": tally.error_count,
        }

    def _mixed_plan(self) -> Plan:
        pattern = self.spec.mix.pattern()
        cycle = len(pattern)
        randrange = self.rng.randrange
        nkeys = self.spec.keys

        def plan(i: int) -> tuple[bool, int]:
            return pattern[i % cycle], randrange(nkeys)

        return plan

    def _next(self) -> int | None:
        i = self._issued
        if self._stopping or (self._limit is not None and i >= self._limit):
            return None
        self._issued = i + 1
        return i

    async def _drive(
        self, plan: Plan, limit: int | None, duration: float | None, tally: Tally, label: str,
    ) -> float:
        """Run `concurrency` workers until `limit` operations or `duration` seconds; returns the
        wall time from the first request to the last answer."""
        self._issued, self._limit, self._stopping = 0, limit, self.interrupted
        loop = asyncio.get_running_loop()
        timer = loop.call_later(duration, self.stop) if duration is not None else None
        start = time.perf_counter()
        ticker = None
        if self.progress is not None and self.progress.isatty():
            ticker = asyncio.create_task(self._tick(label, start, tally, limit, duration))
        try:
            await asyncio.gather(
                *(self._worker(plan, tally) for _ in range(self.spec.concurrency))
            )
        finally:
            elapsed = time.perf_counter() - start
            if timer is not None:
                timer.cancel()
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                self._draw(label, elapsed, tally, limit, duration, final=True)
        return elapsed

    async def _worker(self, plan: Plan, tally: Tally) -> None:
        target, keys, values, reads = self.target, self.keys, self.values, self.reads
        choose_value = self.rng.randrange
        clock, add = time.perf_counter, tally.add
        connection = self._connection()
        exchange = connection.exchange
        try:
            while (i := self._next()) is not None:
                is_read, k = plan(i)
                if is_read:
                    request = reads[k]
                else:
                    request = target.write(keys[k], values[choose_value(VALUE_VARIANTS)])
                t0 = clock()
                try:
                    status = await exchange(request)
                except TimeoutError:
                    add(is_read, TIMEOUT, None)
                except OSError:
                    add(is_read, CONNECTION, None)
                else:
                    add(is_read, outcome(status, is_read), clock() - t0)
        finally:
            connection.close()

    async def _tick(
        self, label: str, start: float, tally: Tally, limit: int | None, duration: float | None
    ) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self._draw(label, time.perf_counter() - start, tally, limit, duration)

    def _draw(
        self, label: str, elapsed: float, tally: Tally, limit: int | None,
        duration: float | None, final: bool = False,
    ) -> None:
        assert self.progress is not None
        if limit:
            fraction = tally.ops / limit
        elif duration:
            fraction = elapsed / duration
        else:
            fraction = None
        line = progress_line(label, elapsed, tally.ops, tally.error_count, fraction)
        # \r and erase-to-end-of-line redraw in place; the last draw of a phase keeps its line.
        self.progress.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
        self.progress.flush()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer before the timeout"
    return str(exc) or type(exc).__name__


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on Windows); asyncio's loop is just slower.
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(spec: LoadSpec, progress: TextIO | None = sys.stderr) -> Report:
    """Run one benchmark to completion on a fresh (uv)loop; Ctrl-C ends it early with a report.

    `progress` gets warnings, and a live status line when it is a terminal; None silences both.
    """
    generator = LoadGenerator(spec, progress)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        loop = runner.get_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, generator.interrupt)
        return runner.run(generator.run())
