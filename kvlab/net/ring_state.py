"""The committer's topology across proxy restarts, kept in a small file next to the clock's.

Once reads have moved to a new ring, writes go only to its replicas; a proxy that came back
with the old ring would read where those writes are not. So the proxy saves every topology
it publishes before any node hears of it, and at start goes on from the saved one
(`Membership.restore`) rather than from its `--node` list: a finished move stays finished,
and one in progress starts over from its plan. The file holds the `RingUpdate` the nodes
were sent, node addresses included, so the proxy can reach nodes added since.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from kvlab.core.messages import RingUpdate

FILE = "ring.json"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(RingUpdate).decode


class RingStateError(Exception):
    """The saved topology can't be read: starting from another could lose writes."""


class RingState:
    def __init__(self, folder: Path) -> None:
        self.path = folder / FILE
        self.version = 0  # of the last topology saved or loaded

    def load(self) -> RingUpdate | None:
        try:
            update = _decode(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (msgspec.DecodeError, OSError) as exc:
            raise RingStateError(f"{self.path} is unreadable ({exc}); if every node holds "
                                 f"the membership in cluster.json, delete it to start "
                                 f"from that") from None
        self.version = update.version
        return update

    def save(self, update: RingUpdate) -> None:
        """Write it atomically (a temporary file, fsync, rename over the old one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILE}.{os.getpid()}")
        with open(tmp, "wb") as out:
            out.write(_encode(update))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self.version = update.version
