"""The introspection API on a real cluster: what the servers encode is what the clients
decode, every field of it, through the sync and the async client alike."""

from __future__ import annotations

import json
import re
import urllib.request

import msgspec

from kvlab.client import KV, AsyncKV
from kvlab.client.protocol import (
    ChangeStatus,
    ClusterInfo,
    HealthInfo,
    KeyInfo,
    NodeStats,
    PartitionInfo,
)
from tests.cluster_helpers import eventually


def raw(url: str, secret: str | None = None, method: str = "GET", body: bytes | None = None
        ) -> object:
    headers = {} if secret is None else {"Authorization": f"Bearer {secret}"}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def as_sent(answer: msgspec.Struct) -> object:
    return json.loads(msgspec.json.encode(answer))


def fields(data: object) -> object:
    """The field names of a JSON answer, at every level. A map (by node, or of counts) is
    only a map: which nodes or statuses it has can change between two asks."""
    if isinstance(data, dict):
        if all(re.fullmatch(r"n[0-9]+", name) for name in data) or all(
                isinstance(value, int) for value in data.values()):
            return "map"
        return {name: fields(value) for name, value in data.items()}
    if isinstance(data, list):
        return [fields(item) for item in data]
    return None


def test_every_field_the_servers_send_is_what_the_client_decodes(cluster3):
    url, node_url = cluster3.url, cluster3.nodes[0].url(cluster3.spec.host)
    with KV(url, secret=cluster3.secret) as kv:
        kv.set("typed", "value")
        kv.delete("gone")
        # Every node's healing counters are in /cluster once the proxy has heard from all.
        eventually(lambda: all(n.healing is not None for n in kv.cluster().nodes),
                   message="every node's healing counters")
        decoded, sent = kv.cluster(), raw(f"{url}/cluster")
        assert isinstance(decoded, ClusterInfo)
        # Two asks: the same fields at every level (counters and timings move between them).
        assert fields(as_sent(decoded)) == fields(sent)
        assert as_sent(decoded)["membership"]["ring"] == sent["membership"]["ring"]
        assert [n.name for n in decoded.nodes] == ["n1", "n2", "n3"]

        key = kv.inspect("typed")
        assert isinstance(key, KeyInfo) and as_sent(key) == raw(f"{url}/cluster/keys/typed")
        assert {r.state for r in key.replicas} == {"ok"} and key.replicas[0].value == "value"
        assert as_sent(kv.inspect("gone")) == raw(f"{url}/cluster/keys/gone")

        change = kv.change()
        assert isinstance(change, ChangeStatus)
        assert as_sent(change) == raw(f"{url}/cluster/change") == \
            {"change": None, "last_change": None}

        health = kv.health()
        assert isinstance(health, HealthInfo) and health.proxy == "proxy"
        assert as_sent(health) == raw(f"{url}/health")

        cut = kv.partition("n1")
        assert isinstance(cut, PartitionInfo) and cut.partitioned == "both"
        assert as_sent(kv.partition("n1", False)) == {"node": "n1", "partitioned": None}

    with KV(node_url, secret=cluster3.secret) as node:
        stats = node.stats()
        assert isinstance(stats, NodeStats) and stats.node == "n1"
        sent = raw(f"{node_url}/stats", cluster3.secret)
        assert fields(sent) == fields(as_sent(stats))
        assert set(sent["peers"]["n2"]) == set(as_sent(stats.peers["n2"]))
        assert (sent["node"], sent["ring"], sent["pid"]) == \
            (stats.node, as_sent(stats.ring), stats.pid)
        assert as_sent(node.health()) == raw(f"{node_url}/health")


async def test_the_async_client_decodes_the_same_types(cluster3):
    node_url = cluster3.nodes[1].url(cluster3.spec.host)
    async with AsyncKV(cluster3.url) as kv, AsyncKV(node_url, secret=cluster3.secret) as node:
        decoded = await kv.cluster()
        assert isinstance(decoded, ClusterInfo)
        assert (decoded.n, decoded.r, decoded.w) == (3, 2, 2)
        assert decoded.membership.ring.nodes == ["n1", "n2", "n3"]
        assert isinstance(await kv.change(), ChangeStatus)
        assert isinstance(await kv.inspect("async-typed"), KeyInfo)
        assert (await node.stats()).node == "n2"
        assert (await node.health()).node == "n2"
