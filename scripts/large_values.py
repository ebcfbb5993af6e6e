#!/usr/bin/env python3
"""Goodput of 1 MiB writes as the number of concurrent clients grows, on a real cluster.

Starts its own 3-node cluster (N=3, W=2, fsync on) in a temp KVLAB_HOME, and for each
client count runs that many concurrent clients, each writing 1 MiB values (`PUT /kv/{key}`)
one after the other for `--duration` seconds. A client answered `503 overloaded` waits its
`Retry-After` before the next write, as a polite client does. Then a table: writes that
succeeded, goodput (MB/s of values acknowledged, MB = 10^6 bytes), 503 overloaded answers,
timeouts and other errors, p50/p99 latency of the successes, link resets (proxy->node
sockets that broke, from `/cluster`) and the proxy's peak RSS during the run. A sample of
the values written is read back and compared.

  python scripts/large_values.py [--clients 1,10,30,100,300] [--duration 8] [--json]

The load generator runs in this process, on the same cores as the cluster. Everything it
starts is stopped when it exits, Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from kvlab.cluster.ports import free_port_block

VALUE_SIZE = 1024 * 1024
CLIENT_TIMEOUT_S = 30.0  # far past the proxy's own deadline: its answer is what we count
READ_BACK = 20  # values read back per client count


def kvlab(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "kvlab", *args], env=env, check=True,
                   stdin=subprocess.DEVNULL, stdout=sys.stderr, timeout=120)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def link_breaks(session: aiohttp.ClientSession, url: str) -> int:
    """Sockets from the proxy to the nodes that broke so far (each counts one error)."""
    async with session.get(f"{url}/cluster") as response:
        view = await response.json()
    return sum(node["errors"] for node in view["nodes"])


async def run_level(session: aiohttp.ClientSession, url: str, clients: int,
                    duration: float, pid: int, value: bytes) -> dict:
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration
    latencies: list[float] = []
    counts = {"overloaded": 0, "timeout": 0, "other": 0}
    written: list[str] = []
    before = await link_breaks(session, url)

    async def client(c: int) -> None:
        i = 0
        while loop.time() < stop_at:
            key = f"lv-{clients}-{c}-{i}"
            i += 1
            started = loop.time()
            try:
                async with session.put(f"{url}/kv/{key}", data=value) as response:
                    await response.read()
                    status = response.status
                    retry = response.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                counts["other"] += 1
                continue
            if status == 200:
                latencies.append(loop.time() - started)
                written.append(key)
            elif status == 503 and retry is not None:
                counts["overloaded"] += 1
                await asyncio.sleep(min(float(retry), max(0.0, stop_at - loop.time())))
            elif status == 504:
                counts["timeout"] += 1
            else:
                counts["other"] += 1

    peak = rss_mb(pid)

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.05)

    sampler = loop.create_task(sample())
    started = loop.time()
    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = loop.time() - started
    sampler.cancel()
    resets = await link_breaks(session, url) - before
    verified = 0
    for key in random.sample(written, min(READ_BACK, len(written))):
        async with session.get(f"{url}/kv/{key}") as response:
            verified += response.status == 200 and await response.read() == value
    ordered = sorted(latencies)

    def pct(p: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 1) \
            if ordered else None

    return {
        "clients": clients, "ok": len(latencies),
        # The clients still waiting at the end finish after `duration`: divide by the time
        # it really took.
        "mb_per_s": round(len(latencies) * len(value) / 1e6 / elapsed, 1),
        "overloaded": counts["overloaded"], "timeouts": counts["timeout"],
        "other": counts["other"], "p50_ms": pct(0.50), "p99_ms": pct(0.99),
        "link_resets": resets, "proxy_peak_rss_mb": round(peak),
        "read_back": f"{verified}/{min(READ_BACK, len(written))}",
    }


def render(rows: list[dict]) -> str:
    head = ("clients", "ok", "MB/s", "503 overl.", "timeout/other", "p50 ms", "p99 ms",
            "link resets", "proxy RSS MB", "read back")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join(str(x) for x in (
            r["clients"], r["ok"], r["mb_per_s"], r["overloaded"],
            f"{r['timeouts']}/{r['other']}", r["p50_ms"], r["p99_ms"], r["link_resets"],
            r["proxy_peak_rss_mb"], r["read_back"])))
    return "\n".join(lines)


async def measure(url: str, levels: list[int], duration: float) -> list[dict]:
    value = random.Random(11).randbytes(VALUE_SIZE)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with session.get(f"{url}/health") as response:
            pid = (await response.json())["pid"]
        rows = []
        for clients in levels:
            rows.append(await run_level(session, url, clients, duration, pid, value))
            print(render(rows[-1:]).splitlines()[-1], file=sys.stderr)
        return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,10,30,100,300",
                   help="comma-separated client counts (default: %(default)s)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per client count")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="kvlab-large-") as tmp, \
            contextlib.ExitStack() as cleanup:
        env = {**os.environ, "KVLAB_HOME": str(Path(tmp) / "kvlab")}
        port = free_port_block(4)
        name = f"large{os.getpid() % 1000:03d}"
        cleanup.callback(subprocess.run, [sys.executable, "-m", "kvlab", "down", "--name",
                                          name], env=env, stdin=subprocess.DEVNULL,
                         stdout=sys.stderr, timeout=60)
        kvlab("up", "--name", name, "--nodes", "3", "--replicas", "3", "--write-quorum", "2",
              "--port", str(port), env=env)
        started = time.monotonic()
        rows = asyncio.run(measure(f"http://127.0.0.1:{port}", levels, args.duration))
        print(f"large_values: {time.monotonic() - started:.0f}s of load", file=sys.stderr)
    print(json.dumps(rows, indent=2) if args.json else render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
