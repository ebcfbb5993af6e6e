#!/usr/bin/env python3
"""CPU of idle data nodes holding many keys, with anti-entropy at its default rate.

Starts N node processes (python -m kvlab.net.node, each with the others as peers) on free
127.0.0.1 ports in a temp folder, writes KEYS keys to every node over the replica channel
as a coordinator would (W = all), waits until anti-entropy rounds find the nodes in sync,
then reads each node's utime + stime from /proc/PID/stat over --seconds and prints it as a
share of one core, and its resident memory. Also restarts one node to show how long loading its keys takes.

  python scripts/node_idle_cpu.py [--keys 100000] [--seconds 30] [--nodes 3] [--json]

Everything it starts is stopped, and its folder deleted, when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from kvlab.cluster.ports import free_port_block
from kvlab.core.messages import Superseded, WriteReply, WriteRequest
from kvlab.core.record import Record
from kvlab.core.version import Version
from kvlab.net import codec

TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_s(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Nodes:
    def __init__(self, root: Path, count: int, flags: list[str]) -> None:
        base = free_port_block(count)
        self.root = root
        self.urls = {f"n{i + 1}": f"http://127.0.0.1:{base + i}" for i in range(count)}
        self.flags = flags
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        port = self.urls[name].rsplit(":", 1)[1]
        argv = [sys.executable, "-m", "kvlab.net.node", "--name", name, "--port", port,
                "--data", str(self.root / name), "--durability", "none", *self.flags]
        argv += [a for peer, url in self.urls.items() if peer != name
                 for a in ("--peer", f"{peer}={url}")]
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


async def get_json(session: aiohttp.ClientSession, url: str) -> dict | None:
    try:
        async with session.get(url) as response:
            return await response.json()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None


async def until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def load(session: aiohttp.ClientSession, url: str, keys: int, value_size: int,
               now: int) -> None:
    """Write the same versions to every node (anti-entropy may bring them there first)."""
    value = b"v" * value_size
    async with session.ws_connect(f"{url}/replica", max_msg_size=0) as ws:
        for start in range(0, keys, 1000):
            frame = [WriteRequest(i, Record(f"key-{i}", value, Version(now, i, "load")))
                     for i in range(start, min(keys, start + 1000))]
            await ws.send_bytes(codec.encode(frame))
            got = 0
            while got < len(frame):
                replies = codec.decode_replies((await ws.receive()).data)
                # Superseded: anti-entropy brought this very version here first.
                assert all(isinstance(r, WriteReply) or (isinstance(r, Superseded) and
                           r.version.coordinator == "load") for r in replies), replies[:3]
                got += len(replies)


async def main(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="kvlab-idle-"))
    nodes = Nodes(root, args.nodes, args.flag or [])
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            for name in nodes.urls:
                nodes.start(name)

            async def links_up() -> bool:
                for url in nodes.urls.values():
                    health = await get_json(session, f"{url}/health")
                    if health is None or any(s != "up" for s in health["peers"].values()):
                        return False
                return True
            await until(links_up, 20, "the nodes and their links")
            began = time.perf_counter()
            now = time.time_ns() // 1_000_000
            await asyncio.gather(*[load(session, url, args.keys, args.value_size, now)
                                   for url in nodes.urls.values()])
            load_s = time.perf_counter() - began

            async def rounds() -> int:
                stats = [await get_json(session, f"{u}/stats") for u in nodes.urls.values()]
                return min(s["healing"]["ae_in_sync"] for s in stats)
            start_rounds = await rounds()

            async def in_sync() -> bool:  # every node finished rounds that found no difference
                return await rounds() >= start_rounds + 2
            await until(in_sync, 60, "anti-entropy rounds in sync")

            pids = {name: proc.pid for name, proc in nodes.procs.items()}
            before = {name: cpu_s(pid) for name, pid in pids.items()}
            t0 = time.monotonic()
            await asyncio.sleep(args.seconds)  # the measurement window itself
            elapsed = time.monotonic() - t0
            used = {name: cpu_s(pid) - before[name] for name, pid in pids.items()}
            rss = {name: rss_mb(pid) for name, pid in pids.items()}
            stats = {n: await get_json(session, f"{u}/stats") for n, u in nodes.urls.items()}

            # How long a node takes to load its keys at start.
            nodes.stop("n1")
            nodes.start("n1")

            async def healthy() -> bool:
                return await get_json(session, f"{nodes.urls['n1']}/health") is not None
            await until(healthy, 60, "n1 to restart")
            restarted = await get_json(session, f"{nodes.urls['n1']}/stats")
        finally:
            nodes.stop_all()
            shutil.rmtree(root, ignore_errors=True)
    return {
        "keys": args.keys, "nodes": args.nodes, "seconds": round(elapsed, 1),
        "load_s": round(load_s, 1),
        "cpu_percent_of_a_core": {n: round(100 * used[n] / elapsed, 2) for n in used},
        "ae_rounds_so_far": {n: s["healing"]["ae_rounds"] for n, s in stats.items()},
        "held": {n: s["held"] for n, s in stats.items()},
        "rss_mb": rss,
        "restart_load_s": restarted["load_s"],
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--flag", action="append", help="an extra node flag, e.g. --flag=--hints=off")
    p.add_argument("--json", action="store_true")
    result = asyncio.run(main(p.parse_args()))
    if p.parse_args().json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
