"""One seed replays one run exactly; another seed gives another run."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import replace

from kvlab.chaos.history import write_history
from kvlab.chaos.nemesis import KINDS
from kvlab.chaos.simulation import SimOptions, run
from kvlab.sim import WorldConfig

ALL_FAULTS = SimOptions(ops=1500, nemesis=KINDS, world=WorldConfig(coordinators=2),
                        nemesis_gap_ms=(20, 60), fault_ms=(50, 150))


def history_bytes(options: SimOptions) -> tuple[bytes, dict]:
    result = run(options)
    out = io.BytesIO()
    write_history(result.events, out)
    return out.getvalue(), result.summary


def test_same_seed_same_history_and_summary():
    first, summary1 = history_bytes(ALL_FAULTS)
    second, summary2 = history_bytes(ALL_FAULTS)
    assert first == second
    assert summary1 == summary2
    assert len(summary1["faults"]) >= 5  # the nemesis really ran


def test_different_seeds_differ():
    first, _ = history_bytes(ALL_FAULTS)
    other, _ = history_bytes(replace(ALL_FAULTS, seed=8))
    assert first != other


def test_replay_does_not_depend_on_the_interpreter_hash_seed(tmp_path):
    outputs = []
    for hash_seed in ("1", "2"):
        path = tmp_path / f"h{hash_seed}.jsonl"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-m", "kvlab", "sim", "--ops", "300", "--coordinators", "2",
             "--nemesis", ",".join(KINDS), "--json", "--no-check", "--history", str(path)],
            capture_output=True, env=env, check=True)
        outputs.append((proc.stdout, path.read_bytes()))
    assert outputs[0] == outputs[1]
