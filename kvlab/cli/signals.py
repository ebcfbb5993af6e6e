"""Termination signals for commands that start processes they must stop again."""

from __future__ import annotations

import signal
from collections.abc import Callable


def interrupt_on_termination() -> None:
    """Make SIGTERM and SIGHUP (a closed terminal) raise KeyboardInterrupt like Ctrl-C.

    By default they end Python at once, skipping the `finally` blocks that stop a cluster a
    command started; as an exception they unwind through them.
    """
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    on_termination(interrupt)


def on_termination(handler: Callable[[int, object], None]) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
