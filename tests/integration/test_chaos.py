"""`kvlab chaos` on a real cluster: kill and pause at default settings lose nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kvlab.cluster.ports import free_port_block


def test_chaos_with_kill_and_pause_loses_no_acknowledged_write(kvlab_home, tmp_path):
    history = tmp_path / "h.jsonl"
    port = free_port_block(6)
    env = {**os.environ, "KVLAB_HOME": str(kvlab_home)}
    # Seed 1's schedule holds a kill and a pause within the first 9 seconds.
    out = subprocess.run(
        [sys.executable, "-m", "kvlab", "chaos", "--name", "chaos", "--port", str(port),
         "--duration", "10", "--seed", "1", "--nemesis", "kill,pause", "--durability",
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
    # Every operation was invoked and completed before the run ended.
    completions = summary["ok"] + summary["fail"] + summary["info"]
    assert completions == summary["ops"]
    assert len(history.read_text().splitlines()) == summary["ops"] + completions
    # It started its own cluster, so it stopped it again.
    cluster = json.loads((kvlab_home / "chaos" / "cluster.json").read_text())
    assert all(m["pid"] is None for m in [cluster["proxy"], *cluster["nodes"]])


def test_chaos_refuses_simulator_only_faults(kvlab_home):
    out = subprocess.run([sys.executable, "-m", "kvlab", "chaos", "--nemesis", "skew"],
                         env={**os.environ, "KVLAB_HOME": str(kvlab_home)},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "skew not available here" in out.stderr
