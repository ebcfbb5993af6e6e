"""`kvlab up`, `restart` and `add-node` interrupted, failing to write their state, or run
twice at once: every process they start is one `kvlab down` finds. And a node whose database
is damaged: the others start without it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kvlab.client import KV
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.supervisor import Cluster
from tests.cluster_helpers import eventually
from tests.integration.test_cli import kvlab, processes

# A small cluster: two nodes, one replica, so that each start is as short as it gets.
SHAPE = ("--nodes", "2", "--replicas", "1", "--read-quorum", "1", "--write-quorum", "1",
         "--durability", "none")


def leftovers(home: Path) -> list[int]:
    """Every process whose command line names a folder under `home` (a node's --data, the
    proxy's --state): what a cluster there still runs, recorded in cluster.json or not."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(home).encode() in command:
            found.append(int(entry.name))
    return found


def no_leftovers(home: Path) -> None:
    # A process that was never recorded exits by itself once `up` has gone: not at once.
    eventually(lambda: not leftovers(home), 5, f"no process left (found {leftovers(home)})")


def start_up(home: Path, name: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "KVLAB_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "kvlab", "up", "--name", name, "--port",
                             str(port), *SHAPE], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def recorded(home: Path, name: str) -> bool:
    try:
        return bool(processes(home, name))
    except (OSError, ValueError):  # not written yet
        return False


@pytest.mark.slow
def test_sigterm_to_up_leaves_nothing_that_down_cant_stop(kvlab_home):
    port = free_port_block(3)
    moments: dict[str, Callable[[subprocess.Popen], bool]] = {
        "its first child exists": lambda up: bool(children(up.pid)),
        "cluster.json has PIDs": lambda up: recorded(kvlab_home, "term"),
    }
    # Each `up` after the first also checks that the one before left its ports free.
    for moment, reached in moments.items():
        up = start_up(kvlab_home, "term", port)
        try:
            eventually(lambda: reached(up) or up.poll() is not None, 20, moment)
            up.send_signal(signal.SIGTERM)
            assert up.wait(20) == 130, up.stderr.read()
        finally:
            if up.poll() is None:
                up.kill()
        assert b"Traceback" not in up.stderr.read(), moment
        down = kvlab("down", "--name", "term", home=kvlab_home)
        assert b"Traceback" not in down.stderr, moment
        no_leftovers(kvlab_home)


@pytest.mark.slow
def test_sigkill_to_add_node_leaves_nothing_that_down_cant_stop(kvlab_home):
    port = free_port_block(4)
    assert kvlab("up", "--name", "grow", "--port", str(port), *SHAPE,
                 home=kvlab_home).returncode == 0
    env = {**os.environ, "KVLAB_HOME": str(kvlab_home)}
    add = subprocess.Popen([sys.executable, "-m", "kvlab", "add-node", "--name", "grow"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Its new node started, perhaps not recorded yet: killed there, the command can't
        # clean up after itself.
        eventually(lambda: children(add.pid) or add.poll() is not None, 20, "a new node")
        add.kill()
        add.wait(10)
    finally:
        down = kvlab("down", "--name", "grow", home=kvlab_home)
    assert down.returncode == 0, down.stderr
    no_leftovers(kvlab_home)
    assert json.loads((kvlab_home / "grow" / "cluster.json").read_text())["starting"] == []


@contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """No file can be created in `folder`, as on a full disk (for root, who writes in a
    read-only folder anyway, the folder is made immutable)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("root, and no `chattr +i` here to make a folder unwritable")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


@pytest.mark.slow
def test_a_failing_write_of_cluster_json_starts_no_process_down_cant_see(kvlab_home):
    port = free_port_block(3)
    name = ("--name", "full")
    assert kvlab("up", *name, "--port", str(port), *SHAPE, home=kvlab_home).returncode == 0
    folder = kvlab_home / "full"
    try:
        with unwritable(folder):
            out = kvlab("restart", "n1", *name, home=kvlab_home)
        assert out.returncode == 2 and b"could not record n1" in out.stderr, out
        assert b"Traceback" not in out.stderr
    finally:
        assert kvlab("down", *name, home=kvlab_home).returncode == 0
    no_leftovers(kvlab_home)
    assert not list(folder.glob(".cluster.*"))  # no half-written file either

    with unwritable(folder):
        out = kvlab("up", *name, "--port", str(port), *SHAPE, home=kvlab_home)
    assert out.returncode == 2 and b"could not record" in out.stderr, out
    no_leftovers(kvlab_home)


# `kvlab up ARGS` that loads everything it needs, says so, and waits for a byte before it
# starts: two of them let go together are as close to "at once" as it gets.
READY_UP = ("import os, sys; import kvlab.cli.cluster_cmds; from kvlab.cli import main; "
            "print('ready', flush=True); os.read(0, 1); sys.exit(main(sys.argv[1:]))")


@pytest.mark.slow
def test_two_ups_of_one_name_at_once_one_wins_the_other_starts_nothing(kvlab_home):
    port = free_port_block(3)
    env = {**os.environ, "KVLAB_HOME": str(kvlab_home)}
    ups = [subprocess.Popen([sys.executable, "-c", READY_UP, "up", "--name", "twice",
                             "--port", str(port), *SHAPE], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for _ in range(2)]
    try:
        for up in ups:
            assert up.stdout.readline() == b"ready\n"
        for up in ups:
            up.stdin.write(b"1")
            up.stdin.flush()
        results = [(up.wait(30), up.stderr.read()) for up in ups]
        codes = sorted(code for code, _ in results)
        assert codes == [0, 2], results
        loser = next(err for code, err in results if code == 2)
        assert b"being started by another command" in loser, loser
        data = json.loads((kvlab_home / "twice" / "cluster.json").read_text())
        pids = {m["pid"] for m in [data["proxy"], *data["nodes"]]}
        assert sorted(leftovers(kvlab_home)) == sorted(pids)  # the winner's, and only them
    finally:
        for up in ups:
            if up.poll() is None:
                up.kill()
        kvlab("down", "--name", "twice", home=kvlab_home)
    no_leftovers(kvlab_home)


@pytest.mark.slow
def test_a_node_with_a_corrupt_database_is_failed_and_the_rest_start(kvlab_home):
    port = free_port_block(4)
    up = ("up", "--name", "rot", "--port", str(port), "--nodes", "3", "--replicas", "3",
          "--read-quorum", "1", "--write-quorum", "1", "--durability", "none")
    assert kvlab(*up, home=kvlab_home).returncode == 0
    try:
        with KV(Cluster.load("rot").url) as kv:
            kv.set("k", "v", w=3)
        Cluster.load("rot").stop()
        database = kvlab_home / "rot" / "n2" / "data.db"
        database.write_bytes(os.urandom(database.stat().st_size))  # garbage, same size

        started = kvlab(*up, home=kvlab_home)
        if started.returncode != 0 and not (database.parent / "failed.json").exists():
            pytest.skip("this checkout's node does not report a corrupt database "
                        "(failed.json, exit 3)")
        assert started.returncode == 0, started.stderr
        assert b"n2 failed" in started.stderr and b"kvlab wipe n2" in started.stderr
        cluster = Cluster.load("rot")
        status = cluster.status()
        assert [n["state"] for n in status["nodes"]] == ["up", "failed", "up"]
        assert status["nodes"][1]["failed"]["reason"] and status["nodes"][1]["failed"]["since"]
        text = kvlab("status", "--name", "rot", home=kvlab_home).stdout
        assert b"failed" in text and b"recover: kvlab wipe n2" in text
        with KV(cluster.url) as kv:
            assert kv.get("k") == "v"  # from the other replicas

        cluster.wipe("n2")
        assert not (database.parent / "failed.json").exists()
        assert [n["state"] for n in cluster.status()["nodes"]] == ["up", "up", "up"]
    finally:
        Cluster.load("rot").stop()
    no_leftovers(kvlab_home)
