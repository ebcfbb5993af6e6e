"""`kvlab bench`: load any URL speaking kvlab's REST API or the Go-compatible one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import orjson

from kvlab.bench.stats import Mix
from kvlab.cli import Unavailable, UsageError

DEFAULT_MIX = "9:1"

DESCRIPTION = """\
Send a read/write mix to a kvlab proxy (or anything speaking the same API) from concurrent
keep-alive connections, then report throughput, latency percentiles and errors by kind.
Reads of missing keys are counted as "not found", apart from errors; --preload avoids them.
The default mix is 9:1, read-heavy like most caches and stores in front of a web app.
Throughput counts every answered or failed operation; latency covers those that got an answer.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="measure throughput and latency of a kvlab (or compatible) URL",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", type=_http_url, default="http://127.0.0.1:8000",
                   help="target, http://HOST[:PORT] (default %(default)s)")
    p.add_argument(
        "--api", choices=("rest", "compat"), default="rest",
        help="rest: GET/PUT /kv/{key}; compat: the Go API, GET /get?key= and POST /set "
        "(default %(default)s)",
    )
    p.add_argument("--concurrency", "-c", type=_positive_int, default=32,
                   help="requests in flight, one connection each (default %(default)s)")
    span = p.add_mutually_exclusive_group()
    span.add_argument("--duration", "-d", type=_positive_float, metavar="SECONDS",
                      help="measure for this long (the default, 10 s)")
    span.add_argument("--requests", "-n", type=_non_negative_int, metavar="N",
                      help="measure exactly N operations (0 with --preload: only preload)")
    p.add_argument("--value-size", type=_non_negative_int, default=100, metavar="BYTES",
                   help="bytes per written value (default %(default)s)")
    p.add_argument("--keys", type=_positive_int, default=10_000, metavar="N",
                   help="key space key-0 .. key-(N-1), picked uniformly (default %(default)s)")
    p.add_argument("--mix", type=_mix, default=Mix.parse(DEFAULT_MIX), metavar="READ:WRITE",
                   help=f"reads per writes, e.g. 1:1 or 1:0 (default {DEFAULT_MIX})")
    p.add_argument("--r", type=_positive_int, metavar="R", help="read quorum for each read")
    p.add_argument("--w", type=_positive_int, metavar="W", help="write quorum for each write")
    p.add_argument("--preload", action="store_true",
                   help="write every key once before measuring, so reads find them")
    p.add_argument("--timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                   help="per-request timeout, counted as a 'timeout' error (default %(default)s)")
    p.add_argument("--seed", type=int, help="seed for keys and values, to repeat a run")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress line or warnings on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `kvlab --help` and other commands don't pay for the generator.
    from kvlab.bench import load

    spec = load.LoadSpec(
        url=args.url, api=args.api, concurrency=args.concurrency,
        duration=None if args.requests is not None else (args.duration or 10.0),
        requests=args.requests, value_size=args.value_size, keys=args.keys, mix=args.mix,
        r=args.r, w=args.w, preload=args.preload, seed=args.seed, timeout=args.timeout,
    )
    if spec.requests == 0 and not spec.preload:
        raise UsageError("--requests 0 measures nothing; add --preload to only preload")
    try:
        report = load.run(spec, progress=None if args.quiet else sys.stderr)
    except load.Unreachable as exc:
        raise Unavailable(str(exc)) from exc
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_dict()).decode() + "\n")
    else:
        print(report.render())
    return 130 if report.settings.get("interrupted") else 0


def _http_url(text: str) -> str:
    from kvlab.bench.http_client import parse_target

    try:
        parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _mix(text: str) -> Mix:
    try:
        return Mix.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _number(kind: type, ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        return value

    return parse


_positive_int = _number(int, lambda v: v > 0, "a whole number above 0")
_non_negative_int = _number(int, lambda v: v >= 0, "a whole number, 0 or more")
_positive_float = _number(float, lambda v: v > 0, "above 0")
