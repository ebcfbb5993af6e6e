"""Attack a fresh cluster's proxy at its front door and report what the other clients saw.

Each attack runs while a bystander sends GETs and SETs over one keep-alive connection; the
table gives its answer, the bystander's p99 and worst latency and failures, and the proxy's
peak RSS during the attack:

    python scripts/front_door_attacks.py [--json]

The attacks: a 256 MiB request target, a 64 MiB header, 20,000 idle connections (past the
cap; as many as the open-files limit allows), 200 clients sending a byte every second (past
the request deadline), 50 connections pipelining 1 MB writes without reading their answers,
urllib posting a body over the limit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from kvlab.cluster import supervisor
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.spec import ClusterSpec


def rss_mb(pid: int) -> float:
    """The process's resident memory; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class Bystander(threading.Thread):
    """A SET then a GET of its own key, over and over, timing each."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.done = port, threading.Event()
        self.latencies: list[float] = []
        self.failures = 0

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        n = 0
        while not self.done.is_set():
            n += 1
            for method, path, body in (("POST", "/set", json.dumps({"key": f"b{n}",
                                                                    "value": "v"})),
                                       ("GET", f"/get?key=b{n}", None)):
                started = time.perf_counter()
                try:
                    connection.request(method, path, body)
                    answer = connection.getresponse()
                    answer.read()
                    ok = answer.status == 200
                except (OSError, http.client.HTTPException):
                    ok = False
                    connection = http.client.HTTPConnection("127.0.0.1", self.port,
                                                            timeout=10)
                self.latencies.append(time.perf_counter() - started)
                self.failures += not ok
            time.sleep(0.002)  # a client at ~500 op/s, not a load generator

    def figures(self) -> dict[str, float]:
        self.done.set()
        self.join(15)
        ordered = sorted(self.latencies) or [0.0]
        return {"ops": len(ordered), "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000,
                "max_ms": ordered[-1] * 1000, "failures": self.failures}


def flood(port: int, head: bytes, total: int) -> str:
    chunk = b"a" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        sent = 0
        try:
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        answer = read_answer(sock)
    return (answer.split(b"\r\n", 1)[0].decode() or "reset") + f" after {sent >> 10} KiB sent"


def url_attack(port: int) -> str:
    return flood(port, b"GET /get?key=", 256 << 20)


def header_attack(port: int) -> str:
    return flood(port, b"GET /get?key=k HTTP/1.1\r\nHost: t\r\nX-Big: ", 64 << 20)


def idle_connections(port: int) -> str:
    # As many as this process may open, less some for the rest of it (20,000 here).
    count = min(20_000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 300)
    socks, refused = [], 0
    try:
        for _ in range(count):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                refused += 1
        time.sleep(1)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /get?key=k HTTP/1.1\r\nHost: t\r\n\r\n")
                answer = read_answer(sock).split(b"\r\n", 1)[0].decode() or "closed"
        except OSError as exc:
            answer = type(exc).__name__
    finally:
        for sock in socks:
            sock.close()
    return f"{len(socks)} open, {refused} failed to connect; a new client: {answer}"


def slow_clients(port: int) -> str:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    answers: dict[str, int] = {}
    for sock in socks:
        sock.setblocking(False)
    started = time.monotonic()
    request = b"GET /get?key=slow HTTP/1.1\r\nHost: t\r\n"
    for i in range(len(request)):
        for sock in list(socks):
            try:
                sock.send(request[i:i + 1])
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b"reset"
            status = data.split(b"\r\n", 1)[0].decode() or "closed"
            answers[status] = answers.get(status, 0) + 1
            socks.remove(sock)
            sock.close()
        if not socks or time.monotonic() - started > 25:
            break
        time.sleep(1)
    for sock in socks:
        sock.close()
    return f"after {time.monotonic() - started:.0f} s: {answers}, {len(socks)} unanswered"


def pipelined_bodies(port: int) -> str:
    body = json.dumps({"key": "big", "value": "v" * 1_000_000}).encode()
    request = b"POST /set HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body),
                                                                              body)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]

    def send(sock: socket.socket) -> None:
        try:
            for _ in range(40):
                sock.sendall(request)
        except OSError:
            pass

    senders = [threading.Thread(target=send, args=(sock,), daemon=True) for sock in socks]
    for sender in senders:
        sender.start()
    time.sleep(8)
    for sock in socks:
        sock.close()
    return "50 connections x 40 writes of 1 MB, no answer read, for 8 s"


def urllib_413(port: int) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/set", data=b"x" * 2_000_000,
                                     method="POST")
    results: dict[str, int] = {}
    for _ in range(20):
        try:
            urllib.request.urlopen(request, timeout=10)
            result = "200"
        except urllib.error.HTTPError as exc:
            result = str(exc.code)
        except OSError as exc:
            result = type(exc).__name__
        results[result] = results.get(result, 0) + 1
    return f"20 tries: {results}"


ATTACKS: dict[str, tuple[str, Callable[[int], str]]] = {
    "url": ("256 MiB request target", url_attack),
    "header": ("64 MiB header", header_attack),
    "idle": ("20,000 idle connections", idle_connections),
    "slow": ("200 clients, a byte a second", slow_clients),
    "pipelined": ("50 conns pipelining 1 MB bodies unread", pipelined_bodies),
    "urllib": ("urllib, 2 MB body over the limit", urllib_413),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", action="append", choices=list(ATTACKS), metavar="ATTACK",
                        help="run this attack only (repeat for more): " + ", ".join(ATTACKS))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # for the 20,000 sockets
    rows = []
    with tempfile.TemporaryDirectory() as home:
        os.environ["KVLAB_HOME"] = home
        spec = ClusterSpec(name="door", nodes=3, port=free_port_block(4), durability="none")
        with supervisor.running(spec) as cluster:
            port, pid = cluster.proxy.port, cluster.proxy.proc.pid
            for key, (name, attack) in ATTACKS.items():
                if args.only and key not in args.only:
                    continue
                bystander = Bystander(port)
                bystander.start()
                peak, done = rss_mb(pid), threading.Event()

                def watch() -> None:
                    nonlocal peak
                    while not done.is_set():
                        peak = max(peak, rss_mb(pid))
                        time.sleep(0.05)

                watcher = threading.Thread(target=watch, daemon=True)
                watcher.start()
                before = rss_mb(pid)
                started = time.monotonic()
                try:
                    answer = attack(port)
                except OSError as exc:  # the proxy stalled past our timeouts, or died
                    answer = f"{type(exc).__name__}: {exc}"
                if not rss_mb(pid):
                    answer += " (the proxy is gone)"
                took = time.monotonic() - started
                done.set()
                watcher.join()
                rows.append({"attack": name, "answer": answer, "seconds": round(took, 1),
                             "rss_before_mb": round(before), "rss_peak_mb": round(peak),
                             **{k: round(v, 1) for k, v in bystander.figures().items()}})
                time.sleep(1)  # let the proxy settle between attacks
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(f"{row['attack']}: {row['answer']} ({row['seconds']} s)\n"
              f"    bystander {row['ops']} ops, p99 {row['p99_ms']} ms, max {row['max_ms']} ms, "
              f"{row['failures']} failed; proxy RSS {row['rss_before_mb']} -> peak "
              f"{row['rss_peak_mb']} MB")


if __name__ == "__main__":
    main()
