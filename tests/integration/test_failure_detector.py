"""The failure detector on real processes: a paused (SIGSTOP) node is `suspect`, then
`down`, within the documented times; the proxy then fails fast what needs it, and takes it
back within a second of SIGCONT. A killed node goes down the same way.

Documented (README, `--heartbeat-ms`): at the default 100 ms heartbeat, a silent node is
suspect after ~0.7 s and down after ~1.85 s. The bounds here leave room for a loaded
machine, and for `/cluster`, which waits up to 0.5 s for the paused node's counters until
it is suspect: suspect within 2 s, down within 3 s, up within 1 s.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from kvlab.client import KV
from kvlab.cluster.supervisor import Cluster
from tests.cluster_helpers import eventually, real_cluster
from tests.integration.test_healing import http, write_all

SUSPECT_WITHIN_S, DOWN_WITHIN_S, UP_WITHIN_S = 2.0, 3.0, 1.0
FAST_S = 0.3  # a 503 of a node held down: no waiting for it (the timeout is 1 s)


@pytest.fixture(scope="module")
def cluster(module_home: str):
    with real_cluster(nodes=3) as cluster:
        yield cluster


def health(cluster: Cluster, node: str) -> str:
    status, _, body = http(f"{cluster.url}/cluster")
    assert status == 200, body
    view = json.loads(body)
    listed = {n["name"]: n["health"] for n in view["nodes"]}
    assert listed[node] == view["membership"]["nodes"][node]["health"]
    return listed[node]


def watch(cluster: Cluster, node: str, until: str, timeout_s: float) -> dict[str, float]:
    """Poll `node`'s health until it is `until`: when each state was first seen (seconds
    from now)."""
    began, seen = time.monotonic(), {}
    while time.monotonic() - began < timeout_s:
        state = health(cluster, node)
        seen.setdefault(state, time.monotonic() - began)
        if state == until:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{node} not {until} within {timeout_s}s (seen: {seen})")


def held_down(cluster: Cluster) -> list[str]:
    """The nodes the coordinator no longer asks (as of its last heartbeat tick)."""
    return json.loads(http(f"{cluster.url}/cluster")[2])["proxy"]["down"]


def timed_read(url: str, key: str, r: int) -> tuple[int, float]:
    began = time.monotonic()
    status = http(f"{url}/kv/{key}?r={r}")[0]
    return status, time.monotonic() - began


def test_a_paused_node_is_suspect_then_down_and_up_again_after_sigcont(cluster):
    keys = {f"fd-{i}": f"v{i}" for i in range(50)}  # N=3 of 3 nodes: every key is n2's
    write_all(cluster, keys)
    assert health(cluster, "n2") == "up"
    pid = cluster.node("n2").proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        seen = watch(cluster, "n2", "down", DOWN_WITHIN_S + 1)
        assert "suspect" in seen, f"n2 went down without being suspect first: {seen}"
        assert seen["suspect"] <= SUSPECT_WITHIN_S, seen
        assert seen["suspect"] < seen["down"] <= DOWN_WITHIN_S, seen
        # The coordinator takes the verdict on its next heartbeat tick (100 ms).
        eventually(lambda: held_down(cluster) == ["n2"], 0.5, "the coordinator to stop "
                   "asking n2")
        for key in list(keys)[:10]:
            status, took = timed_read(cluster.url, key, r=3)
            assert status == 503 and took < FAST_S, (key, status, took)
            status, took = timed_read(cluster.url, key, r=2)
            assert status == 200 and took < FAST_S, (key, status, took)
        status, _, body = http(f"{cluster.url}/kv/fd-0?r=3")
        assert json.loads(body)["failed"] == {"n2": "down"}
    finally:
        os.kill(pid, signal.SIGCONT)
    back = watch(cluster, "n2", "up", UP_WITHIN_S)
    print(f"\n[detector] n2 paused: suspect after {seen['suspect']:.2f} s, down after "
          f"{seen['down']:.2f} s; up {back['up']:.2f} s after SIGCONT")
    eventually(lambda: held_down(cluster) == [], 0.5, "the coordinator to ask n2 again")
    with KV(cluster.url) as kv:
        assert kv.get("fd-0", r=3) == "v0"


def test_a_killed_node_goes_down_and_comes_back_when_restarted(cluster):
    cluster.kill("n3")
    seen = watch(cluster, "n3", "down", DOWN_WITHIN_S + 1)
    assert seen["down"] <= DOWN_WITHIN_S, seen
    eventually(lambda: held_down(cluster) == ["n3"], 0.5, "the coordinator to stop asking n3")
    status, took = timed_read(cluster.url, "fd-1", r=3)
    assert status == 503 and took < FAST_S
    cluster.restart("n3")
    eventually(lambda: health(cluster, "n3") == "up" and held_down(cluster) == [], 5,
               "n3 to be up after its restart")
    with KV(cluster.url) as kv:
        assert kv.get("fd-1", r=3) == "v1"
