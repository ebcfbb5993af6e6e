"""The coordinator's clock across restarts: a bound on its versions, kept in a small file.

A restarted proxy whose wall clock went back would otherwise stamp versions below its own
earlier writes; replicas holding those would answer `Superseded` and the write would be
re-stamped, but a clock more than `max_ahead_ms` behind ignores what it is told and the
write fails. So the proxy saves a bound on the physical time of every version it has
issued and, at start, restores its clock past it (`HybridClock.restore`).

The bound is `max(high water, now + LEASE_MS)`, saved about once a second: until the next
save the wall clock can't pass it, so even after a SIGKILL the saved value bounds every
version issued (a clock pulled further ahead by a version from elsewhere is the exception;
`Superseded` covers that one). It never grows faster than real time, so quick restarts
don't push the clock into the future. A clean shutdown saves the high water itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import orjson

from kvlab.core.version import HybridClock

logger = logging.getLogger(__name__)

FILE = "clock.json"
SAVE_EVERY_S = 1.0
LEASE_MS = 3_000  # well above SAVE_EVERY_S, so a slow save or a loop stall stays covered


class ClockStateError(Exception):
    """The saved clock can't be read: starting anyway could issue versions that go back."""


class ClockState:
    """The high-water file of one coordinator, in `folder`."""

    def __init__(self, folder: Path, clock: HybridClock, now_ms: Callable[[], int]) -> None:
        self.path = folder / FILE
        self.clock = clock
        self.now_ms = now_ms

    def restore(self) -> int | None:
        """Move the clock above the saved bound; the bound, or None on a first start."""
        try:
            saved = orjson.loads(self.path.read_bytes())["high_water_ms"]
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ClockStateError(f"{self.path} is unreadable ({exc}); delete it to start "
                                  f"with the wall clock, if no version can be ahead of it")
        if not isinstance(saved, int):
            raise ClockStateError(f"{self.path}: high_water_ms must be an integer")
        ahead = saved - self.now_ms()
        if ahead > self.clock.max_ahead_ms:
            # Restored all the same: going back would undo the clock's one promise. Replicas
            # will refuse these versions until the wall clock catches up, and say why.
            logger.warning("the saved clock %s is %d ms ahead of this machine's", saved, ahead)
        self.clock.restore(saved)
        return saved

    def save(self, final: bool = False) -> None:
        """Write the bound atomically (a temporary file, fsync, rename over the old one).

        `final`: no version will be issued after this, so the high water itself will do.
        """
        high = self.clock.high_water_ms
        bound = high if final else max(high, self.now_ms() + LEASE_MS)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILE}.{os.getpid()}")
        with open(tmp, "wb") as out:
            out.write(orjson.dumps({"high_water_ms": bound}))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    async def keep_saved(self, stopped: asyncio.Event) -> None:
        """Save about once a second until `stopped` (then the owner saves a `final` one)."""
        while not stopped.is_set():
            try:
                await asyncio.to_thread(self.save)  # an fsync: off the event loop
            except OSError as exc:  # disk full, say: keep serving, keep trying
                logger.warning("could not save the clock to %s: %s", self.path, exc)
            try:
                await asyncio.wait_for(stopped.wait(), SAVE_EVERY_S)
            except TimeoutError:
                pass
