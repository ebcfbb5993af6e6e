"""The `kvlab` command line against real clusters: up, status, set/get/del, kill, down."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from kvlab.cluster.ports import free_port_block
from kvlab.cluster.process import Proc, wait_until


def kvlab(*args: str, home: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "KVLAB_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "kvlab", *args], env=env, input=stdin,
                          capture_output=True, timeout=60)


def processes(home: Path, name: str) -> list[Proc]:
    data = json.loads((home / name / "cluster.json").read_text())
    return [Proc(m["pid"], m["started"]) for m in [data["proxy"], *data["nodes"]] if m["pid"]]


def test_full_lifecycle_from_the_command_line(kvlab_home):
    port = str(free_port_block(4))
    name = ["--name", "cli"]
    up = kvlab("up", *name, "--nodes", "3", "--port", port, "--durability", "none",
               "--anti-entropy", "0.5", "--hint-window", "600", home=kvlab_home)
    assert up.returncode == 0, up.stderr
    assert b"healthy" in up.stdout
    assert b"anti-entropy every 0.5s" in up.stdout and b"window 600s" in up.stdout
    procs = processes(kvlab_home, "cli")
    assert len(procs) == 4
    try:
        status = json.loads(kvlab("status", *name, "--json", home=kvlab_home).stdout)
        assert status["name"] == "cli"
        assert status["proxy"]["url"] == f"http://127.0.0.1:{port}"
        assert [n["name"] for n in status["nodes"]] == ["n1", "n2", "n3"]
        assert all(m["state"] == "up" and m["pid"] for m in [status["proxy"], *status["nodes"]])
        assert [n["url"] for n in status["nodes"]] == [
            f"http://127.0.0.1:{int(port) + i}" for i in (1, 2, 3)]

        again = kvlab("up", *name, "--nodes", "3", "--port", port, home=kvlab_home)
        assert again.returncode == 2 and b"already running" in again.stderr

        assert kvlab("set", "user:1", "alice", *name, home=kvlab_home).stdout == b"OK\n"
        assert kvlab("get", "user:1", *name, home=kvlab_home).stdout == b"alice\n"
        piped = kvlab("set", "blob", "-", *name, home=kvlab_home, stdin=b"from stdin")
        assert piped.returncode == 0
        assert kvlab("get", "blob", *name, "--r", "3", home=kvlab_home).stdout == b"from stdin\n"
        got = json.loads(kvlab("get", "user:1", *name, "--json", home=kvlab_home).stdout)
        assert got["value"] == "alice" and len(got["acked"]) >= 2 and got["version"]

        assert kvlab("kill", "n2", *name, home=kvlab_home).returncode == 0
        states = json.loads(kvlab("status", *name, "--json", home=kvlab_home).stdout)
        assert [n["state"] for n in states["nodes"]] == ["up", "down", "up"]
        assert kvlab("get", "user:1", *name, home=kvlab_home).stdout == b"alice\n"
        assert kvlab("pause", "n3", *name, home=kvlab_home).returncode == 0
        states = json.loads(kvlab("status", *name, "--json", home=kvlab_home).stdout)
        assert states["nodes"][2]["state"] == "paused"
        # n2 dead and n3 paused: a quorum of 2 can't be met, so exit 3, not "not found".
        stuck = kvlab("get", "user:1", *name, home=kvlab_home)
        assert stuck.returncode == 3, stuck
        assert kvlab("resume", "n3", *name, home=kvlab_home).returncode == 0
        assert kvlab("restart", "n2", *name, home=kvlab_home).returncode == 0

        assert kvlab("del", "user:1", *name, home=kvlab_home).returncode == 0
        missing = kvlab("get", "user:1", *name, home=kvlab_home)
        assert missing.returncode == 1 and b"not found" in missing.stderr

        # A lost disk: n1 comes back empty and anti-entropy refills it.
        assert kvlab("set", "kept", "yes", *name, "--w", "3", home=kvlab_home).returncode == 0
        wiped = kvlab("wipe", "n1", *name, home=kvlab_home)
        assert wiped.returncode == 0 and b"n1 wiped" in wiped.stdout, wiped

        def refilled() -> bool:
            status = json.loads(kvlab("status", *name, "--json", home=kvlab_home).stdout)
            n1 = status["nodes"][0]
            return n1["healing"] is not None and n1["healing"]["repaired"]["anti_entropy"] > 0

        assert wait_until(refilled, 15, 0.2), "anti-entropy did not refill the wiped n1"
        assert kvlab("get", "kept", *name, "--r", "3", home=kvlab_home).stdout == b"yes\n"
        text = kvlab("status", *name, home=kvlab_home).stdout
        assert b"anti_entropy=" in text and b"healing: hints strict" in text

        restarted = kvlab("restart", "proxy", *name, "--clock-offset-ms", "-5000",
                          home=kvlab_home)
        assert restarted.returncode == 0, restarted
        assert kvlab("set", "kept", "still", *name, home=kvlab_home).returncode == 0
        assert kvlab("get", "kept", *name, home=kvlab_home).stdout == b"still\n"
        offset = kvlab("restart", "n2", *name, "--clock-offset-ms", "5", home=kvlab_home)
        assert offset.returncode == 2 and b"for the proxy" in offset.stderr
        sloppy = json.loads(kvlab("set", "s", "v", *name, "--sloppy", "--json",
                                  home=kvlab_home).stdout)
        assert sloppy["hinted"] == {}  # nobody was down

        bad = kvlab("kill", "n9", *name, home=kvlab_home)
        assert bad.returncode == 2 and b"no node 'n9'" in bad.stderr
    finally:
        down = kvlab("down", *name, home=kvlab_home)
    assert down.returncode == 0
    assert not any(p.alive() for p in procs), "kvlab down left a process running"
    unreachable = kvlab("get", "x", *name, home=kvlab_home)
    assert unreachable.returncode == 3 and b"unreachable" in unreachable.stderr


def test_a_port_taken_by_another_program_is_a_clear_error(kvlab_home):
    port = free_port_block(3)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port + 2))
    blocker.listen()
    try:
        out = kvlab("up", "--name", "busy", "--nodes", "2", "--replicas", "2", "--port",
                    str(port), home=kvlab_home)
    finally:
        blocker.close()
    assert out.returncode == 2
    assert f"port {port + 2} (n2) is in use".encode() in out.stderr
    assert not (kvlab_home / "busy" / "cluster.json").exists() or all(
        m["pid"] is None for m in json.loads((kvlab_home / "busy" / "cluster.json").read_text())
        ["nodes"])


def test_usage_errors_exit_2(kvlab_home):
    assert kvlab("up", "--replicas", "4", "--nodes", "3", home=kvlab_home).returncode == 2
    assert kvlab("up", "--read-quorum", "5", home=kvlab_home).returncode == 2
    assert kvlab("get", home=kvlab_home).returncode == 2
    assert kvlab("frobnicate", home=kvlab_home).returncode == 2
    out = kvlab("status", "--name", "nothing-here", home=kvlab_home)
    assert out.returncode == 3 and b"no cluster named 'nothing-here'" in out.stderr
    assert kvlab("get", "k", "--url", "ftp://x", home=kvlab_home).returncode == 2
