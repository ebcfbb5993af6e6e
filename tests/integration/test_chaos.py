"""`kvlab chaos` on a real cluster: kill, pause and wipe at default settings lose nothing,
and after quiescence every key the workload wrote is back on all N replicas; nor do ring
changes made during the traffic by the membership nemesis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from kvlab.client import KV
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.process import Proc
from tests.cluster_helpers import eventually, real_cluster


@pytest.mark.slow
def test_chaos_with_kill_and_pause_loses_no_acknowledged_write(kvlab_home, tmp_path):
    history = tmp_path / "h.jsonl"
    port = free_port_block(6)
    env = {**os.environ, "KVLAB_HOME": str(kvlab_home)}
    # Seed 1's schedule holds a kill at 1 s and a pause at 5.9 s.
    out = subprocess.run(
        [sys.executable, "-m", "kvlab", "chaos", "--name", "chaos", "--port", str(port),
         "--duration", "7", "--seed", "1", "--nemesis", "kill,pause", "--durability",
         "fsync", "--history", str(history), "--json"],
        env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    kinds = {fault.split()[2] for fault in summary["faults"]}
    assert kinds == {"kill", "pause"}, summary["faults"]
    assert summary["ok"] > 200
    assert summary["lost_writes"] == 0
    assert summary["stale_reads"] == 0
    assert summary["linearizable"] is True, summary["violations"]
    assert summary["quiesce_s"] == 6
    assert summary["under_replicated"] == 0, summary["under_replicated_keys"]
    # Every operation was invoked and completed before the run ended.
    completions = summary["ok"] + summary["fail"] + summary["info"]
    assert completions == summary["ops"]
    assert len(history.read_text().splitlines()) == summary["ops"] + completions
    # It started its own cluster, so it stopped it again.
    cluster = json.loads((kvlab_home / "chaos" / "cluster.json").read_text())
    assert all(m["pid"] is None for m in [cluster["proxy"], *cluster["nodes"]])


@pytest.mark.slow
def test_a_wiped_node_refills_and_loses_no_acknowledged_write(kvlab_home):
    port = free_port_block(6)
    env = {**os.environ, "KVLAB_HOME": str(kvlab_home)}
    # The first fault starts at 1 s and lasts at most 4 s: the node comes back empty
    # before the clients stop, and quiescence gives anti-entropy (each pair every second
    # here) time to refill it.
    out = subprocess.run(
        [sys.executable, "-m", "kvlab", "chaos", "--name", "wipe", "--port", str(port),
         "--duration", "6", "--seed", "3", "--nemesis", "wipe", "--durability", "none",
         "--anti-entropy", "1", "--quiesce", "4", "--json"],
        env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert [fault.split()[2] for fault in summary["faults"]] == ["wipe"]
    assert summary["lost_writes"] == 0 and summary["linearizable"] is True, \
        summary["violations"]
    assert summary["under_replicated"] == 0, summary["under_replicated_keys"]
    assert summary["config"]["hints"] is True and summary["config"]["anti_entropy"] is True
    assert summary["healing"]["ae_rounds"] > 0


def test_chaos_refuses_simulator_only_faults(kvlab_home):
    out = subprocess.run([sys.executable, "-m", "kvlab", "chaos", "--nemesis", "skew"],
                         env={**os.environ, "KVLAB_HOME": str(kvlab_home)},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "skew not available here" in out.stderr


def test_sigterm_stops_the_cluster_chaos_started(kvlab_home):
    port = free_port_block(6)
    env = {**os.environ, "KVLAB_HOME": str(kvlab_home)}
    chaos = subprocess.Popen(
        [sys.executable, "-m", "kvlab", "chaos", "--name", "term", "--port", str(port),
         "--duration", "60", "--durability", "none"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        path = kvlab_home / "term" / "cluster.json"
        # Wait until the run is under way: the proxy answers through the running cluster.
        eventually(lambda: path.exists() and _proxy_pid(path) and
                   Proc(**_proxy_pid(path)).alive(), 30, "the chaos cluster to start")
        procs = [Proc(m["pid"], m["started"]) for m in _members(path) if m["pid"]]
        assert len(procs) == 6
        chaos.send_signal(signal.SIGTERM)
        chaos.wait(timeout=30)
    finally:
        if chaos.poll() is None:
            chaos.kill()
    assert not any(p.alive() for p in procs), "SIGTERM left cluster processes running"


def _members(path) -> list[dict]:
    data = json.loads(path.read_text())
    return [data["proxy"], *data["nodes"]]


def _proxy_pid(path) -> dict | None:
    proxy = _members(path)[0]
    return {"pid": proxy["pid"], "started": proxy["started"]} if proxy["pid"] else None


@pytest.mark.slow
def test_membership_changes_under_traffic_lose_nothing(kvlab_home):
    with real_cluster(nodes=4) as cluster:
        before = [n.name for n in cluster.nodes]
        procs = {n.name: n.proc for n in cluster.nodes}
        # Seed 29 removes n4 about 2 s in, then adds a node about 2 s after that removal
        # ended: both within the 7 s of traffic.
        out = subprocess.run(
            [sys.executable, "-m", "kvlab", "chaos", "--name", cluster.spec.name,
             "--duration", "7", "--seed", "29", "--nemesis", "membership", "--quiesce", "3",
             "--json"],
            capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        changes = summary["changes"]
        assert {"add", "remove"} <= {c["kind"] for c in changes}, changes
        assert all(c["done"] and "error" not in c for c in changes), changes
        assert all(c["keys"] > 0 and c["bytes"] > 0 for c in changes), changes
        assert [f.split()[2] for f in summary["faults"]] == [c["kind"] for c in changes]
        assert summary["ok"] > 200
        assert summary["lost_writes"] == 0 and summary["stale_reads"] == 0
        assert summary["linearizable"] is True, summary["violations"]
        assert summary["under_replicated"] == 0, summary["under_replicated_keys"]
        assert summary["changing"] is False
        assert sorted(summary["ring"]) != sorted(before)
        # cluster.json, the proxy and the summary agree on the ring the run ended with;
        # the nodes that left it were stopped, and chaos left the cluster it found running.
        cluster.refresh()
        assert cluster.leaving == []
        with KV(cluster.url) as kv:
            ring = kv.cluster().membership.ring.nodes
        assert sorted(n.name for n in cluster.nodes) == sorted(ring) == sorted(summary["ring"])
        assert all(cluster.state(n) == "up" for n in cluster.nodes)
        assert not any(proc.alive() for name, proc in procs.items() if name not in ring)


def test_a_second_run_on_an_earlier_runs_data_is_refused_not_misjudged(kvlab_home):
    port = free_port_block(6)
    env = {**os.environ, "KVLAB_HOME": str(kvlab_home)}
    argv = [sys.executable, "-m", "kvlab", "chaos", "--name", "again", "--port", str(port),
            "--nodes", "3", "--duration", "1", "--quiesce", "0", "--durability", "none"]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    # The cluster it started is stopped, its data kept: a second run would start it again
    # on that data, and read the first run's writes as lost or stale ones.
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2 and "already holds" in second.stderr, second.stderr
    cluster = json.loads((kvlab_home / "again" / "cluster.json").read_text())
    assert all(m["pid"] is None for m in [cluster["proxy"], *cluster["nodes"]])
