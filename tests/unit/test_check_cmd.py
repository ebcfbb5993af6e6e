"""`kvlab check` as a user runs it: a real subprocess, exit codes and output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvlab.chaos.history import Recorder


def kvlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvlab", "check", *args],
        capture_output=True, text=True, timeout=60,
    )


def history(tmp_path, *reads: str | None) -> str:
    """Write "a" then "b" on key k7, then read back `reads` one after another."""
    recorder = Recorder()
    for time, value in enumerate(["a", "b"]):
        recorder.invoke(1, "write", "k7", value, 10 * time)
        recorder.complete(1, "ok", None, 10 * time + 5)
    for time, value in enumerate(reads, 2):
        recorder.invoke(2, "read", "k7", None, 10 * time)
        recorder.complete(2, "ok", value, 10 * time + 5)
    path = tmp_path / "history.jsonl"
    with open(path, "wb") as file:
        recorder.write(file)
    return str(path)


def test_linearizable_history_exits_0(tmp_path) -> None:
    done = kvlab(history(tmp_path, "b", "b"))
    assert done.returncode == 0, done.stderr
    assert "operations: 4 (4 ok, 0 fail, 0 info)" in done.stdout
    assert "verdict: linearizable" in done.stdout


def test_violation_exits_1_and_blames_operations(tmp_path) -> None:
    done = kvlab(history(tmp_path, "b", "a"))
    assert done.returncode == 1, done.stderr
    assert "verdict: NOT linearizable" in done.stdout
    assert "stale reads: 1" in done.stdout
    assert "key k7: no order of these 3 operations" in done.stdout
    assert "read -> 'a'" in done.stdout and "write 'b'" in done.stdout


def test_json_output(tmp_path) -> None:
    done = kvlab(history(tmp_path, "b", "a"), "--json")
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert (result["ops"], result["stale_reads"], result["linearizable"]) == (4, 1, False)
    assert [v["key"] for v in result["violations"]] == ["k7"]


def test_time_limit_reached_exits_3(tmp_path) -> None:
    done = kvlab(history(tmp_path, "b"), "--time-limit", "0", "--json")
    assert done.returncode == 3
    assert json.loads(done.stdout)["unknown_keys"] == ["k7"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "missing.jsonl: No such file or directory"),
        ('{"process": 1, "type": "ok"}\n', "missing.jsonl, line 1: missing field(s)"),
    ],
)
def test_bad_file_exits_2_with_one_line(tmp_path, content, message) -> None:
    path = tmp_path / "missing.jsonl"
    if content is not None:
        path.write_text(content)
    done = kvlab(str(path))
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stderr.count("\n") == 1
