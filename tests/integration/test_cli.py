"""The `kvlab` command line against real clusters: up, status, set/get/del, kill, down."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvlab.cli import main
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.process import Proc, wait_until
from kvlab.cluster.spec import ClusterSpec
from kvlab.cluster.supervisor import Cluster


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


# -- bad input: a message and an exit code, never a traceback --------------------------------

NOT_A_PROXY = "not-a-proxy"  # --url: a server that answers 404 to everything
CLUSTER_FILES = {
    "empty": "{}",
    "list": "[1]",
    "broken": "{not json",
    "portless": '{"spec": {"name": "portless"}, "proxy": {"name": "proxy"}, "nodes": [{}]}',
    "badspec": '{"spec": {"name": "badspec", "nodes": 1, "replicas": 5}, '
               '"proxy": {"name": "proxy", "port": 1}, "nodes": []}',
}


class NotAProxy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def bad_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A $KVLAB_HOME of corrupt cluster.json files and one cluster that is down (its PIDs
    dead, its proxy's port free), and the port of a server that is not a proxy."""
    home = tmp_path_factory.mktemp("bad-home")
    for name, text in CLUSTER_FILES.items():
        (home / name).mkdir()
        (home / name / "cluster.json").write_text(text)
    spec = ClusterSpec(name="stopped", nodes=1, replicas=1, read_quorum=1, write_quorum=1,
                       port=free_port_block(2))
    (home / "stopped").mkdir()
    data = Cluster.new(spec)._data()
    (home / "stopped" / "cluster.json").write_text(json.dumps(data))
    server = http.server.HTTPServer(("127.0.0.1", 0), NotAProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield home, server.server_address[1]
    server.shutdown()


@pytest.mark.parametrize(("argv", "code", "says"), [
    (["status", "--name", "empty"], 2, "is corrupt: KeyError"),
    (["down", "--name", "list"], 2, "is corrupt: TypeError"),
    (["kill", "n1", "--name", "portless"], 2, "is corrupt: KeyError"),
    (["status", "--name", "badspec"], 2, "can't exceed nodes"),
    (["get", "k", "--name", "broken"], 2, "can't read"),
    (["status", "--name", "x" * 300], 2, "invalid cluster name"),
    (["get", "k", "--name", ".."], 2, "invalid cluster name"),
    (["up", "--name", "a/b"], 2, "invalid cluster name"),
    (["up", "--nodes", "many"], 2, "expected a number"),
    (["up", "--port", "70000"], 2, "out of range"),
    (["restart", "n1", "--clock-offset-ms", "soon"], 2, "invalid int value"),
    (["frobnicate"], 2, "invalid choice"),
    (["status", "--name", "nothing"], 3, "no cluster named 'nothing'"),
    (["get", "k", "--name", "stopped"], 3, "unreachable"),
    (["kill", "n9", "--name", "stopped"], 2, "no node 'n9'"),
    (["kill", "n1", "--name", "stopped"], 2, "n1 is not running"),
    (["get", "k", "--url", NOT_A_PROXY], 3, "answered HTTP 404"),
])
def test_bad_input_is_a_message_and_an_exit_code(bad_home, monkeypatch, capsys, argv, code,
                                                  says):
    home, port = bad_home
    monkeypatch.setenv("KVLAB_HOME", str(home))
    argv = [f"http://127.0.0.1:{port}" if a == NOT_A_PROXY else a for a in argv]
    try:
        got = main(argv)  # any other exception would be a traceback
    except SystemExit as exc:  # argparse's own errors
        got = exc.code
    assert got == code
    assert says in capsys.readouterr().err


def test_a_reader_that_goes_away_is_no_traceback(bad_home):
    home, _ = bad_home
    read, write = os.pipe()
    os.close(read)  # `kvlab status | head -0`
    try:
        out = subprocess.run([sys.executable, "-m", "kvlab", "status", "--name", "stopped"],
                             env={**os.environ, "KVLAB_HOME": str(home)}, stdout=write,
                             stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)
    assert out.returncode == 141 and out.stderr == b""
