"""What a cluster is made of, and where its state lives on disk."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from kvlab.core.coordinator import Quorum
from kvlab.core.ring import DEFAULT_VNODES

DEFAULT_NAME = "default"
DEFAULT_PORT = 8000
HOST = "127.0.0.1"


# A cluster's name is a folder's: one path component, and short enough to be one.
MAX_NAME = 100


def check_name(name: str) -> str:
    """`name` if it can name a cluster, else ValueError saying why."""
    if (not name or "/" in name or name.startswith(".") or len(name) > MAX_NAME
            or not name.isprintable()):
        raise ValueError(f"invalid cluster name {name!r}: 1 to {MAX_NAME} printable "
                         f"characters, no '/', not starting with '.'")
    return name


def kvlab_home() -> Path:
    return Path(os.environ.get("KVLAB_HOME") or Path.home() / ".kvlab")


def cluster_dir(name: str) -> Path:
    return kvlab_home() / name


@dataclass(frozen=True)
class ClusterSpec:
    name: str = DEFAULT_NAME
    nodes: int = 5
    replicas: int = 3
    write_quorum: int = 2
    read_quorum: int = 2
    port: int = DEFAULT_PORT
    vnodes: int = DEFAULT_VNODES
    durability: str = "fsync"
    timeout_ms: int = 1000
    host: str = field(default=HOST)
    # Healing (see README, "Self-healing"): hinted handoff, anti-entropy every
    # `anti_entropy_s` per range and peer, tombstones purged after their grace.
    hints: bool = True
    anti_entropy: bool = True
    anti_entropy_s: float = 5.0
    sloppy: bool = False  # hints count toward W (a sloppy quorum), unless a write says not
    tombstone_grace_s: float = 86_400.0
    hint_window_s: float = 10_800.0  # hints older than this are dropped, not replayed
    # Versions further ahead of a node's (or the proxy's) clock are refused (or ignored). It
    # also delays tombstone purges (a hint could carry a version that far ahead).
    max_clock_ahead_s: float = 60.0
    # A membership change streams each moving range at most this fast from each source
    # node (MB/s); 0: as fast as the nodes go.
    stream_rate_mb_s: float = 0.0
    # The data API and /cluster/keys/* need the cluster's secret too, not only the routes
    # that change the ring or break links.
    protect_data: bool = False

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if self.replicas > self.nodes:
            raise ValueError(f"replicas (N={self.replicas}) can't exceed nodes ({self.nodes})")
        Quorum(self.replicas, self.read_quorum, self.write_quorum)
        if self.durability not in ("fsync", "none"):
            raise ValueError("durability must be fsync or none")
        if self.vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        if not 1 <= self.port or self.port + self.nodes > 65535:
            raise ValueError(f"ports {self.port}..{self.port + self.nodes} are out of range")
        if self.sloppy and not self.hints:
            raise ValueError("a sloppy quorum counts hints toward W: it needs hints on")
        if self.anti_entropy_s <= 0:
            raise ValueError("the anti-entropy interval must be more than 0 seconds")
        if self.tombstone_grace_s < 0 or self.hint_window_s < 0 or self.max_clock_ahead_s < 0:
            raise ValueError("the tombstone grace, the hint window and the clock bound can't "
                             "be negative")
        if self.stream_rate_mb_s < 0:
            raise ValueError("the stream rate can't be negative (0: unthrottled)")

    @property
    def dir(self) -> Path:
        return cluster_dir(self.name)

    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ClusterSpec:
        """The spec a cluster.json holds; fields it lacks (written by an older kvlab) take
        their defaults, and fields this kvlab doesn't know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
