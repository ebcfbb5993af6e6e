"""Run an aiohttp application as a kvlab server process."""

from __future__ import annotations

import asyncio
import gc
import logging

from aiohttp import web


def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; uvloop when installed (it is the faster loop)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        loop_factory = asyncio.new_event_loop
    else:
        loop_factory = uvloop.new_event_loop
    # Every request allocates dozens of short-lived objects, and with the default threshold
    # the cyclic collector ran thousands of times a second. Objects alive after start-up are
    # frozen out of its view; reference counting still frees the rest at once.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    # No access log: a log line per request is one of the costs that made the Go system slow.
    web.run_app(app, host=host, port=port, access_log=None, print=None,
                shutdown_timeout=1.0, loop=loop)
