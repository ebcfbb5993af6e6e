"""Start real clusters for tests: real processes on free 127.0.0.1 ports, stopped after."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager

from kvlab.cluster import supervisor
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.process import wait_until
from kvlab.cluster.spec import ClusterSpec
from kvlab.cluster.supervisor import Cluster

_names = itertools.count(1)


@contextmanager
def real_cluster(**spec: object) -> Iterator[Cluster]:
    """A fresh cluster in the current $KVLAB_HOME; every process is stopped afterwards."""
    nodes = int(spec.get("nodes", 5))  # type: ignore[arg-type]
    spec.setdefault("name", f"t{next(_names)}")
    spec.setdefault("port", free_port_block(nodes + 1))
    spec.setdefault("durability", "none")
    with supervisor.running(ClusterSpec(**spec)) as cluster:  # type: ignore[arg-type]
        try:
            yield cluster
        finally:
            cluster.refresh()  # a node restarted by another command has a new PID
            procs = [m.proc for m in cluster.members() if m.proc]
    assert not any(p.alive() for p in procs), "a cluster process outlived its test"


def eventually(condition, timeout_s: float = 10.0, message: str = "condition") -> None:
    """Wait for `condition()` to be truthy, failing the test at the deadline."""
    if not wait_until(condition, timeout_s, 0.05):
        raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")


def secret(cluster: Cluster) -> str:
    """The cluster's secret, as its cluster.json keeps it (what kvlab's own commands send)."""
    return json.loads((cluster.dir / "cluster.json").read_text())["secret"]


def auth(cluster: Cluster) -> dict[str, str]:
    """The header that shows `cluster`'s secret."""
    return {"Authorization": f"Bearer {secret(cluster)}"}
