"""Membership changes through the proxy's API on real processes: a node added, one
decommissioned, a dead one replaced; every key written before reads back after each.

The tests share one cluster and run in order (each starts where the last left it): three
nodes, then n4 joins, n1 leaves, and n5 takes the place of a killed n2. The nodes joining
are started here, as the supervisor starts nodes, and stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvlab.client import AsyncKV
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.process import Proc
from kvlab.cluster.supervisor import Cluster
from tests.cluster_helpers import auth, eventually, real_cluster, secret
from tests.integration.test_healing import http, node_stats, write_all

KEYS = {f"member-{i}": f"value {i}" for i in range(600)}


class Extra:
    """Nodes a test starts itself (not in cluster.json), stopped when the module ends."""

    def __init__(self, cluster: Cluster, folder: Path) -> None:
        self.cluster = cluster
        self.folder = folder
        self.procs: dict[str, Proc] = {}
        self.urls: dict[str, str] = {}

    def start(self, name: str, peers: dict[str, str]) -> str:
        """Start an empty node `name` that knows `peers`; its URL once it answers."""
        spec = self.cluster.spec
        port = free_port_block(1)
        url = f"http://{spec.host}:{port}"
        data = self.folder / name
        argv = ["--name", name, "--host", spec.host, "--port", str(port), "--data", str(data),
                "--durability", "none", "--vnodes", str(spec.vnodes),
                "--replicas", str(spec.replicas)]
        for peer, peer_url in peers.items():
            argv += ["--peer", f"{peer}={peer_url}"]
        held = Proc.spawn("kvlab.net.node", argv, data / "node.log", self.folder,
                          {"KVLAB_SECRET": secret(self.cluster)})
        held.release()
        self.procs[name] = held.proc
        self.urls[name] = url
        eventually(lambda: _healthy(url), 20, f"{name} to answer /health")
        return url

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def _healthy(url: str) -> bool:
    try:
        return http(f"{url}/health")[0] == 200
    except OSError:  # not listening yet
        return False


@pytest.fixture(scope="module")
def cluster(module_home: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Cluster, Extra]]:
    with real_cluster(nodes=3) as cluster:
        extra = Extra(cluster, tmp_path_factory.mktemp("extra-nodes"))
        try:
            yield cluster, extra
        finally:
            extra.stop()
        assert not any(p.alive() for p in extra.procs.values())


def get_json(url: str) -> dict:
    status, _, body = http(url)
    assert status == 200, body
    return json.loads(body)


def post(cluster: Cluster, path: str, body: object) -> tuple[int, dict]:
    """POST to the proxy's `path`, with the cluster's secret."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, answer = http(cluster.url + path, "POST", raw, auth(cluster))
    return status, json.loads(answer)


def delete(cluster: Cluster, path: str) -> tuple[int, dict]:
    status, _, answer = http(cluster.url + path, "DELETE", headers=auth(cluster))
    return status, json.loads(answer)


def members(cluster: Cluster) -> dict[str, str]:
    """The nodes in the proxy's ring and where they listen."""
    return {n["name"]: n["url"] for n in get_json(f"{cluster.url}/cluster")["nodes"]}


def wait_done(cluster: Cluster, kind: str, node: str) -> dict:
    """The change, once `/cluster/change` says it is over."""
    def over():
        view = get_json(f"{cluster.url}/cluster/change")
        last = view["last_change"]
        return view["change"] is None and last is not None and last["kind"] == kind \
            and last["node"] == node and last["phase"] == "done" and last
    eventually(over, 30, f"{kind} {node} to finish")
    return get_json(f"{cluster.url}/cluster/change")["last_change"]


async def _misses(url: str, keys: dict[str, str]) -> list[str]:
    queue, wrong = list(keys), []

    async def worker(kv: AsyncKV) -> None:
        while queue:
            key = queue.pop()
            if await kv.get(key) != keys[key]:  # the default quorum: R=2
                wrong.append(key)

    async with AsyncKV(url, timeout=10) as kv:
        await asyncio.gather(*(worker(kv) for _ in range(16)))
    return wrong


def misses(cluster: Cluster) -> list[str]:
    """Keys of `KEYS` that do not read back (on the first try) as written."""
    return asyncio.run(_misses(cluster.url, KEYS))


def test_a_node_added_receives_its_ranges_and_no_key_is_lost(cluster):
    cluster, extra = cluster
    written = write_all(cluster, KEYS)
    assert all(len(r.acked) >= 2 for r in written.values())
    url = extra.start("n4", members(cluster))

    status, body = post(cluster, "/cluster/nodes", {"name": "n4", "url": url})
    assert status == 202, body
    change = body["change"]
    assert (change["kind"], change["node"], change["phase"]) == ("add", "n4", "joining")
    assert change["nodes_before"] == ["n1", "n2", "n3"]
    assert change["nodes_after"] == ["n1", "n2", "n3", "n4"] == body["nodes"]
    assert change["moving"] and all(m["target"] == "n4" for m in change["moving"])
    # Steps go at the committer's heartbeat (100 ms): the change is still on.
    elsewhere = f"http://127.0.0.1:{free_port_block(1)}"
    status, refused = post(cluster, "/cluster/nodes", {"name": "n9", "url": elsewhere})
    assert status == 409 and "in progress" in refused["message"]
    assert delete(cluster, "/cluster/nodes/n2")[0] == 409
    listed = {n["name"]: n for n in get_json(f"{cluster.url}/cluster")["nodes"]}
    assert listed["n4"]["joining"] and not listed["n1"]["leaving"]

    done = wait_done(cluster, "add", "n4")
    assert done["streams"] == done["streams_done"] > 0 and done["fraction"] == 1.0
    assert done["keys"] > 0 and done["bytes"] > 0 and done["eta_ms"] is None
    assert misses(cluster) == []
    n4 = json.loads(http(f"{url}/stats", headers=auth(cluster))[2])["healing"]
    version = get_json(f"{cluster.url}/cluster")["membership"]["version"]
    assert n4["repaired"]["stream"] > 0 and n4["ring_version"] == version
    assert sum(node_stats(cluster, n)["healing"]["dropped"] for n in ("n1", "n2", "n3")) > 0
    listed = get_json(f"{cluster.url}/cluster")["nodes"]
    assert [n["name"] for n in listed] == ["n1", "n2", "n3", "n4"]
    assert not any(n["joining"] or n["leaving"] for n in listed)


def test_changes_that_cannot_be_made_are_refused_with_the_reason(cluster):
    cluster, extra = cluster
    url = extra.urls["n4"]
    for bad in (b"nope", {"name": "n9"}, {"name": 9, "url": url}, {"name": "n9", "url": "ftp://x"},
                [1, 2]):
        status, body = post(cluster, "/cluster/nodes", bad)
        assert status == 400 and body["error"] == "bad_request", (bad, body)
    free = f"http://127.0.0.1:{free_port_block(1)}"
    status, body = post(cluster, "/cluster/nodes", {"name": "n4", "url": free})
    assert status == 409 and "already in the ring" in body["message"]
    # Named as kvlab names nodes: a numeric name broke /health, others show in folders.
    for name in ("a#b", "", "n 9\n\u0000x", "a/b", "x" * 65, "123", "ghost", "n0", "n04",
                 "n1234567", "n9\n", "N9"):
        status, body = post(cluster, "/cluster/nodes", {"name": name, "url": free})
        assert status == 400 and "bad node name" in body["message"], (name, body)
    for bad in ("http://", "http://127.0.0.1:notaport", "http://127.0.0.1:99999", "http://[::1",
                f"{free}/../x?y#z", "http://127.0.0.1", "http://127.0.0.1:0",
                free.replace("http", "https"), free.replace("127.0.0.1", "example.com"),
                free.replace("//", "//user:pw@")):
        status, body = post(cluster, "/cluster/nodes", {"name": "n9", "url": bad})
        assert status == 400 and body["error"] == "bad_request", (bad, body)
    # Where the proxy or a node of the cluster listens: nobody new would ever answer there.
    for taken in (cluster.url, members(cluster)["n2"]):
        status, body = post(cluster, "/cluster/nodes", {"name": "n9", "url": taken})
        assert status == 409 and "listens already" in body["message"], (taken, body)
    status, body = delete(cluster, "/cluster/nodes/n9")
    assert status == 404 and body["error"] == "not_found"
    status, body = post(cluster, "/cluster/nodes/n9/replace", {"name": "n5", "url": url})
    assert status == 404
    assert post(cluster, "/cluster/nodes/n1/rename", {"name": "n5", "url": url})[0] == 404
    assert post(cluster, "/cluster/nodes/n1/replace", b"{}")[0] == 400
    assert get_json(f"{cluster.url}/cluster/change")["change"] is None


def test_a_move_to_a_node_that_never_answers_can_be_aborted(cluster):
    cluster, _ = cluster
    before = sorted(members(cluster))
    nobody = f"http://127.0.0.1:{free_port_block(1)}"  # nothing listens there
    status, _ = post(cluster, "/cluster/nodes", {"name": "n8", "url": nobody})
    assert status == 202
    eventually(lambda: get_json(f"{cluster.url}/cluster")["membership"]["nodes"]["n8"]
               ["health"] == "down", 10, "the ghost to be held down")
    assert get_json(f"{cluster.url}/cluster/change")["change"]["phase"] == "streaming"
    assert misses(cluster) == []  # writes and reads go on meanwhile (joint quorums)
    status, body = delete(cluster, "/cluster/change")
    assert status == 200 and body["aborted"]["phase"] == "aborted"
    assert sorted(body["nodes"]) == before
    assert sorted(members(cluster)) == before
    assert get_json(f"{cluster.url}/cluster")["membership"]["pending"] is None
    assert delete(cluster, "/cluster/change")[0] == 404
    assert misses(cluster) == []


def test_a_node_decommissioned_streams_its_ranges_out_before_it_leaves(cluster):
    cluster, _ = cluster
    status, body = delete(cluster, "/cluster/nodes/n1")
    assert status == 202, body
    change = body["change"]
    assert (change["kind"], change["node"]) == ("remove", "n1")
    assert body["nodes"] == ["n2", "n3", "n4"] == change["nodes_after"]
    assert {m["source"] for m in change["moving"]} == {"n1"}
    listed = {n["name"]: n for n in get_json(f"{cluster.url}/cluster")["nodes"]}
    assert listed["n1"]["leaving"] and set(listed) == {"n1", "n2", "n3", "n4"}

    done = wait_done(cluster, "remove", "n1")
    assert done["streams"] == done["streams_done"] > 0 and done["keys"] > 0
    assert misses(cluster) == []
    # Its link closes once the change is over (within a heartbeat).
    eventually(lambda: "n1" not in get_json(f"{cluster.url}/health")["nodes"], 5,
               "the proxy to close its link to n1")
    assert list(members(cluster)) == ["n2", "n3", "n4"]
    cluster.kill("n1")  # decommissioned: what it held is elsewhere now
    assert misses(cluster) == []
    # Three nodes are left, N=3: no further removal.
    status, body = delete(cluster, "/cluster/nodes/n2")
    assert status == 409 and "fewer than N=3" in body["message"]


def test_a_dead_node_is_replaced_by_an_empty_one_and_no_key_is_lost(cluster):
    cluster, extra = cluster
    cluster.kill("n2")
    eventually(lambda: get_json(f"{cluster.url}/cluster")["membership"]["nodes"]["n2"]
               ["health"] == "down", 5, "n2 to be down")
    url = extra.start("n5", {n: u for n, u in members(cluster).items() if n != "n2"})
    status, body = post(cluster, "/cluster/nodes/n2/replace", {"name": "n5", "url": url})
    assert status == 202, body
    change = body["change"]
    assert (change["kind"], change["node"], change["replaced"]) == ("replace", "n5", "n2")
    assert body["nodes"] == change["nodes_after"] and "n2" not in body["nodes"]
    assert "n2" not in {m["source"] for m in change["moving"]}  # it is dead: never asked

    done = wait_done(cluster, "replace", "n5")
    assert done["streams"] == done["streams_done"] > 0
    assert misses(cluster) == []
    assert sorted(members(cluster)) == ["n3", "n4", "n5"]
    n5 = json.loads(http(f"{url}/stats", headers=auth(cluster))[2])["healing"]
    assert n5["repaired"]["stream"] > 0


def test_a_restarted_proxy_goes_on_from_the_ring_it_committed_to(cluster):
    # Its command line still names n1, n2 and n3 (cluster.json knows nothing of the nodes
    # started here), and n5 holds n2's tokens: only the ring it saved places keys right.
    cluster, _ = cluster
    before = get_json(f"{cluster.url}/cluster")["membership"]
    assert ["n5", "n2"] in before["ring"]["seats"]
    cluster.restart_proxy()
    eventually(lambda: all(n["state"] == "up" for n in
                           get_json(f"{cluster.url}/cluster")["nodes"]), 10,
               "the proxy's links to every node")
    after = get_json(f"{cluster.url}/cluster")["membership"]
    assert after["version"] == before["version"] and after["ring"] == before["ring"]
    assert sorted(members(cluster)) == ["n3", "n4", "n5"]
    assert misses(cluster) == []


def test_a_restarted_node_goes_on_from_the_ring_it_was_told(cluster):
    # Its command line names n1 and n2 as its peers (one left, one died); the ring it
    # keeps in its database says n4 and n5, and where they listen.
    cluster, extra = cluster
    version = get_json(f"{cluster.url}/cluster")["membership"]["version"]
    cluster.restart("n3")
    stats = node_stats(cluster, "n3")
    assert stats is not None
    assert stats["ring"]["version"] == version and stats["ring"]["pending"] is None
    assert sorted(stats["ring"]["nodes"]) == ["n3", "n4", "n5"]
    assert {name: peer["url"] for name, peer in stats["peers"].items()} == \
        {"n4": extra.urls["n4"], "n5": extra.urls["n5"]}
    eventually(lambda: all(p["state"] == "up" for p in node_stats(cluster, "n3")["peers"]
                           .values()), 10, "n3's links to n4 and n5")
    assert misses(cluster) == []
