"""The supervisor when several commands act on one cluster at once."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from kvlab.client import KV
from kvlab.cluster import supervisor
from kvlab.cluster.ports import free_port_block, port_free
from kvlab.cluster.supervisor import Cluster, ClusterError
from tests.cluster_helpers import auth, eventually, real_cluster


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
            seen = []
            added = cluster.add_node(progress=seen.append)
            assert added.name == "n4" and added.port == cluster.spec.port + 4
            ring = [n.name for n in kv.cluster().nodes]
            assert ring == ["n1", "n2", "n3", "n4"]
            assert Cluster.load(cluster.spec.name).spec.nodes == 4
            assert seen[-1]["phase"] == "done" and seen[-1]["node"] == "n4"
            # The keys n4 now replicates were streamed to it before reads moved: it holds
            # them without a single read to repair them.
            moved = [f"k{i}" for i in range(30)
                     if any(r.node == "n4" for r in kv.inspect(f"k{i}").replicas)]
            assert moved and seen[-1]["keys"] >= len(moved)
            assert all({r.node: r for r in kv.inspect(k).replicas}["n4"].state == "ok"
                       for k in moved)

            removed = cluster.remove_node("n4")
            assert not removed.proc.alive()
            assert [n.name for n in kv.cluster().nodes] == ["n1", "n2", "n3"]
            assert all(kv.get(f"k{i}", r=3) == f"v{i}" for i in range(30))
            recorded = json.loads((cluster.dir / "cluster.json").read_text())
            assert [n["name"] for n in recorded["nodes"]] == ["n1", "n2", "n3"]
            assert recorded["leaving"] == []
            with pytest.raises(ClusterError, match="fewer than N=3"):
                cluster.remove_node("n1")


def test_a_change_while_one_is_in_progress_starts_no_node_and_leaves_the_file_alone(kvlab_home):
    with real_cluster(nodes=3) as cluster:
        # A change that can't finish keeps the proxy busy: keys to stream to a node that
        # listens nowhere.
        with KV(cluster.url) as kv:
            for i in range(30):
                kv.set(f"k{i}", "v")
        nowhere = free_port_block(1)
        body = json.dumps({"name": "n9", "url": f"http://127.0.0.1:{nowhere}"}).encode()
        request = urllib.request.Request(f"{cluster.url}/cluster/nodes", data=body,
                                         method="POST", headers=auth(cluster))
        assert urllib.request.urlopen(request, timeout=5).status == 202
        before = (cluster.dir / "cluster.json").read_text()
        with pytest.raises(ClusterError, match="in progress"):
            cluster.add_node()
        assert (cluster.dir / "cluster.json").read_text() == before
        assert not (cluster.dir / "n4").exists()  # never started: its name is not used up
        assert port_free(cluster.spec.host, cluster.spec.port + 4)
        with pytest.raises(ClusterError, match="in progress"):
            cluster.replace_node("n1")
        assert (cluster.dir / "cluster.json").read_text() == before
        assert port_free(cluster.spec.host, cluster.spec.port + 4)


def _keys_on(cluster: Cluster, name: str) -> int:
    url = cluster.node(name).url(cluster.spec.host)
    request = urllib.request.Request(f"{url}/stats", headers=auth(cluster))
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["keys"]


def test_wipe_restarts_a_node_with_an_empty_disk(kvlab_home):
    # Anti-entropy off: nothing refills it, so what the wipe left is what n2 holds.
    with real_cluster(nodes=3, anti_entropy=False) as cluster:
        with KV(cluster.url) as kv:
            for i in range(20):
                kv.set(f"w{i}", "v", w=3)
        old_pid = cluster.node("n2").proc.pid
        assert _keys_on(cluster, "n2") == 20
        member = cluster.wipe("n2")
        assert member.proc.pid != old_pid and cluster.state(member) == "up"
        assert _keys_on(cluster, "n2") == 0
        recorded = json.loads((cluster.dir / "cluster.json").read_text())
        assert {n["name"]: n["pid"] for n in recorded["nodes"]}["n2"] == member.proc.pid
        with KV(cluster.url) as kv:  # the other two replicas still answer every key
            assert all(kv.get(f"w{i}") == "v" for i in range(20))


def test_a_cluster_json_from_before_the_healing_settings_still_works(kvlab_home):
    with real_cluster(nodes=3) as cluster:
        path = cluster.dir / "cluster.json"
        data = json.loads(path.read_text())
        for field in ("hints", "anti_entropy", "anti_entropy_s", "sloppy",
                      "tombstone_grace_s", "hint_window_s", "max_clock_ahead_s"):
            del data["spec"][field]
        path.write_text(json.dumps(data))
        loaded = Cluster.load(cluster.spec.name)
        assert loaded.spec == cluster.spec  # the defaults, which it was started with
        loaded.restart("n1")
        assert loaded.status()["nodes"][0]["state"] == "up"


# -- membership is written only by the commands that change it ------------------------------


def test_down_then_up_with_the_original_arguments_keeps_the_nodes_added_since(kvlab_home):
    with real_cluster(nodes=3) as cluster:
        spec = cluster.spec
        with KV(cluster.url) as kv:
            for i in range(50):
                kv.set(f"k{i}", f"v{i}")
            cluster.add_node()
            kv.set("after-add", "v")
            cluster.refresh()
            cluster.stop()
            again = supervisor.up(spec)  # the arguments it was first started with
            try:
                assert [n.name for n in again.nodes] == ["n1", "n2", "n3", "n4"]
                assert again.spec.nodes == 4 and all(n.proc.alive() for n in again.nodes)
                assert "keeps the membership it has" in supervisor.membership_note(spec, again)
                assert [n.name for n in kv.cluster().nodes] == ["n1", "n2", "n3", "n4"]
                assert kv.get("after-add") == "v"
                assert all(kv.get(f"k{i}") == f"v{i}" for i in range(50))
            finally:
                cluster.refresh()


def test_down_then_up_with_the_original_arguments_keeps_a_removal(kvlab_home):
    with real_cluster(nodes=4) as cluster:
        spec = cluster.spec
        with KV(cluster.url) as kv:
            for i in range(50):
                kv.set(f"k{i}", f"v{i}")
            cluster.remove_node("n1")
            cluster.stop()
            again = supervisor.up(spec)  # --nodes 4, as it was first started
            try:
                assert [n.name for n in again.nodes] == ["n2", "n3", "n4"]
                assert again.spec.nodes == 3 and again.leaving == []
                assert "keeps the membership it has" in supervisor.membership_note(spec, again)
                assert port_free(spec.host, spec.port + 1)  # n1 was not started again
                assert [n.name for n in kv.cluster().nodes] == ["n2", "n3", "n4"]
                assert all(kv.get(f"k{i}") == f"v{i}" for i in range(50))
            finally:
                cluster.refresh()


def test_down_during_a_removal_then_up_finishes_it_and_stops_the_leaving_node(kvlab_home):
    # Throttled streams and 2 kB values: the removal is still moving when the cluster stops.
    with real_cluster(nodes=4, stream_rate_mb_s=0.05) as cluster:
        spec = cluster.spec
        with KV(cluster.url) as kv:
            for i in range(200):
                kv.set(f"k{i}", f"{i}" + "x" * 2000)
            cluster.remove_node("n1", wait=False)
            assert cluster.status()["change"] is not None
            cluster.stop()
            again = supervisor.up(spec)
            try:
                # The proxy goes on with the move from the topology it kept; n1 runs again
                # as its source until it is over, and the status that finds it over stops it.
                assert [n.name for n in again.nodes] == ["n2", "n3", "n4"]
                n1 = again.node("n1")
                assert n1 in again.leaving and n1.proc.alive()

                def over() -> bool:
                    return Cluster.load(spec.name).status()["change"] is None

                eventually(over, 60, "the resumed removal to end")
                assert not n1.proc.alive()
                recorded = json.loads((cluster.dir / "cluster.json").read_text())
                assert recorded["leaving"] == []
                assert all(kv.get(f"k{i}") == f"{i}" + "x" * 2000 for i in range(200))
            finally:
                cluster.refresh()


def test_a_stale_copy_stopping_never_writes_its_old_membership_back(kvlab_home):
    # As a dashboard that started the cluster and then quits: its Cluster object was read
    # before a node was added from the dashboard (or another terminal).
    with real_cluster(nodes=3) as cluster:
        stale = Cluster.load(cluster.spec.name)
        fresh = Cluster.load(cluster.spec.name)
        fresh.add_node()
        fresh.restart("n1")
        Cluster.load(cluster.spec.name).stop()  # what the dashboard does first, then:
        stale.stop()
        recorded = json.loads((cluster.dir / "cluster.json").read_text())
        assert [n["name"] for n in recorded["nodes"]] == ["n1", "n2", "n3", "n4"]
        assert recorded["spec"]["nodes"] == 4
        assert all(n["pid"] is None for n in recorded["nodes"])


def test_a_node_added_after_a_removal_takes_a_new_name_and_starts_empty(kvlab_home):
    with real_cluster(nodes=4, anti_entropy=False, hints=False) as cluster:
        with KV(cluster.url) as kv:
            for i in range(20):
                kv.set(f"k{i}", f"v{i}", w=3)
            held = _keys_on(cluster, "n4")
            assert held > 0
            cluster.remove_node("n4")  # its folder, and its data, stay behind
            added = cluster.add_node()
            assert added.name == "n5"
            # It started empty: what it holds is what was streamed to it, the keys it
            # replicates, and none of what n4 held.
            owned = [f"k{i}" for i in range(20) if "n5" in
                     [r.node for r in kv.inspect(f"k{i}").replicas]]
            assert _keys_on(cluster, "n5") == len(owned)
            assert (cluster.dir / "n4").exists()
