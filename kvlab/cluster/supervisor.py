"""Start, stop, inspect and break a local cluster of real processes.

A cluster lives in `$KVLAB_HOME/NAME/`: `cluster.json` (spec, ports, PIDs) and a folder per
process with its database and log. Every command reads that file, so `kvlab kill n2` in one
terminal acts on the cluster a dashboard started in another.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import tempfile
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from kvlab.cluster.ports import port_free
from kvlab.cluster.process import DOWN, PAUSED, STARTING, UP, Proc, wait_until
from kvlab.cluster.spec import ClusterSpec, cluster_dir

READY_TIMEOUT_S = 30.0
PORT_WAIT_S = 3.0


class ClusterError(Exception):
    """A cluster operation that can't be done; the message says why and what to do."""


class NoCluster(ClusterError):
    """No cluster of that name has been started here."""


@dataclass
class Member:
    """The proxy or a node: where it listens and which process runs it."""

    name: str
    port: int
    proc: Proc | None = None

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}"

    def to_json(self) -> dict:
        return {"name": self.name, "port": self.port,
                "pid": self.proc.pid if self.proc else None,
                "started": self.proc.started if self.proc else None}

    @classmethod
    def from_json(cls, data: dict) -> Member:
        proc = Proc(data["pid"], data["started"]) if data.get("pid") else None
        return cls(data["name"], data["port"], proc)


@dataclass
class Cluster:
    spec: ClusterSpec
    proxy: Member
    nodes: list[Member] = field(default_factory=list)

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
        return cls(spec, Member("proxy", spec.port), nodes)

    @classmethod
    def load(cls, name: str) -> Cluster:
        path = cluster_dir(name) / "cluster.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise NoCluster(f"no cluster named {name!r} (looked for {path}); "
                               f"start one with `kvlab up --name {name}`") from None
        except json.JSONDecodeError as exc:
            raise ClusterError(f"{path} is corrupt: {exc}") from None
        return cls._from_json(data)

    @classmethod
    def _from_json(cls, data: dict) -> Cluster:
        return cls(ClusterSpec.from_json(data["spec"]), Member.from_json(data["proxy"]),
                   [Member.from_json(n) for n in data["nodes"]])

    def refresh(self) -> None:
        """Re-read cluster.json: another command may have restarted, added or removed a node."""
        path = self.dir / "cluster.json"
        try:
            fresh = Cluster._from_json(json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return
        self.spec, self.proxy, self.nodes = fresh.spec, fresh.proxy, fresh.nodes

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
                data["nodes"] = [member.to_json() if n["name"] == member.name else n
                                 for n in data["nodes"]]
            self._write(data)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Several commands (a dashboard, `kvlab restart` in another terminal) may record
        # PIDs at once: they take turns, or one would overwrite the other's and orphan it.
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "cluster.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write(self, data: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".cluster.", suffix=".json")
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.dir / "cluster.json")  # atomic: a reader never sees half a file

    # -- queries ------------------------------------------------------------------------

    def members(self) -> list[Member]:
        return [self.proxy, *self.nodes]

    def node(self, name: str) -> Member:
        for member in self.nodes:
            if member.name == name:
                return member
        names = ", ".join(n.name for n in self.nodes)
        raise ClusterError(f"no node {name!r} in cluster {self.spec.name!r} (nodes: {names})")

    def running(self) -> list[Member]:
        return [m for m in self.members() if m.proc and m.proc.alive()]

    def state(self, member: Member) -> str:
        """up, down, paused or starting (alive but not yet answering /health)."""
        if member.proc is None:
            return DOWN
        state = member.proc.state()
        if state == UP and not _healthy(member.url(self.spec.host)):
            return STARTING
        return state

    def status(self) -> dict:
        """Every process with its URL, PID and state; each node with its healing counters
        (the node's own, from its /stats: None when it is not up or can't say)."""
        host = self.spec.host

        def view(m: Member) -> dict:
            return {"name": m.name, "url": m.url(host), "pid": m.proc.pid if m.proc else None,
                    "state": self.state(m)}

        def node_view(m: Member) -> dict:
            out = view(m)
            stats = _get_json(f"{m.url(host)}/stats") if out["state"] == UP else None
            out["healing"] = (stats or {}).get("healing")
            return out

        return {"name": self.spec.name, "proxy": view(self.proxy),
                "nodes": [node_view(n) for n in self.nodes], "spec": self.spec.to_json()}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start every process and return when all answer /health (or raise, leaving none)."""
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
        try:
            for member in self.nodes:
                self._spawn_node(member)
            self._spawn_proxy()
            self.save()
            self._await_ready(self.members())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process this object knows of, and record that they stopped.

        Only the PIDs are written, and only where cluster.json still has the PID this
        object knew: membership is the business of the commands that change it, and an
        object read before a node was added, removed or restarted elsewhere (a dashboard
        quitting, say) must not write its stale view back.
        """
        known = {m.name: m.to_json() for m in self.members()}
        for member in self.members():
            if member.proc:
                member.proc.stop()
                if not member.proc.alive():  # keep the PID of one that survived SIGKILL
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
            data["nodes"] = [update(n) for n in data["nodes"]]
            self._write(data)

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
        self._spawn_node(member)
        self._save_member(member)
        self._await_ready([member])
        return member

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
        self._spawn_proxy(clock_offset_ms)
        self._save_member(proxy)
        self._await_ready([proxy, *(n for n in self.nodes if n.proc and n.proc.state() == UP)])
        return proxy

    def wipe(self, name: str) -> Member:
        """Lose a node's disk: SIGKILL it, delete its database, start it again, empty.

        What it held comes back from the other replicas (anti-entropy, hints, read repair).
        """
        member = self.node(name)
        if member.proc is not None and member.proc.signal(signal.SIGKILL):
            if not wait_until(lambda: not member.proc.alive(), 2.0):
                raise ClusterError(f"{name} (pid {member.proc.pid}) survived SIGKILL; "
                                   f"its data was left alone")
        for path in (self.dir / name).glob("data.db*"):  # the database, its WAL and index
            path.unlink(missing_ok=True)
        return self.restart(name)

    def add_node(self) -> Member:
        """Start a new node `n{k+1}` on the port after the highest in use and join it to the
        proxy's ring. No data moves: its keys reach it by read repair."""
        with self._locked():
            self.refresh()
            member = self.next_member()
            if not port_free(self.spec.host, member.port):
                raise ClusterError(f"port {member.port} for {member.name} is in use by "
                                   f"another program")
            self._spawn_node(member)
            self.nodes.append(member)
            self.spec = replace(self.spec, nodes=len(self.nodes))
            self._write(self._data())
        try:
            self._await_node(member)
            self._membership("POST", "/cluster/nodes",
                             {"name": member.name, "url": member.url(self.spec.host)})
            self._await_ready([member])
        except BaseException:
            self.remove_node(member.name)
            raise
        return member

    def next_member(self) -> Member:
        """The node `add_node` would start: the port after the highest in use, and a name
        never used here before (a removed node's folder, and data, stays: a new node must
        start empty, not with what an old one of that name held)."""
        index = max(int(n.name[1:]) for n in self.nodes) + 1
        while (self.dir / f"n{index}").exists():
            index += 1
        return Member(f"n{index}", max(m.port for m in self.members()) + 1)

    def remove_node(self, name: str) -> Member:
        """Take a node out of the proxy's ring, stop it, and forget it (its data folder stays)."""
        with self._locked():
            self.refresh()
            member = self.node(name)
            if len(self.nodes) - 1 < self.spec.replicas:
                raise ClusterError(f"removing {name} would leave {len(self.nodes) - 1} nodes, "
                                   f"fewer than N={self.spec.replicas} replicas")
            if self.proxy.proc is not None and self.proxy.proc.alive():
                self._membership("DELETE", f"/cluster/nodes/{name}", None, missing_ok=True)
            if member.proc is not None:
                member.proc.stop()
            self.nodes.remove(member)
            self.spec = replace(self.spec, nodes=len(self.nodes))
            self._write(self._data())
        return member

    # -- internals ----------------------------------------------------------------------

    def _data(self) -> dict:
        return {"spec": self.spec.to_json(), "proxy": self.proxy.to_json(),
                "nodes": [n.to_json() for n in self.nodes]}

    def _membership(self, method: str, path: str, body: dict | None,
                    missing_ok: bool = False) -> None:
        """Tell the proxy about a ring change."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as exc:
            if not (missing_ok and exc.code == 404):
                raise ClusterError(f"the proxy refused the change: {exc.read().decode()}") \
                    from None
        except (urllib.error.URLError, OSError) as exc:
            raise ClusterError(f"the proxy at {self.url} is unreachable: {exc}") from None

    def _await_node(self, member: Member) -> None:
        if not wait_until(lambda: _healthy(member.url(self.spec.host)), READY_TIMEOUT_S, 0.05):
            raise ClusterError(f"{member.name} not ready after {READY_TIMEOUT_S:.0f}s:\n"
                               f"{self._log_tail(member)}")

    def _spawn_node(self, member: Member) -> None:
        """Start `member` with the cluster's healing settings and every other node it knows
        of as a peer (nodes added later are its peers only from its next start)."""
        spec = self.spec
        folder = self.dir / member.name
        argv = [sys.executable, "-m", "kvlab.net.node", "--name", member.name,
                "--host", spec.host, "--port", str(member.port), "--data", str(folder),
                "--durability", spec.durability, "--vnodes", str(spec.vnodes),
                "--replicas", str(spec.replicas),
                "--tombstone-grace", f"{spec.tombstone_grace_s:g}",
                "--hint-window", f"{spec.hint_window_s:g}",
                "--hints", _on_off(spec.hints), "--anti-entropy", _on_off(spec.anti_entropy),
                "--anti-entropy-interval", f"{spec.anti_entropy_s:g}",
                "--max-clock-ahead", f"{spec.max_clock_ahead_s:g}"]
        for peer in self.nodes:
            if peer.name != member.name:
                argv += ["--peer", f"{peer.name}={peer.url(spec.host)}"]
        member.proc = Proc.spawn(argv, folder / "node.log", self.dir)

    def _spawn_proxy(self, clock_offset_ms: int = 0) -> None:
        spec = self.spec
        folder = self.dir / "proxy"
        argv = [sys.executable, "-m", "kvlab.net.proxy", "--host", spec.host,
                "--port", str(self.proxy.port), "--replicas", str(spec.replicas),
                "--read-quorum", str(spec.read_quorum), "--write-quorum",
                str(spec.write_quorum), "--vnodes", str(spec.vnodes),
                "--timeout-ms", str(spec.timeout_ms), "--hints", _on_off(spec.hints),
                "--max-clock-ahead", f"{spec.max_clock_ahead_s:g}", "--state", str(folder)]
        if spec.sloppy:
            argv.append("--sloppy")
        if clock_offset_ms:
            argv += ["--clock-offset-ms", str(clock_offset_ms)]
        for node in self.nodes:
            argv += ["--node", f"{node.name}={node.url(spec.host)}"]
        self.proxy.proc = Proc.spawn(argv, folder / "proxy.log", self.dir)

    def _await_ready(self, members: list[Member]) -> None:
        """Wait until each member answers /health and the proxy has a link to each node."""
        host = self.spec.host
        names = {m.name for m in members if m is not self.proxy}

        def ready() -> bool:
            for m in members:
                if m.proc is None or not m.proc.alive():
                    raise ClusterError(f"{m.name} exited while starting; its log says:\n"
                                       f"{self._log_tail(m)}")
                if not _healthy(m.url(host)):
                    return False
            links = _get_json(f"{self.url}/health")
            return links is not None and all(
                links.get("nodes", {}).get(n) == UP for n in names)

        if not wait_until(ready, READY_TIMEOUT_S, 0.05):
            slow = [m.name for m in members if not _healthy(m.url(host))]
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


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def _get_json(url: str, timeout: float = 0.5) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _healthy(url: str) -> bool:
    return _get_json(f"{url}/health") is not None


def up(spec: ClusterSpec) -> Cluster:
    """Start the cluster `spec` describes; reuses its data if it ran before.

    A cluster that ran before starts with the membership it has (nodes added or removed
    since included, on their ports), whatever `spec.nodes` and `spec.port` say: only
    add-node and remove-node change membership. Its other settings come from `spec`.
    `membership_note(spec, cluster)` says when the two differ.
    """
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
    cluster.start()
    return cluster


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
