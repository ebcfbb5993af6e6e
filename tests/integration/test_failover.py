"""Failures against a real 5-node cluster (N=3 R=2 W=2): SIGKILL, restart, quorum loss."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from kvlab.client import KV, AsyncKV, Unavailable
from kvlab.client.protocol import KVError, ReplicaCopy
from kvlab.cluster.supervisor import Cluster
from kvlab.core.ring import Ring
from kvlab.core.version import Version
from tests.cluster_helpers import eventually, real_cluster

KEYS = [f"key-{i}" for i in range(60)]


@pytest.fixture
def cluster(cluster5: Cluster) -> Iterator[Cluster]:
    """The module's cluster, with every node brought back up after each test."""
    yield cluster5
    for node in cluster5.nodes:
        if cluster5.state(node) != "up":
            restart(cluster5, node.name)


def held_down(cluster: Cluster) -> list[str]:
    """The nodes the proxy does not ask (its failure detector holds them down)."""
    with urllib.request.urlopen(f"{cluster.url}/cluster", timeout=10) as response:
        return json.loads(response.read())["proxy"]["down"]


def restart(cluster: Cluster, name: str) -> None:
    """Restart `name` and wait until the proxy asks it again (its first heartbeat)."""
    cluster.restart(name)
    eventually(lambda: name not in held_down(cluster), 5, f"the proxy to take {name} back")


def replicas_of(kv: KV, key: str) -> list[ReplicaCopy]:
    return kv.inspect(key).replicas


def test_killing_any_one_node_keeps_every_read_and_write_working(cluster):
    with KV(cluster.url) as kv:
        for key in KEYS:
            kv.set(key, f"{key}=0")
        for round_, node in enumerate(cluster.nodes, start=1):
            cluster.kill(node.name)
            assert cluster.state(node) == "down"
            for key in KEYS:
                assert kv.get(key) == f"{key}={round_ - 1}", (node.name, key)
                kv.set(key, f"{key}={round_}")
            restart(cluster, node.name)


def test_a_restarted_replica_never_serves_the_old_value_and_is_repaired(cluster):
    with KV(cluster.url) as kv:
        kv.set("doc", "v1")
        victim = replicas_of(kv, "doc")[0].node
        cluster.kill(victim)
        new = kv.set("doc", "v2")
        restart(cluster, victim)
        before = {r.node: r for r in replicas_of(kv, "doc")}
        # The hint a neighbour kept for it may have reached it first (handoff starts at its
        # first heartbeat); either way no read serves v1.
        stale = before[victim].value == "v1"
        assert stale or before[victim].version == new.version, before[victim]
        for _ in range(20):
            assert kv.get("doc") == "v2"
        # One read repaired it (asynchronously, right after answering), if a hint had not.
        eventually(lambda: {r.node: r for r in replicas_of(kv, "doc")}[victim].version
                   == new.version, 5, f"read repair of {victim}")


def test_deletes_survive_restarts_of_every_node(cluster):
    with KV(cluster.url) as kv:
        for key in KEYS[:20]:
            kv.set(key, "alive")
        for key in KEYS[:10]:
            kv.delete(key)
        for node in cluster.nodes:
            restart(cluster, node.name)
        for key in KEYS[:10]:
            assert kv.get(key) is None, f"{key} came back from the dead"
            assert all(r.state == "ok" and r.deleted for r in replicas_of(kv, key)
                       if r.state != "missing")
        for key in KEYS[10:20]:
            assert kv.get(key) == "alive"


def test_three_of_five_down_is_503_with_details_never_404(cluster):
    down = {"n1", "n2", "n3"}
    ring = Ring(tuple(n.name for n in cluster.nodes), cluster.spec.vnodes)
    with KV(cluster.url) as kv:
        kv.set("present", "v")
        for name in sorted(down):
            cluster.kill(name)
        affected = 0
        for i in range(40):
            key = "present" if i == 0 else f"absent-{i}"
            lost = len(set(ring.preference_list(key, 3)) & down)
            status, body = _get(f"{cluster.url}/get?key={key}")
            if lost >= 2:  # R=2 and W=2 can't be met: unavailable, never "not found"
                affected += 1
                assert status == 503, (key, status, body)
                assert body["error"] == "unavailable" and body["needed"] == 2
                assert set(body["failed"]) <= down and len(body["failed"]) >= 2
                with pytest.raises(Unavailable):
                    kv.set(key, "w")
            else:
                assert status == (200 if key == "present" else 404), (key, status, body)
                kv.set(key, "w")
        assert affected > 10


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def test_acknowledged_writes_survive_a_sigkill_mid_burst(module_home):
    """With fsync durability, a node killed mid-burst keeps every write it acknowledged."""
    with real_cluster(nodes=5, durability="fsync") as cluster:
        acked: dict[str, tuple[bytes, str, list[str]]] = {}
        victim = cluster.nodes[1]

        async def writer(w: int, kv: AsyncKV) -> None:
            for i in range(400):
                key, value = f"burst-{w}-{i}", f"{w}:{i}".encode()
                try:
                    result = await kv.set(key, value)
                except KVError:
                    continue
                acked[key] = (value, result.version, result.acked)

        async with AsyncKV(cluster.url) as kv:
            writers = [asyncio.create_task(writer(w, kv)) for w in range(8)]
            while len(acked) < 600:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(cluster.kill, victim.name)
            killed_at = len(acked)
            await asyncio.gather(*writers)
            await asyncio.to_thread(restart, cluster, victim.name)
            assert killed_at < len(acked) <= 3200

            by_victim = 0
            for key, (value, version, acked_by) in acked.items():
                assert await kv.get(key) == value.decode(), f"lost acknowledged write {key}"
                if victim.name in acked_by:
                    view = {r.node: r for r in (await kv.inspect(key)).replicas}
                    held = view[victim.name]
                    assert held.state == "ok", f"{victim.name} lost {key} it acknowledged"
                    assert Version.parse(held.version) >= Version.parse(version)
                    by_victim += 1
            assert by_victim > 100
