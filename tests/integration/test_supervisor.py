"""The supervisor when several commands act on one cluster at once."""

from __future__ import annotations

import json
import threading

from kvlab.cluster.supervisor import Cluster
from tests.cluster_helpers import real_cluster


def test_concurrent_restarts_from_two_commands_are_both_recorded(kvlab_home):
    with real_cluster(nodes=3) as cluster:
        # As a dashboard and `kvlab restart` in another terminal would: two loaded copies.
        a, b = Cluster.load(cluster.spec.name), Cluster.load(cluster.spec.name)
        threads = [threading.Thread(target=a.restart, args=("n1",)),
                   threading.Thread(target=b.restart, args=("n2",))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        recorded = json.loads((cluster.dir / "cluster.json").read_text())
        pids = {n["name"]: n["pid"] for n in recorded["nodes"]}
        # Neither save undid the other: `kvlab down` will find both new processes.
        assert pids["n1"] == a.node("n1").proc.pid
        assert pids["n2"] == b.node("n2").proc.pid
    # real_cluster asserts that every recorded process is gone afterwards
