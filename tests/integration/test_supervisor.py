"""The supervisor when several commands act on one cluster at once."""

from __future__ import annotations

import json
import threading

import pytest

from kvlab.client import KV
from kvlab.cluster.supervisor import Cluster, ClusterError
from tests.cluster_helpers import eventually, real_cluster


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


def test_add_and_remove_a_node_while_serving(kvlab_home):
    with real_cluster(nodes=3) as cluster:
        with KV(cluster.url) as kv:
            for i in range(30):
                kv.set(f"k{i}", f"v{i}")
            added = cluster.add_node()
            assert added.name == "n4" and added.port == cluster.spec.port + 4
            ring = [n["name"] for n in kv.cluster()["nodes"]]
            assert ring == ["n1", "n2", "n3", "n4"]
            assert Cluster.load(cluster.spec.name).spec.nodes == 4
            # Keys n4 now replicates are still readable (two old replicas remain in every
            # list), and one read repairs them onto n4.
            moved = [f"k{i}" for i in range(30)
                     if any(r["node"] == "n4" for r in kv.inspect(f"k{i}")["replicas"])]
            assert moved
            for key in moved:
                assert kv.get(key) == "v" + key[1:]
            eventually(lambda: all(
                {r["node"]: r for r in kv.inspect(k)["replicas"]}["n4"]["state"] == "ok"
                for k in moved), 5, "read repair onto n4")

            removed = cluster.remove_node("n4")
            assert not removed.proc.alive()
            assert [n["name"] for n in kv.cluster()["nodes"]] == ["n1", "n2", "n3"]
            assert all(kv.get(f"k{i}") == f"v{i}" for i in range(30))
            with pytest.raises(ClusterError, match="fewer than N=3"):
                cluster.remove_node("n1")
