"""The proxy's HTTP API against a real 3-node cluster: contract, keys, errors, overrides."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest

from kvlab.client import KV, AsyncKV, BadRequest, KeyNotFound, Unavailable
from tests.cluster_helpers import auth, secret

ODD_KEYS = ["a&b=c", "with space", "q?x#frag", "100%", "a/b/c", "tab\there", "ünï©ødé ✓",
            "%2F", "+plus+", "semi;colon", "back\\slash", "x" * 1024]


def http(url: str, method: str = "GET", body: bytes | None = None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_go_compatible_routes(cluster3):
    url = cluster3.url
    status, headers, body = http(f"{url}/set", "POST", json.dumps({"key": "g", "value": "v"}).encode())
    assert (status, body) == (200, b"OK")
    assert headers["X-Kvlab-Version"] and len(headers["X-Kvlab-Acked"].split(",")) >= 2
    status, _, body = http(f"{url}/get?key=g")
    assert status == 200 and json.loads(body) == {"value": "v"}
    assert http(f"{url}/delete?key=g", "DELETE")[:3:2] == (200, b"OK")
    status, _, body = http(f"{url}/get?key=g")
    assert status == 404 and json.loads(body)["error"] == "not_found"


@pytest.mark.parametrize("key", ODD_KEYS)
def test_odd_keys_round_trip_through_every_endpoint(cluster3, key):
    url, q = cluster3.url, quote(key, safe="")
    value = f"value of {key}"
    assert http(f"{url}/set", "POST", json.dumps({"key": key, "value": value}).encode())[0] == 200
    assert json.loads(http(f"{url}/get?key={q}")[2]) == {"value": value}
    assert http(f"{url}/kv/{q}")[2] == value.encode()
    view = json.loads(http(f"{url}/cluster/keys/{q}")[2])
    # W=2: the third replica may still be applying the write.
    assert view["key"] == key and sum(r["value"] == value for r in view["replicas"]) >= 2
    with KV(url) as kv:
        kv.set(key, value + "!")
        assert kv.get(key) == value + "!"
    out = subprocess.run([sys.executable, "-m", "kvlab", "get", key, "--url", url],
                         capture_output=True, check=True)
    assert out.stdout == (value + "!\n").encode()


def test_a_key_that_looks_like_a_query_never_returns_another_keys_value(cluster3):
    with KV(cluster3.url) as kv:
        kv.set("a", "value of a")
        kv.set("a&b=c", "value of a&b=c")
        assert kv.get("a&b=c") == "value of a&b=c"
        assert kv.get("a") == "value of a"


def test_rest_is_binary_safe(cluster3):
    blob = bytes(range(256)) * 4
    status, _, body = http(f"{cluster3.url}/kv/blob", "PUT", blob)
    assert status == 200 and json.loads(body)["version"]
    assert http(f"{cluster3.url}/kv/blob")[2] == blob


def test_errors_are_json_with_the_right_status(cluster3):
    url = cluster3.url
    cases = [
        (f"{url}/set", "POST", b"not json", 400),
        (f"{url}/set", "POST", b'{"key": "", "value": "v"}', 400),
        (f"{url}/set", "POST", b'{"key": "k", "value": 5}', 400),
        (f"{url}/get", "GET", None, 400),
        (f"{url}/get?key=", "GET", None, 400),
        (f"{url}/kv/", "GET", None, 400),
        (f"{url}/kv/{'k' * 1025}", "PUT", b"v", 413),
        (f"{url}/kv/big", "PUT", b"x" * (1024 * 1024 + 1), 413),
        (f"{url}/kv/k?r=0", "GET", None, 400),
        (f"{url}/kv/k?w=4", "PUT", b"v", 400),
        (f"{url}/kv/k?r=two", "GET", None, 400),
        (f"{url}/kv/k?sloppy=2", "PUT", b"v", 400),
        (f"{url}/kv/k?sloppy=", "DELETE", None, 400),
        (f"{url}/set?sloppy=yes", "POST", b'{"key": "k", "value": "v"}', 400),
        (f"{url}/delete?key=k&sloppy=on", "DELETE", None, 400),
        (f"{url}/kv/%FF%FE", "GET", None, 400),
        (f"{url}/nowhere", "GET", None, 404),
    ]
    for target, method, body, expected in cases:
        status, headers, text = http(target, method, body)
        assert status == expected, (target, method, status, text[:200])
        data = json.loads(text)
        assert data["error"] and data["message"], data
    # Nothing was stored by the refused writes.
    assert http(f"{url}/kv/big")[0] == 404


def test_quorum_overrides_are_reported(cluster3):
    url = cluster3.url
    status, headers, body = http(f"{url}/kv/q?w=3", "PUT", b"v")
    assert status == 200 and len(json.loads(body)["acked"]) == 3
    assert json.loads(body)["hinted"] == {} and "X-Kvlab-Hinted" not in headers
    # All replicas up: sloppy or not, nobody needs a hint.
    for route in (f"{url}/kv/q?sloppy=1&w=3", f"{url}/kv/q?sloppy=0"):
        status, headers, body = http(route, "PUT", b"v")
        assert status == 200 and json.loads(body)["hinted"] == {}, body
    status, headers, _ = http(f"{url}/kv/q?r=1")
    assert status == 200 and len(headers["X-Kvlab-Acked"].split(",")) >= 1
    status, headers, _ = http(f"{url}/get?key=q&r=3")
    assert status == 200 and len(headers["X-Kvlab-Acked"].split(",")) == 3


def test_cluster_and_health_describe_the_cluster(cluster3):
    with KV(cluster3.url) as kv:
        kv.set("described", "v")
        assert kv.get("described") == "v"
    status, _, body = http(f"{cluster3.url}/cluster")
    assert status == 200, body
    data = json.loads(body)
    assert (data["n"], data["r"], data["w"], data["vnodes"]) == (3, 2, 2, 64)
    assert (data["hints"], data["sloppy"]) == (True, False)
    assert [n["name"] for n in data["nodes"]] == ["n1", "n2", "n3"]
    assert all(n["state"] == "up" for n in data["nodes"])
    proxy = data["proxy"]
    assert proxy["served"]["ok"] >= 2  # statuses are StrEnums: they must serialize
    assert {"hints_sent", "restamped", "high_water_ms", "clock_offset_ms"} <= set(proxy)
    membership = data["membership"]
    assert membership["version"] >= 1 and membership["pending"] is None
    assert membership["change"] is None and set(membership["nodes"]) == {"n1", "n2", "n3"}
    assert membership["detector"]["heartbeat_ms"] == 100
    for node in data["nodes"]:
        assert node["health"] == "up" and 0 <= node["phi"] < 3
        assert (node["leaving"], node["joining"]) == (False, False)
        healing = node["healing"]
        assert set(healing["repaired"]) == {"read_repair", "hint", "anti_entropy", "stream"}
        assert {"hints_held", "hints_replayed", "ae_rounds", "repair_bytes"} <= set(healing)
        assert set(healing["exchanges"]) <= {"n1", "n2", "n3"} - {node["name"]}
    health = json.loads(http(f"{cluster3.url}/health")[2])
    assert health["status"] == "ok" and set(health["nodes"]) == {"n1", "n2", "n3"}


def test_sync_client_errors(cluster3):
    with KV(cluster3.url) as kv:
        assert kv.get("never-written") is None
        with pytest.raises(KeyNotFound):
            kv.read("never-written")
        with pytest.raises(BadRequest):
            kv.set("k", b"x" * (1024 * 1024 + 1))
        result = kv.set("k", b"\x00bytes")
        assert result.version and len(result.acked) >= 2
        assert kv.read("k").value == b"\x00bytes"


async def test_async_client(cluster3):
    async with AsyncKV(cluster3.url) as kv:
        await kv.set("async-key", "v")
        assert await kv.get("async-key") == "v"
        await kv.delete("async-key")
        assert await kv.get("async-key") is None
        view = await kv.inspect("async-key")
        assert sum(r.state == "ok" and r.deleted for r in view.replicas) >= 2


def test_a_partitioned_link_times_out_and_heals(cluster3):
    with KV(cluster3.url, secret=secret(cluster3)) as kv:
        kv.set("part", "v")
        assert kv.partition("n1").partitioned == "both"
        assert kv.partition("n2", direction="to").partitioned == "to"
        try:
            status, _, body = http(f"{cluster3.url}/kv/part")
            assert status == 504 and json.loads(body)["error"] == "timeout"
            assert kv.get("part", r=1) == "v"  # n3 still answers
        finally:
            kv.partition("n1", False)
            kv.partition("n2", False)
        assert kv.get("part", r=3) == "v"
        faults = f"{cluster3.url}/cluster/faults"
        assert http(f"{faults}/n9", "PUT", b'{"partitioned": true}', auth(cluster3))[0] == 404
        assert http(f"{faults}/n1", "PUT", b'{"on": 1}', auth(cluster3))[0] == 400
        # "from": the node applies the write but the proxy never hears its acknowledgement.
        kv.partition("n3", direction="from")
        try:
            kv.set("oneway", "applied", w=3)
        except Unavailable as exc:
            assert exc.status == 504
        else:
            raise AssertionError("a write needing n3's acknowledgement succeeded")
        finally:
            kv.partition("n3", False)
        view = {r.node: r for r in kv.inspect("oneway").replicas}
        assert view["n3"].value == "applied"


@pytest.mark.parametrize("api", ["rest", "compat"])
def test_bench_against_the_real_cluster(cluster3, api):
    out = subprocess.run(
        [sys.executable, "-m", "kvlab", "bench", "--url", cluster3.url, "--api", api,
         "--requests", "400", "--preload", "--keys", "50", "--concurrency", "8", "--mix",
         "3:1", "--r", "2", "--w", "2", "--json", "--quiet"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["ops"], report["reads"], report["writes"]) == (400, 300, 100)
    assert report["not_found"] == 0 and not any(report["errors"].values())
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]


def test_removing_a_node_below_n_is_refused_by_the_api_itself(cluster3):
    # Three nodes, N=3: the CLI refuses too, but a script talking to the proxy must not be
    # able to leave keys with fewer replicas than N.
    status, _, body = http(f"{cluster3.url}/cluster/nodes/n1", "DELETE", headers=auth(cluster3))
    assert status == 409 and "fewer than N=3" in json.loads(body)["message"]
    nodes = json.loads(http(f"{cluster3.url}/cluster")[2])["nodes"]
    assert [n["name"] for n in nodes] == ["n1", "n2", "n3"]


def test_an_invalid_percent_encoding_is_a_400_never_another_key(cluster3):
    url = cluster3.url
    with KV(url) as kv:
        kv.set("\ufffd", "the replacement character's own value")
    for method, path in (("DELETE", "/delete?key=%FF"), ("GET", "/get?key=%C3%28"),
                         ("DELETE", "/kv/%FF")):
        status, _, body = http(f"{url}{path}", method)
        assert status == 400 and json.loads(body)["error"] == "bad_request", (path, body)
    with KV(url) as kv:
        assert kv.get("\ufffd") == "the replacement character's own value"


async def test_keys_with_nul_read_back_when_many_are_read_at_once(cluster3):
    keys = [f"nul\0{i}" for i in range(100)]
    async with AsyncKV(cluster3.url) as kv:
        for key in keys:
            await kv.set(key, key)
        # Concurrent reads share the nodes' frames, which are read with one query each.
        got = await asyncio.gather(*(kv.get(key) for key in keys))
    assert got == keys
