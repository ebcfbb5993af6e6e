"""`kvlab ui` in a real terminal: tmux at 100x30 starts it, reads the screen, presses q."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kvlab.cluster.ports import free_port_block
from kvlab.cluster.supervisor import Cluster

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (apt-get install tmux)")


def test_ui_in_tmux_renders_every_node_and_quits_cleanly(kvlab_home: Path) -> None:
    socket = f"kvlab-test-{uuid.uuid4().hex[:8]}"
    port = free_port_block(4)

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", socket, *args], check=True, text=True,
                               capture_output=True).stdout

    # The shell records the exit status itself: under load tmux 3.3 can mark the pane
    # dead long before it reaps the process and learns its status.
    status_file = kvlab_home.parent / "ui.status"
    command = (f"{sys.executable} -m kvlab ui --name tx --port {port} --nodes 3 "
               f"--durability none; echo $? > {status_file}")
    env = {**os.environ, "KVLAB_HOME": str(kvlab_home), "TERM": "xterm-256color"}
    # Keep the pane after the program exits, so its exit status can be read.
    conf = kvlab_home.parent / "tmux.conf"
    conf.write_text("set -g remain-on-exit on\n")
    subprocess.run(["tmux", "-L", socket, "-f", str(conf), "new-session", "-d", "-s", "ui",
                    "-x", "100", "-y", "30", command], check=True, env=env)
    try:
        screen = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            screen = tmux("capture-pane", "-p", "-t", "ui")
            if all(word in screen for word in ("n1", "n2", "n3", "● up", "ring", "Quit")):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the dashboard never showed n1..n3 up; the pane shows:\n{screen}")
        assert screen.count("● up") == 3, screen

        def pane() -> str:
            return tmux("capture-pane", "-p", "-S", "-50", "-t", "ui")

        tmux("send-keys", "-t", "ui", "q")
        deadline = time.monotonic() + 30
        while not (status_file.exists() and status_file.read_text().strip()):
            assert time.monotonic() < deadline, \
                f"the dashboard did not exit on q; the pane shows:\n{pane()}"
            time.sleep(0.1)
        # On failure the pane still shows what the program printed (remain-on-exit).
        status = status_file.read_text().strip()
        assert status == "0", f"exit status {status}; the pane shows:\n{pane()}"
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    assert Cluster.load("tx").running() == [], "a cluster process outlived the dashboard"
