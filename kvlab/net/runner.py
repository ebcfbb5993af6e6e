"""Run a kvlab server process: uvloop, a tuned garbage collector, a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web


def _prepare() -> Callable[[], asyncio.AbstractEventLoop]:
    """Logging and GC settings for a server; returns the event loop factory to use."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # Every request allocates dozens of short-lived objects, and with the default threshold
    # the cyclic collector ran thousands of times a second. Objects alive after start-up are
    # frozen out of its view; reference counting still frees the rest at once.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.new_event_loop
    return uvloop.new_event_loop  # the faster loop


def serve(app: web.Application, host: str, port: int) -> None:
    """Serve an aiohttp application until SIGTERM/SIGINT."""
    loop = _prepare()()
    asyncio.set_event_loop(loop)
    # No access log: a log line per request is one of the costs that made the Go system slow.
    web.run_app(app, host=host, port=port, access_log=None, print=None,
                shutdown_timeout=1.0, loop=loop)


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stopped)`; `stopped` is set on SIGTERM or SIGINT, and `main` then cleans up."""
    async def with_signals() -> None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        await main(stopped)

    with asyncio.Runner(loop_factory=_prepare()) as runner:
        runner.run(with_signals())
