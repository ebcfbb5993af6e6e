"""OS processes the supervisor starts: identity, state, signals.

A PID alone can be reused by an unrelated program after ours exits, so a process is known
by its PID *and* its start time (from /proc); a signal goes only to a process that still
matches both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

UP, DOWN, PAUSED, STARTING = "up", "down", "paused", "starting"
STOP_GRACE_S = 3.0


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


@dataclass
class Proc:
    pid: int
    started: int  # start time in clock ticks since boot, from /proc/PID/stat

    @classmethod
    def spawn(cls, module: str, args: list[str], log: Path, cwd: Path,
              env: Mapping[str, str] | None = None) -> Held:
        """Start `python -m module args` detached (own session, so a Ctrl-C in the terminal
        spares it), with `env` added to this process's environment, held at its gate (see
        kvlab.cluster.launch) until `release()`.

        Its folder, its log and whatever it creates are its owner's alone (0700 and 0600):
        they hold the cluster's data."""
        log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            child = subprocess.Popen([sys.executable, "-m", "kvlab.cluster.launch", module,
                                      *args], stdin=subprocess.PIPE, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, **(env or {})}, umask=0o077,
                                     start_new_session=True, close_fds=True)
        started = start_time(child.pid)
        # Popen keeps a handle only to reap the child; ours are reaped in `state()`.
        child.returncode = 0
        assert child.stdin is not None
        return Held(cls(child.pid, started or 0), child.stdin)

    def _reap(self) -> None:
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child (started by another kvlab command): init reaps it

    def state(self) -> str:
        """`down`, `paused` or running (`up`; the caller checks health for `starting`)."""
        self._reap()
        fields = _stat(self.pid)
        if fields is None or int(fields[19]) != self.started or fields[0] in ("Z", "X"):
            return DOWN
        return PAUSED if fields[0] in ("T", "t") else UP

    def alive(self) -> bool:
        return self.state() != DOWN

    def signal(self, sig: int) -> bool:
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL if it is still there after `grace_s`."""
        stop_all([self], grace_s)


def stop_all(procs: list[Proc], grace_s: float = STOP_GRACE_S) -> None:
    """`Proc.stop` for several at once: they shut down side by side, not one after another."""
    for proc in procs:
        proc.signal(signal.SIGCONT)  # a stopped process would hold SIGTERM pending forever
        proc.signal(signal.SIGTERM)
    if not wait_until(lambda: not any(p.alive() for p in procs), grace_s):
        for proc in procs:
            proc.signal(signal.SIGKILL)
        wait_until(lambda: not any(p.alive() for p in procs), grace_s)


def wait_until(condition, timeout_s: float, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


@dataclass
class Held:
    """A process started but held at its gate: it runs nothing until `release()`, and
    exits by itself if the gate closes first (`cancel()`, or this process dying)."""

    proc: Proc
    gate: IO[bytes]

    def release(self) -> None:
        try:
            self.gate.write(b"1")
            self.gate.close()
        except OSError:
            pass  # it died already: its state says so

    def cancel(self) -> None:
        """Close the gate, and return once the process has exited (it does at once)."""
        try:
            self.gate.close()
        except OSError:
            pass
        if not wait_until(lambda: not self.proc.alive(), STOP_GRACE_S):
            self.proc.stop()
