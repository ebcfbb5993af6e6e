"""`kvlab add-node`, `remove-node` and `replace-node` on a real cluster: the data moves
first, so every key written before reads back at R=2 after each change; `--no-wait`
returns while it moves, and `kvlab status` shows the move. And a smaller run of
scripts/membership_acceptance.py: changes under traffic, checked for lost writes and
linearizability."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from kvlab.client import KV
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.process import Proc
from tests.cluster_helpers import eventually
from tests.integration.test_cli import kvlab

KEYS = 300


def _recorded(home: Path, name: str) -> dict:
    return json.loads((home / name / "cluster.json").read_text())


def _procs(home: Path, name: str) -> dict[int, Proc]:
    """Every process cluster.json records now, by PID."""
    data = _recorded(home, name)
    return {m["pid"]: Proc(m["pid"], m["started"])
            for m in [data["proxy"], *data["nodes"], *data["leaving"]] if m["pid"]}


def _misses(url: str, values: dict[str, str]) -> list[str]:
    """Keys that do not read back, at R=2, with the value written."""
    with KV(url) as kv:
        return [k for k, v in values.items() if kv.get(k, r=2) != v]


def _status(home: Path, name: str) -> dict:
    out = kvlab("status", "--name", name, "--json", home=home)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _up(home: Path, name: str, *extra: str) -> tuple[str, dict[int, Proc]]:
    port = free_port_block(8)
    up = kvlab("up", "--name", name, "--nodes", "3", "--port", str(port), "--durability",
               "none", *extra, home=home)
    assert up.returncode == 0, up.stderr
    return f"http://127.0.0.1:{port}", _procs(home, name)


def _down(home: Path, name: str, started: dict[int, Proc]) -> None:
    started |= _procs(home, name)
    assert kvlab("down", "--name", name, home=home).returncode == 0
    assert not any(p.alive() for p in started.values()), "a process outlived kvlab down"


def test_add_remove_and_replace_from_the_command_line_keep_every_key(kvlab_home):
    name = ["--name", "mv"]
    url, started = _up(kvlab_home, "mv")
    try:
        values = {f"key{i}": f"value{i}" for i in range(KEYS)}
        with KV(url) as kv:
            for k, v in values.items():
                kv.set(k, v)

        added = kvlab("add-node", *name, home=kvlab_home)
        assert added.returncode == 0, added.stderr
        out = added.stdout.decode()
        # Progress as plain lines (not a terminal), then the summary.
        assert "adding n4: joining" in out and "adding n4: done" in out and "streams" in out
        assert "n4 (on http://127.0.0.1:" in out and "keys (" in out and "moved in" in out
        assert "the ring has 4 nodes" in out
        started.update(_procs(kvlab_home, "mv"))
        assert _misses(url, values) == []

        removed = kvlab("remove-node", "n1", *name, home=kvlab_home)
        assert removed.returncode == 0, removed.stderr
        assert b"n1 removed and stopped" in removed.stdout
        assert [n["name"] for n in _recorded(kvlab_home, "mv")["nodes"]] == ["n2", "n3", "n4"]
        assert _misses(url, values) == []

        assert kvlab("kill", "n2", *name, home=kvlab_home).returncode == 0
        replaced = kvlab("replace-node", "n2", *name, home=kvlab_home)
        assert replaced.returncode == 0, replaced.stderr
        assert b"n2 replaced by n5" in replaced.stdout
        started.update(_procs(kvlab_home, "mv"))
        recorded = _recorded(kvlab_home, "mv")
        assert [(n["name"], n.get("seat")) for n in recorded["nodes"]] == [
            ("n5", "n2"), ("n3", None), ("n4", None)]
        assert recorded["leaving"] == []
        assert _misses(url, values) == []

        status = _status(kvlab_home, "mv")
        assert [n["name"] for n in status["nodes"]] == ["n5", "n3", "n4"]
        assert status["change"] is None
        assert status["last_change"]["kind"] == "replace"
        eventually(lambda: all(n["health"] == "up" for n in _status(kvlab_home, "mv")["nodes"]),
                   5, "every node up in the failure detector's eyes")
        text = kvlab("status", *name, home=kvlab_home).stdout.decode()
        assert "(in n2's place)" in text and "last change: n5 replacing n2" in text

        # Refusals: clear messages, exit 2.
        below = kvlab("remove-node", "n3", *name, home=kvlab_home)
        assert below.returncode == 2 and b"fewer than N=3" in below.stderr
        unknown = kvlab("replace-node", "n9", *name, home=kvlab_home)
        assert unknown.returncode == 2 and b"no node 'n9'" in unknown.stderr
        missing = kvlab("add-node", "--name", "nosuch", home=kvlab_home)
        assert missing.returncode == 3 and b"no cluster named 'nosuch'" in missing.stderr
    finally:
        _down(kvlab_home, "mv", started)

    stopped = kvlab("add-node", *name, home=kvlab_home)
    assert stopped.returncode == 3 and b"proxy of cluster 'mv' is not running" in stopped.stderr


def test_no_wait_returns_while_the_data_moves_and_status_shows_it(kvlab_home):
    name = ["--name", "nw"]
    # Throttled streams and 2 kB values: the move takes seconds, long enough to watch.
    url, started = _up(kvlab_home, "nw", "--stream-rate", "0.05")
    try:
        values = {f"key{i}": f"{i:04d}" + "x" * 2000 for i in range(KEYS)}
        with KV(url) as kv:
            for k, v in values.items():
                kv.set(k, v)

        added = kvlab("add-node", *name, "--no-wait", home=kvlab_home)
        assert added.returncode == 0, added.stderr
        assert b"change accepted: n4" in added.stdout
        started.update(_procs(kvlab_home, "nw"))
        # The proxy committed to the new ring: cluster.json says so at once.
        assert [n["name"] for n in _recorded(kvlab_home, "nw")["nodes"]] == [
            "n1", "n2", "n3", "n4"]
        status = _status(kvlab_home, "nw")
        assert status["change"] is not None, "the move finished before status looked"
        assert status["change"]["kind"] == "add" and status["change"]["node"] == "n4"
        assert status["change"]["phase"] in ("joining", "streaming")
        text = kvlab("status", *name, home=kvlab_home).stdout.decode()
        assert "change: adding n4:" in text and "ETA" in text
        # A second change while one runs: refused before a node starts, nothing left behind.
        busy = kvlab("add-node", *name, home=kvlab_home)
        assert busy.returncode == 2 and b"in progress" in busy.stderr, busy
        assert [n["name"] for n in _recorded(kvlab_home, "nw")["nodes"]] == [
            "n1", "n2", "n3", "n4"]
        eventually(lambda: _status(kvlab_home, "nw")["change"] is None, 60, "the add to end")
        assert _misses(url, values) == []

        removed = kvlab("remove-node", "n1", *name, "--no-wait", home=kvlab_home)
        assert removed.returncode == 0, removed.stderr
        leaving = _recorded(kvlab_home, "nw")["leaving"]
        assert [n["name"] for n in leaving] == ["n1"]
        n1 = Proc(leaving[0]["pid"], leaving[0]["started"])
        assert n1.alive()  # it streams its ranges out before it stops
        status = _status(kvlab_home, "nw")
        assert status["change"]["kind"] == "remove"
        assert {n["name"]: n["leaving"] for n in status["nodes"]}["n1"] is True
        # The status that finds the move over stops n1 and forgets it.
        eventually(lambda: _status(kvlab_home, "nw")["change"] is None and not n1.alive(),
                   60, "the removal to end and n1 to stop")
        recorded = _recorded(kvlab_home, "nw")
        assert [n["name"] for n in recorded["nodes"]] == ["n2", "n3", "n4"]
        assert recorded["leaving"] == []
        assert _misses(url, values) == []
    finally:
        _down(kvlab_home, "nw", started)


def test_a_move_stuck_on_a_dead_joining_node_is_aborted_and_the_ring_is_as_before(kvlab_home):
    name = ["--name", "ab"]
    url, started = _up(kvlab_home, "ab", "--stream-rate", "0.01")  # a move of ~45 s
    try:
        values = {f"key{i}": f"{i:04d}" + "x" * 2000 for i in range(KEYS)}
        with KV(url) as kv:
            for k, v in values.items():
                kv.set(k, v)
        nothing = kvlab("abort-move", *name, home=kvlab_home)
        assert nothing.returncode == 2 and b"nothing to abort" in nothing.stderr
        assert kvlab("add-node", *name, "--no-wait", home=kvlab_home).returncode == 0
        started.update(_procs(kvlab_home, "ab"))
        assert kvlab("kill", "n4", *name, home=kvlab_home).returncode == 0  # dies mid-move
        eventually(lambda: {n["name"]: n["health"] for n in _status(kvlab_home, "ab")["nodes"]}
                   .get("n4") == "down", 10, "n4 to be held down")
        assert _status(kvlab_home, "ab")["change"]["phase"] == "streaming"
        aborted = kvlab("abort-move", *name, home=kvlab_home)
        assert aborted.returncode == 0, aborted.stderr
        assert b"aborted: add n4" in aborted.stdout and b"n1, n2, n3 again" in aborted.stdout
        recorded = _recorded(kvlab_home, "ab")
        assert [n["name"] for n in recorded["nodes"]] == ["n1", "n2", "n3"]
        status = _status(kvlab_home, "ab")
        assert status["change"] is None and status["last_change"]["phase"] == "aborted"
        assert "(aborted" in kvlab("status", *name, home=kvlab_home).stdout.decode()
        assert _misses(url, values) == []
        # The next change is accepted, on a name never used before.
        assert kvlab("add-node", *name, "--no-wait", home=kvlab_home).returncode == 0
        assert [n["name"] for n in _recorded(kvlab_home, "ab")["nodes"]] == [
            "n1", "n2", "n3", "n5"]
        started.update(_procs(kvlab_home, "ab"))
    finally:
        _down(kvlab_home, "ab", started)


ACCEPTANCE = Path(__file__).resolve().parents[2] / "scripts" / "membership_acceptance.py"


def _acceptance():
    spec = importlib.util.spec_from_file_location("membership_acceptance", ACCEPTANCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_an_add_and_a_removal_under_traffic_lose_no_acknowledged_write(kvlab_home):
    outcome = _acceptance().run(keys=600, adds=1, removes=1, clients=6,
                                durability="none", say=lambda line: None)
    assert [(m.kind, m.node) for m in outcome.moves] == [("add", "n4"), ("remove", "n1")]
    assert all(m.keys > 0 and m.bytes > 0 for m in outcome.moves)
    assert outcome.keys >= 600
    assert outcome.misses == []
    assert outcome.linearizable is True, outcome.violations
