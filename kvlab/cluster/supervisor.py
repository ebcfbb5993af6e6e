"""Start, stop, inspect and break a local cluster of real processes.

A cluster lives in `$KVLAB_HOME/NAME/`: `cluster.json` (spec, ports, PIDs) and a folder per
process with its database and log. Every command reads that file, so `kvlab kill n2` in one
terminal acts on the cluster a dashboard started in another.

Every process is in cluster.json before it can outlive the command that started it: it
starts held at a gate (`kvlab.cluster.launch`) and runs once its PID is written. A write
that fails (a full disk) or a command killed before it closes the gate, and the process
exits having started nothing; so `kvlab down` finds all there is, and the ports are free
for the next `up`. A node started for a membership change waits in `starting` until the
proxy answered. Only one `up` of a name runs at a time (`up.lock`).

Membership in cluster.json: `nodes` is the ring the proxy has committed to, written by the
command that changed it (add-node, remove-node, replace-node) the moment the proxy accepted
the change, never before and never by any other command. While a change runs, the data
follows: a joining node is in `nodes` already (it is in the write set and receiving its
ranges); a node on its way out is in `leaving`, still running and streaming its ranges to
their new owners. It is stopped and forgotten once its move is over, by the command that
removed it, or (after `--no-wait` or a Ctrl-C) by the next command that finds the move over
(`status`, `add-node`, `remove-node`, `replace-node`, `up`). `kvlab down` stops it too; `up`
starts it again, and stops it at once unless the proxy, going on from the topology it kept,
is still moving its ranges. A node that took another's place records it as its `seat` (it
holds that node's ranges, on that node's tokens).

cluster.json also keeps the cluster's secret (see `kvlab.net.auth`): it is made by the first
`up`, readable by its owner only, handed to the proxy and the nodes in their environment,
and shown by every command that changes the ring or breaks a link.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import msgspec

from kvlab.client import KV, KVError
from kvlab.client.protocol import (
    Answer,
    ChangeInfo,
    ChangeStarted,
    ChangeStatus,
    MembershipInfo,
)
from kvlab.cluster.ports import port_free
from kvlab.cluster.process import (
    DOWN,
    PAUSED,
    STARTING,
    UP,
    Held,
    Proc,
    stop_all,
    wait_until,
)
from kvlab.cluster.spec import ClusterSpec, cluster_dir
from kvlab.net.auth import SECRET_ENV

READY_TIMEOUT_S = 30.0
PORT_WAIT_S = 3.0
# How often a waiting membership command asks the proxy how far the move got, and how long
# it goes on asking a proxy that does not answer before it gives up waiting.
CHANGE_POLL_S = 0.2
PROXY_LOST_S = 5.0
# A node that finds its database corrupt (at start, or when SQLite reports it later) writes
# why in this file in its folder and exits for good (kvlab.net.node's FAILED_FILE): the
# cluster runs on without it.
FAILED_FILE = "failed.json"
FAILED = "failed"

# A membership change's view as plain JSON (a `kvlab.client.protocol.ChangeInfo`, as the CLI
# prints it): kind, node, phase, streams, keys, bytes, ...
ChangeView = dict
Progress = Callable[[ChangeView], None]


class ClusterError(Exception):
    """A cluster operation that can't be done; the message says why and what to do."""


class NoCluster(ClusterError):
    """No cluster of that name has been started here."""


class ProxyUnreachable(ClusterError):
    """The proxy, which carries out membership changes, did not answer."""


@dataclass
class Member:
    """The proxy or a node: where it listens and which process runs it."""

    name: str
    port: int
    proc: Proc | None = None
    seat: str | None = None  # the node whose ranges (tokens) it took over, if it replaced one

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}"

    def to_json(self) -> dict:
        data = {"name": self.name, "port": self.port,
                "pid": self.proc.pid if self.proc else None,
                "started": self.proc.started if self.proc else None}
        if self.seat is not None:
            data["seat"] = self.seat
        return data

    @classmethod
    def from_json(cls, data: dict) -> Member:
        proc = Proc(data["pid"], data["started"]) if data.get("pid") else None
        return cls(data["name"], data["port"], proc, data.get("seat"))


@dataclass
class Cluster:
    spec: ClusterSpec
    proxy: Member
    nodes: list[Member] = field(default_factory=list)  # the ring the proxy committed to
    leaving: list[Member] = field(default_factory=list)  # streaming their ranges out
    secret: str | None = None  # None: a cluster.json from before secrets (`up` makes one)
    # Started for a change the proxy has not accepted yet: in cluster.json before they run
    # (so `kvlab down` finds them should the command die), out of it once it answered.
    starting: list[Member] = field(default_factory=list)

    # -- persistence --------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return self.spec.dir

    @property
    def url(self) -> str:
        return self.proxy.url(self.spec.host)

    @classmethod
    def new(cls, spec: ClusterSpec) -> Cluster:
        nodes = [Member(n, spec.port + i) for i, n in enumerate(spec.node_names(), start=1)]
        return cls(spec, Member("proxy", spec.port), nodes, secret=new_secret())

    @classmethod
    def load(cls, name: str) -> Cluster:
        path = cluster_dir(name) / "cluster.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise NoCluster(f"no cluster named {name!r} (looked for {path}); "
                               f"start one with `kvlab up --name {name}`") from None
        except (OSError, ValueError) as exc:  # unreadable, or not JSON (or not UTF-8)
            raise ClusterError(f"can't read {path}: {exc}") from None
        try:
            return cls._from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ClusterError(f"{path} is corrupt: {type(exc).__name__}: {exc}") from None

    @classmethod
    def _from_json(cls, data: dict) -> Cluster:
        return cls(ClusterSpec.from_json(data["spec"]), Member.from_json(data["proxy"]),
                   [Member.from_json(n) for n in data["nodes"]],
                   [Member.from_json(n) for n in data.get("leaving", [])],
                   data.get("secret"),
                   [Member.from_json(n) for n in data.get("starting", [])])

    def refresh(self) -> None:
        """Re-read cluster.json: another command may have restarted, added or removed a node."""
        path = self.dir / "cluster.json"
        try:
            fresh = Cluster._from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return  # gone or unreadable: what this object knows is the best there is
        self.spec, self.proxy = fresh.spec, fresh.proxy
        self.nodes, self.leaving = fresh.nodes, fresh.leaving
        self.secret, self.starting = fresh.secret, fresh.starting

    def save(self) -> None:
        with self._locked():
            self._write(self._data())

    def _save_member(self, member: Member) -> None:
        """Record one process's new PID without undoing what other commands recorded."""
        with self._locked():
            try:
                data = json.loads((self.dir / "cluster.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                data = self._data()
            if member is self.proxy:
                data["proxy"] = member.to_json()
            else:
                for group in ("nodes", "leaving"):
                    data[group] = [member.to_json() if n["name"] == member.name else n
                                   for n in data.get(group, [])]
            self._write(data)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Several commands (a dashboard, `kvlab restart` in another terminal) may record
        # PIDs at once: they take turns, or one would overwrite the other's and orphan it.
        _own_folder(self.dir)
        fd = os.open(self.dir / "cluster.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write(self, data: dict) -> None:
        # mkstemp creates the file 0600, before the secret is in it: never readable by others.
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".cluster.", suffix=".json")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(data, indent=2) + "\n")
            os.replace(tmp, self.dir / "cluster.json")  # atomic: no reader sees half a file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # a full disk leaves no half-written file
            raise

    def _launch(self, held: list[Held], record: Callable[[], None]) -> None:
        """Let the `held` processes run once `record()` has written their PIDs to
        cluster.json. If it can't (a full disk, say) they exit without having started:
        a process `kvlab down` can't see would hold its port until someone finds it."""
        try:
            record()
        except OSError as exc:
            for process in held:
                process.cancel()
            names = ", ".join(m.name for m in self.members()
                              if m.proc in [h.proc for h in held])
            raise ClusterError(f"could not record {names} in {self.dir / 'cluster.json'} "
                               f"({exc}); not started") from None
        for process in held:
            process.release()

    # -- queries ------------------------------------------------------------------------

    def members(self) -> list[Member]:
        return [self.proxy, *self.nodes, *self.leaving, *self.starting]

    def node(self, name: str) -> Member:
        """A node of the ring, or one leaving it (it can still be killed or paused)."""
        for member in [*self.nodes, *self.leaving]:
            if member.name == name:
                return member
        names = ", ".join(n.name for n in self.nodes)
        raise ClusterError(f"no node {name!r} in cluster {self.spec.name!r} (nodes: {names})")

    def _ring_member(self, name: str) -> Member:
        member = self.node(name)
        if member in self.leaving:
            raise ClusterError(f"{name} is already leaving the ring (its ranges are "
                               f"streaming out; `kvlab status --name {self.spec.name}` shows "
                               f"how far)")
        return member

    def running(self) -> list[Member]:
        return [m for m in self.members() if m.proc and m.proc.alive()]

    def state(self, member: Member) -> str:
        """up, down, paused, starting (alive but not yet answering /health) or failed (a
        node that stopped itself on a corrupt database, see `failure`)."""
        state = member.proc.state() if member.proc else DOWN
        if state == DOWN:
            return FAILED if self.failure(member) else DOWN
        if state == UP and not self._healthy(member.url(self.spec.host)):
            return STARTING
        return state

    def failure(self, member: Member) -> dict | None:
        """Why `member` stopped itself for good, from its failed.json: {"reason": text,
        "since": unix seconds}, or None if it did not. `kvlab wipe` is the way back."""
        try:
            data = json.loads((self.dir / member.name / FAILED_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return {"reason": f"{FAILED_FILE} unreadable ({exc})", "since": None}
        if not isinstance(data, dict):
            data = {}
        return {"reason": str(data.get("reason") or "unknown"), "since": data.get("since")}

    def failed(self) -> list[Member]:
        """The nodes that stopped themselves on a corrupt database (see `failure`)."""
        return [m for m in [*self.nodes, *self.leaving] if self.state(m) == FAILED]

    def status(self) -> dict:
        """Every process with its URL, PID and state; each node with its healing counters
        (the node's own, from its /stats: None when it is not up or can't say) and the
        proxy's failure detector's verdict on it (`health` up, suspect or down, and `phi`;
        None when the proxy does not answer); the membership change in progress and the
        last one finished, as the proxy reports them (None if none, or no proxy).

        A node whose removal has finished streaming is stopped and forgotten first (see
        the module's docstring): status is where a `--no-wait` removal is seen through.
        """
        host = self.spec.host
        info = self._ask(self.url, KV.cluster, 2.0) if self.state(self.proxy) == UP else None
        membership = None if info is None else info.membership
        self.settle(membership)  # by the same answer as the change shown below
        detector = {} if membership is None else membership.nodes

        def view(m: Member) -> dict:
            return {"name": m.name, "url": m.url(host), "pid": m.proc.pid if m.proc else None,
                    "state": self.state(m)}

        def node_view(m: Member) -> dict:
            out = view(m)
            stats = self._ask(m.url(host), KV.stats) if out["state"] == UP else None
            out["healing"] = None if stats is None else msgspec.to_builtins(stats.healing)
            seen = detector.get(m.name)
            out["health"], out["phi"] = (None, None) if seen is None else (seen.health, seen.phi)
            out["leaving"] = m in self.leaving
            out["failed"] = self.failure(m) if out["state"] == FAILED else None
            if m.seat is not None:
                out["seat"] = m.seat
            return out

        return {"name": self.spec.name, "proxy": view(self.proxy),
                "nodes": [node_view(n) for n in [*self.nodes, *self.leaving]],
                "ring_version": None if membership is None else membership.version,
                "change": None if membership is None else _view(membership.change),
                "last_change": None if membership is None else _view(membership.last_change),
                "spec": self.spec.to_json()}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start every process and return when all answer /health (or raise, leaving none).

        A node that finds its database corrupt stops itself (see `failure`): the cluster
        starts without it, and `failed()` lists it.
        """
        alive = self.running()
        if alive:
            pids = ", ".join(f"{m.name} pid {m.proc.pid}" for m in alive)
            raise ClusterError(f"cluster {self.spec.name!r} is already running ({pids}); "
                               f"`kvlab down --name {self.spec.name}` stops it")
        busy = [m for m in self.members() if not port_free(self.spec.host, m.port)]
        if busy:
            ports = ", ".join(f"{m.port} ({m.name})" for m in busy)
            raise ClusterError(f"port {ports} is in use by another program; pick other ports "
                               f"with --port (nodes use the ports after the proxy's)")
        _own_folder(self.dir)
        try:
            # A node still leaving when the cluster stopped starts too: the proxy resumes
            # the move from the topology it kept, and the node is a source of it.
            for member in [*self.nodes, *self.leaving]:
                self._clear_failure(member)  # each start tries again: the node checks anew
            held = [self._spawn_node(member) for member in [*self.nodes, *self.leaving]]
            held.append(self._spawn_proxy())
            self._launch(held, self.save)
            self._await_ready([self.proxy, *self.nodes])
        except BaseException:
            self.stop()
            raise
        self.settle()  # and stops at once if its move was over

    def stop(self) -> None:
        """Stop every process this object knows of, and record that they stopped.

        Only the PIDs are written, and only where cluster.json still has the PID this
        object knew: membership is the business of the commands that change it, and an
        object read before a node was added, removed or restarted elsewhere (a dashboard
        quitting, say) must not write its stale view back.
        """
        known = {m.name: m.to_json() for m in self.members()}
        stop_all([m.proc for m in self.members() if m.proc])
        for member in self.members():
            if member.proc and not member.proc.alive():  # keep one that survived SIGKILL
                member.proc = None
        with self._locked():
            try:
                data = json.loads((self.dir / "cluster.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                data = self._data()
            stopped = {m.name: m.to_json() for m in self.members()}

            def update(entry: dict) -> dict:
                name = entry["name"]
                same = name in known and entry.get("pid") == known[name]["pid"]
                return stopped[name] if same else entry
            data["proxy"] = update(data["proxy"])
            for group in ("nodes", "leaving"):
                data[group] = [update(n) for n in data.get(group, [])]
            # Stopped, a node started for a change not taken is nothing to remember.
            data["starting"] = [entry for entry in map(update, data.get("starting", []))
                                if entry.get("pid")]
            self.starting = [m for m in self.starting if m.proc]
            try:
                self._write(data)
            except OSError:
                pass  # a full disk, say: the PIDs left in the file are dead, and read as down

    def kill(self, name: str) -> Member:
        member = self.node(name)
        if member.proc is None or not member.proc.signal(signal.SIGKILL):
            raise ClusterError(f"{name} is not running")
        wait_until(lambda: not member.proc.alive(), 2.0)
        return member

    def pause(self, name: str) -> Member:
        member = self.node(name)
        if member.proc is None or member.proc.state() != UP:
            raise ClusterError(f"{name} is not running (state: {self.state(member)})")
        member.proc.signal(signal.SIGSTOP)
        wait_until(lambda: member.proc.state() == PAUSED, 2.0)
        return member

    def resume(self, name: str) -> Member:
        member = self.node(name)
        if member.proc is None or member.proc.state() != PAUSED:
            raise ClusterError(f"{name} is not paused (state: {self.state(member)})")
        member.proc.signal(signal.SIGCONT)
        return member

    def restart(self, name: str) -> Member:
        """Stop the node if it runs (even paused), start it on its port and data again."""
        member = self.node(name)
        if member.proc is not None:
            member.proc.stop()
        # The port may be held for a moment after the old process exits (a reconnecting
        # proxy's socket, say): give it a short while before calling it taken.
        if not wait_until(lambda: port_free(self.spec.host, member.port), PORT_WAIT_S, 0.05):
            raise ClusterError(f"port {member.port} for {name} is in use by another program")
        self._clear_failure(member)
        self._launch([self._spawn_node(member)], lambda: self._save_member(member))
        self._await_ready([member])
        failure = self.failure(member)
        if failure is not None:
            raise ClusterError(f"{name} failed: {failure['reason']}; "
                               f"{recover_hint(name, self.spec.name)}")
        return member

    def _clear_failure(self, member: Member) -> None:
        (self.dir / member.name / FAILED_FILE).unlink(missing_ok=True)

    def restart_proxy(self, clock_offset_ms: int = 0) -> Member:
        """Stop the proxy if it runs and start it again (its clock restored from its folder).

        `clock_offset_ms` runs its clock that far off the wall clock (negative: behind), as
        a proxy restarted on a machine whose clock is wrong would.
        """
        proxy = self.proxy
        if proxy.proc is not None:
            proxy.proc.stop()
        if not wait_until(lambda: port_free(self.spec.host, proxy.port), PORT_WAIT_S, 0.05):
            raise ClusterError(f"port {proxy.port} for the proxy is in use by another program")
        self._launch([self._spawn_proxy(clock_offset_ms)], lambda: self._save_member(proxy))
        self._await_ready([proxy, *(n for n in self.nodes if n.proc and n.proc.state() == UP)])
        return proxy

    def wipe(self, name: str) -> Member:
        """Lose a node's disk: SIGKILL it, delete its database, start it again, empty.

        What it held comes back from the other replicas (anti-entropy, hints, read repair).
        The way back for a node that failed on a corrupt database (its mark goes too).
        """
        member = self.node(name)
        if member.proc is not None and member.proc.signal(signal.SIGKILL):
            if not wait_until(lambda: not member.proc.alive(), 2.0):
                raise ClusterError(f"{name} (pid {member.proc.pid}) survived SIGKILL; "
                                   f"its data was left alone")
        for path in (self.dir / name).glob("data.db*"):  # the database, its WAL and index
            path.unlink(missing_ok=True)
        return self.restart(name)

    # -- membership changes ---------------------------------------------------------------
    #
    # Each one is carried out by the proxy (the core's Membership): new owners join the
    # write set, the moving ranges stream, reads move, old owners drop what they no longer
    # own. These commands start and stop the processes around it, write cluster.json once
    # the proxy accepted the change (see the module's docstring), and with `wait` follow
    # the move until it is over, giving `progress` each view of it (about every 0.2 s).

    def add_node(self, wait: bool = True, progress: Progress | None = None) -> Member:
        """Start a new, empty node `n{k+1}` on the port after the highest in use and join
        it to the ring: the ranges it now owns stream to it from their current replicas.

        With `wait`, return once they have all arrived (reads then go to it); else once
        the proxy accepted the change. A refused change stops the new node again and leaves
        cluster.json as it was.
        """
        with self._locked():
            self.refresh()
            self._settle()
            member = self._start_next()
            view = self._accepted(
                member, lambda kv: kv.add_node(member.name, member.url(self.spec.host)))
            self.starting.remove(member)
            self.nodes.append(member)
            self._write_membership()
        if wait:
            self._await_ready([member])
            self._follow(view, progress)
        return member

    def abort_change(self) -> ChangeView:
        """Give up the move in progress while reads are still on the old ring (a joining
        node that never came up, say). The proxy goes back to the old ring, and
        cluster.json with it: a node that was joining is stopped (its folder stays), one
        that was leaving is a member again. Returns the aborted change's view."""
        with self._locked():
            self.refresh()
            self._check_proxy()
            answer = self._ask(self.url, KV.change, 2.0)
            if answer is not None and answer.change is None:
                raise ClusterError("no change is in progress: there is nothing to abort")
            view = self._membership(lambda kv: kv.abort_change().aborted)
            before = view.nodes_before
            known = {m.name: m for m in [*self.nodes, *self.leaving]}
            for member in [m for m in self.nodes if m.name not in before]:
                if member.proc is not None:
                    member.proc.stop()
            self.nodes = [known[name] for name in before if name in known]
            self.leaving = [m for m in self.leaving if m.name not in before]
            self._write_membership()
        return _view(view)

    def remove_node(self, name: str, wait: bool = True,
                    progress: Progress | None = None) -> Member:
        """Decommission `name`: its ranges stream to the nodes that take them over, then it
        is stopped and forgotten (its data folder stays). Refused if fewer than N nodes
        would remain.

        With `wait`, return once it is stopped; else once the proxy accepted the change
        (it keeps running, listed as leaving, until its ranges are out).
        """
        with self._locked():
            self.refresh()
            self._settle()
            member = self._ring_member(name)
            if len(self.nodes) - 1 < self.spec.replicas:
                raise ClusterError(f"removing {name} would leave {len(self.nodes) - 1} nodes, "
                                   f"fewer than N={self.spec.replicas} replicas")
            self._check_proxy()
            view = self._membership(lambda kv: kv.remove_node(name).change)
            self.nodes.remove(member)
            self.leaving.append(member)
            self._write_membership()
        if wait:
            self._follow(view, progress)
            self._forget(member)
        return member

    def replace_node(self, name: str, wait: bool = True,
                     progress: Progress | None = None) -> Member:
        """A new, empty node takes `name`'s place in the ring, on its tokens: exactly its
        ranges stream to the newcomer, from the other replicas of each (or from `name`
        itself while it still runs). Meant for a dead node; then `name` is stopped if it
        still runs and forgotten. Returns the new node.

        With `wait`, return once the ranges have arrived; else once the proxy accepted.
        """
        with self._locked():
            self.refresh()
            self._settle()
            old = self._ring_member(name)
            new = self._start_next()
            new.seat = old.seat or old.name
            view = self._accepted(
                new, lambda kv: kv.replace_node(name, new.name, new.url(self.spec.host)))
            self.starting.remove(new)
            self.nodes[self.nodes.index(old)] = new
            self.leaving.append(old)
            self._write_membership()
        if wait:
            self._await_ready([new])
            self._follow(view, progress)
            self._forget(old)
        return new

    def next_member(self) -> Member:
        """The node `add_node` would start: the port after the highest in use, and a name
        never used here before (a removed node's folder, and data, stays: a new node must
        start empty, not with what an old one of that name held)."""
        index = max(int(n.name[1:]) for n in [*self.nodes, *self.leaving]) + 1
        while (self.dir / f"n{index}").exists():
            index += 1
        return Member(f"n{index}", max(m.port for m in self.members()) + 1)

    def settle(self, answer: ChangeStatus | MembershipInfo | None = None) -> None:
        """Stop and forget every leaving node whose move is over (see the module's
        docstring); `status`, `start` and the membership commands call it. `answer`: the
        proxy's word on the change in progress (`/cluster/change`, or the membership in
        `/cluster`), if the caller has just asked."""
        if not self.leaving:
            return
        with self._locked():
            self.refresh()
            self._settle(answer)

    def _settle(self, answer: ChangeStatus | MembershipInfo | None = None) -> None:
        """`settle`, with the lock held and the file just read."""
        if not self.leaving:
            return
        if answer is None and self.state(self.proxy) == UP:
            answer = self._ask(self.url, KV.change, 2.0)
        # No answer, no verdict: a proxy restarted on its kept state may resume the move,
        # and need what only the leaving node holds.
        if answer is None:
            return
        current = answer.change
        moving = set(current.nodes_before) if current else set()
        over = [m for m in self.leaving if m.name not in moving]
        for member in over:
            if member.proc is not None:
                member.proc.stop()
            self.leaving.remove(member)
        if over:
            self._write_membership()

    def _start_next(self) -> Member:
        """Start the next member (lock held), and return once it answers /health. Refused
        first, starting nothing, while a change is in progress (the proxy would refuse)."""
        answer = self._ask(self.url, KV.change, 2.0)
        current = None if answer is None else answer.change
        if current is not None:
            raise ClusterError(f"a change is in progress ({current.kind} "
                               f"{current.node}, {current.phase}): wait for it, or "
                               f"give it up with `kvlab abort-move`")
        member = self.next_member()
        if not port_free(self.spec.host, member.port):
            raise ClusterError(f"port {member.port} for {member.name} is in use by "
                               f"another program")
        self._check_proxy()
        held = self._spawn_node(member)
        self.starting.append(member)
        try:
            self._launch([held], lambda: self._write(self._data()))
            self._await_node(member)
        except BaseException:
            self._unstart(member)
            raise
        return member

    def _unstart(self, member: Member) -> None:
        """Stop a node started for a change the proxy did not take (lock held), and take it
        out of cluster.json."""
        if member.proc is not None:
            member.proc.stop()
        self.starting.remove(member)
        try:
            self._write(self._data())
        except OSError:
            pass  # its entry stays, with a dead PID: the next `kvlab down` drops it

    def _accepted(self, member: Member, begin: Callable[[KV], ChangeStarted]) -> ChangeInfo:
        """Ask the proxy for a change that brings in `member` (already running) with
        `begin`; stop it again if the proxy refuses. If it did not answer in time (a
        stalled proxy can still take the request later), find out before stopping
        anything: a change the proxy did start must keep its node."""
        try:
            return self._membership(lambda kv: begin(kv).change)
        except ProxyUnreachable as exc:
            deadline = time.monotonic() + PROXY_LOST_S
            while time.monotonic() < deadline:
                answer = self._ask(self.url, KV.change, 2.0)
                if answer is not None:
                    view = answer.change
                    if view is not None and view.node == member.name:
                        return view
                    break
                time.sleep(CHANGE_POLL_S)
            self._unstart(member)
            raise ProxyUnreachable(
                f"{exc}; {member.name} was stopped again. Should the proxy still take the "
                f"change, `kvlab status` shows it and `kvlab abort-move` gives it up") from None
        except BaseException:
            self._unstart(member)
            raise

    def _forget(self, member: Member) -> None:
        """A leaving node whose move is over: stop it, and take it out of cluster.json."""
        if member.proc is not None:
            member.proc.stop()
        with self._locked():
            self.refresh()
            self.leaving = [m for m in self.leaving if m.name != member.name]
            self._write_membership()

    def _write_membership(self) -> None:
        self.spec = replace(self.spec, nodes=len(self.nodes))
        self._write(self._data())

    def _check_proxy(self) -> None:
        if self.proxy.proc is None or not self.proxy.proc.alive():
            raise ProxyUnreachable(
                f"the proxy of cluster {self.spec.name!r} is not running: it carries out "
                f"membership changes (start the cluster with `kvlab up --name "
                f"{self.spec.name}`)")

    def _follow(self, accepted: ChangeInfo, progress: Progress | None) -> ChangeInfo:
        """Poll the proxy until the change it `accepted` is over; its final view. Raises
        `ClusterError` if it was aborted (`abort_change`, from another command)."""
        ours = (accepted.kind, accepted.node)
        if progress:
            progress(_view(accepted))
        lost_since = None
        while True:
            time.sleep(CHANGE_POLL_S)
            answer = self._ask(self.url, KV.change, 2.0)
            if answer is None:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > PROXY_LOST_S:
                    raise ProxyUnreachable(
                        f"the proxy at {self.url} stopped answering while {ours[1]} was "
                        f"{_VERBS[ours[0]]}; the move may not have finished")
                continue
            lost_since = None
            for view in (answer.change, answer.last_change):
                # "resume": ours, started over by a proxy that restarted in the middle.
                if view is not None and ((view.kind, view.node) == ours
                                         or view.kind == "resume"):
                    if progress:
                        progress(_view(view))
                    if view is answer.last_change:
                        if view.phase == "aborted":
                            raise ClusterError(f"the move ({_VERBS[ours[0]]}: {ours[1]}) was "
                                               f"aborted; the ring is back as it was")
                        return view
                    break
            else:  # neither: a later change has finished since ours
                return accepted

    # -- internals ----------------------------------------------------------------------

    def _data(self) -> dict:
        return {"spec": self.spec.to_json(), "proxy": self.proxy.to_json(),
                "nodes": [n.to_json() for n in self.nodes],
                "leaving": [n.to_json() for n in self.leaving], "secret": self.secret,
                "starting": [n.to_json() for n in self.starting]}

    def _membership(self, ask: Callable[[KV], ChangeInfo]) -> ChangeInfo:
        """Ask the proxy for a ring change (`ask`, with the secret); the view of the
        change it accepted."""
        try:
            with KV(self.url, timeout=5.0, secret=self.secret) as kv:
                return ask(kv)
        except KVError as exc:
            if exc.status == 0:  # no answer at all
                raise ProxyUnreachable(str(exc)) from None
            raise ClusterError(f"the proxy refused the change: {exc}") from None

    def _ask(self, url: str, ask: Callable[[KV], Answer], timeout: float = 0.5
             ) -> Answer | None:
        """`ask` of the process at `url` (with the secret); None if it does not answer, or
        not as it should: a process starting, stopping, or not kvlab's."""
        try:
            with KV(url, timeout=timeout, secret=self.secret) as kv:
                return ask(kv)
        except KVError:
            return None

    def _healthy(self, url: str) -> bool:
        return self._ask(url, KV.health) is not None

    def _await_node(self, member: Member) -> None:
        if not wait_until(lambda: self._healthy(member.url(self.spec.host)), READY_TIMEOUT_S,
                          0.05):
            raise ClusterError(f"{member.name} not ready after {READY_TIMEOUT_S:.0f}s:\n"
                               f"{self._log_tail(member)}")

    def _spawn_node(self, member: Member) -> Held:
        """Start `member` with the cluster's healing settings and every other node it knows
        of as a peer (nodes added later are its peers only from its next start)."""
        spec = self.spec
        folder = self.dir / member.name
        argv = ["--name", member.name, "--host", spec.host, "--port", str(member.port),
                "--data", str(folder), "--durability", spec.durability,
                "--vnodes", str(spec.vnodes), "--replicas", str(spec.replicas),
                "--tombstone-grace", f"{spec.tombstone_grace_s:g}",
                "--hint-window", f"{spec.hint_window_s:g}",
                "--hints", _on_off(spec.hints), "--anti-entropy", _on_off(spec.anti_entropy),
                "--anti-entropy-interval", f"{spec.anti_entropy_s:g}",
                "--max-clock-ahead", f"{spec.max_clock_ahead_s:g}"]
        if spec.stream_rate_mb_s:  # the node's own default is unthrottled
            argv += ["--stream-rate", f"{spec.stream_rate_mb_s:g}"]
        for peer in self.nodes:
            if peer.name != member.name:
                argv += ["--peer", f"{peer.name}={peer.url(spec.host)}"]
        held = Proc.spawn("kvlab.net.node", argv, folder / "node.log", self.dir, self._env())
        member.proc = held.proc
        return held

    def _spawn_proxy(self, clock_offset_ms: int = 0) -> Held:
        spec = self.spec
        folder = self.dir / "proxy"
        argv = ["--host", spec.host, "--port", str(self.proxy.port),
                "--replicas", str(spec.replicas),
                "--read-quorum", str(spec.read_quorum), "--write-quorum",
                str(spec.write_quorum), "--vnodes", str(spec.vnodes),
                "--timeout-ms", str(spec.timeout_ms), "--hints", _on_off(spec.hints),
                "--max-clock-ahead", f"{spec.max_clock_ahead_s:g}", "--state", str(folder)]
        if spec.sloppy:
            argv.append("--sloppy")
        if spec.protect_data:
            argv.append("--protect-data")
        if clock_offset_ms:
            argv += ["--clock-offset-ms", str(clock_offset_ms)]
        for node in self.nodes:
            argv += ["--node", f"{node.name}={node.url(spec.host)}"]
        held = Proc.spawn("kvlab.net.proxy", argv, folder / "proxy.log", self.dir, self._env())
        self.proxy.proc = held.proc
        return held

    def _env(self) -> dict[str, str]:
        # In the environment, not on argv: a process's argv is readable by every user.
        return {} if self.secret is None else {SECRET_ENV: self.secret}

    def _await_ready(self, members: list[Member]) -> None:
        """Wait until each member answers /health and the proxy has a link to each node,
        but for a node that stopped itself on a corrupt database (see `failure`)."""
        host = self.spec.host
        names = {m.name for m in members if m is not self.proxy}

        def waited(m: Member) -> bool:
            return m is self.proxy or m.name in names

        def ready() -> bool:
            for m in filter(waited, members):
                if m.proc is None or not m.proc.alive():
                    if m is not self.proxy and self.failure(m) is not None:
                        names.discard(m.name)  # it stopped itself: the others go on without it
                        continue
                    raise ClusterError(f"{m.name} exited while starting; its log says:\n"
                                       f"{self._log_tail(m)}")
                if not self._healthy(m.url(host)):
                    return False
            links = self._ask(self.url, KV.health)
            return links is not None and all(links.nodes.get(n) == UP for n in names)

        if not wait_until(ready, READY_TIMEOUT_S, 0.05):
            slow = [m.name for m in filter(waited, members) if not self._healthy(m.url(host))]
            raise ClusterError(f"cluster {self.spec.name!r} not ready after "
                               f"{READY_TIMEOUT_S:.0f}s (not answering: "
                               f"{', '.join(slow) or 'proxy links'})")

    def _log_tail(self, member: Member, lines: int = 15) -> str:
        name = "proxy.log" if member is self.proxy else "node.log"
        try:
            text = (self.dir / member.name / name).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


_VERBS = {"add": "joining", "remove": "leaving", "replace": "taking its place",
          "resume": "moving"}


def recover_hint(node: str, cluster: str) -> str:
    """What to do about a node that failed on a damaged database."""
    return (f"recover: kvlab wipe {node} --name {cluster}: it starts empty and anti-entropy "
            f"refills it from its replicas")


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _own_folder(folder: Path) -> None:
    """Make the cluster's folder, or close an existing one to other users: one made by a
    kvlab before secrets is 0755, over databases and logs that are 0644."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        # Only when open: a folder that is already closed may also be one we can't change
        # (immutable, read-only), and the command must fail on what it records, saying so.
        os.chmod(folder, 0o700)


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def _view(change: ChangeInfo | None) -> ChangeView | None:
    """A change as the CLI prints it and `kvlab status --json` gives it: plain JSON."""
    return None if change is None else msgspec.to_builtins(change)


def up(spec: ClusterSpec) -> Cluster:
    """Start the cluster `spec` describes; reuses its data if it ran before.

    A cluster that ran before starts with the membership it has (nodes added or removed
    since included, on their ports), whatever `spec.nodes` and `spec.port` say: only
    add-node and remove-node change membership. Its other settings come from `spec`.
    `membership_note(spec, cluster)` says when the two differ.

    One `up` per name at a time: another one starting the same cluster meanwhile is
    refused (`ClusterError`) and starts nothing.
    """
    with _starting(spec.name):
        return _up(spec)


def _up(spec: ClusterSpec) -> Cluster:
    try:
        previous = Cluster.load(spec.name)
    except ClusterError:
        previous = None
    if previous is not None and previous.running():
        raise ClusterError(
            f"cluster {spec.name!r} is already running (proxy on port "
            f"{previous.proxy.port}); `kvlab down --name {spec.name}` stops it")
    if previous is None:
        cluster = Cluster.new(spec)
    else:  # its old PIDs are dead
        try:
            previous.spec = replace(spec, nodes=len(previous.nodes), port=previous.proxy.port)
        except ValueError as exc:  # e.g. more replicas than the nodes it has
            raise ClusterError(f"cluster {spec.name!r} has {len(previous.nodes)} nodes: "
                               f"{exc}") from None
        cluster = previous
        if cluster.secret is None:  # it first ran before kvlab had secrets
            cluster.secret = new_secret()
    cluster.start()
    return cluster


@contextmanager
def _starting(name: str) -> Iterator[None]:
    """Hold the cluster's start lock (`up.lock`, with the holder's PID in it), or refuse.

    Not cluster.lock: that one is taken, briefly, by every write of cluster.json, and a
    start writes it too.
    """
    folder = cluster_dir(name)
    try:
        _own_folder(folder)
        lock = os.fdopen(os.open(folder / "up.lock", os.O_RDWR | os.O_CREAT | os.O_APPEND,
                                 0o600), "a+")
    except OSError as exc:
        raise ClusterError(f"can't start cluster {name!r}: {exc}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            by = f" (pid {holder})" if holder else ""
            raise ClusterError(f"cluster {name!r} is being started by another command{by}; "
                               f"nothing was started here") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def membership_note(spec: ClusterSpec, cluster: Cluster) -> str | None:
    """What `up` kept of an earlier membership that `spec` did not ask for, if anything."""
    names = [n.name for n in cluster.nodes]
    if names == spec.node_names() and cluster.proxy.port == spec.port:
        return None
    return (f"cluster {spec.name!r} keeps the membership it has: {len(names)} nodes "
            f"({', '.join(names)}), proxy on port {cluster.proxy.port}; --nodes and --port "
            f"apply only to a new cluster (kvlab add-node / remove-node change it)")


def down(name: str) -> Cluster:
    cluster = Cluster.load(name)
    cluster.stop()
    return cluster


@contextmanager
def running(spec: ClusterSpec) -> Iterator[Cluster]:
    """A cluster for the length of a `with` block (tests, benchmarks, the dashboard)."""
    cluster = up(spec)
    try:
        yield cluster
    finally:
        cluster.refresh()
        cluster.stop()
