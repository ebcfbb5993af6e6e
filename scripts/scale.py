#!/usr/bin/env python3
"""kvlab with a million keys: `just bench`'s GET and SET at 10,000 keys and at --keys keys,
a node's restart to healthy, and each node's memory and disk, in one run.

1. Two fresh 3-node clusters (N=3, R=2, W=2) in a temp KVLAB_HOME, each with its first
   10,000 keys written through the API (`kvlab bench --preload`, as `just bench` does).
2. The second one stopped, and the rest of its key space (key-10000 .. key-(N-1)) written
   straight into each replica's SQLite through kvlab's own store (`SqliteStore.write`,
   the Persist a replica would make), each record on exactly the nodes of its key's
   preference list, stamped as the proxy stamps (a version above every one it issued). A
   million writes through the API take minutes; this takes seconds, and what each node
   then holds is what it would hold after them (one version per key, no hints). Then it is
   started again (`kvlab up`, timed: every row is read, as after a crash).
3. --rounds rounds of wrk (scripts/bench_vs_nginx.py's GET R=1, GET R=2, SET W=2), each run
   on the small cluster then on the large one, so that both see the same host load; the
   medians are compared. Each cluster gets a short unmeasured GET run first.
4. `kvlab restart n1` on the large cluster, timed (--restarts times, each after one on the
   small cluster, for comparison; the command returns once the node answers /health and
   the proxy's link to it is up), and once more after
   `kvlab kill n1` (a crash: no index kept, every row read); each node's RSS
   (/proc/PID/status) and disk (its folder).

  python scripts/scale.py [--keys 1000000] [--rounds 3] [--duration 5] [--json]

Needs Debian's `wrk`. Everything it starts is stopped when it exits, Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import bench_vs_nginx as bench

from kvlab.cluster.ports import free_port_block
from kvlab.core.messages import Persist
from kvlab.core.record import Record
from kvlab.core.ring import Ring
from kvlab.core.version import Version
from kvlab.storage.sqlite import SqliteStore

SMALL = 10_000  # the key space `just bench` uses by default
BATCH = 50_000  # records per transaction when writing a store directly
RUNS = {"get_r1": ("GET R=1", "get", 1), "get_r2": ("GET R=2", "get", 2),
        "set_w2": ("SET W=2", "set", 2)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: cleanups run
    if bench.find_tool("wrk") is None:
        print("scale: wrk not found; apt-get install -y wrk", file=sys.stderr)
        return 2
    report: dict = {"settings": {"keys": args.keys, "value_size": args.value_size,
                                 "duration_s": args.duration, "rounds": args.rounds,
                                 "connections": args.connections, "threads": args.threads,
                                 "nodes": 3}}
    with contextlib.ExitStack() as cleanup:
        home = Path(tempfile.mkdtemp(prefix="kvlab-scale-"))
        cleanup.callback(shutil.rmtree, home, ignore_errors=True)
        env = {**os.environ, "KVLAB_HOME": str(home)}
        small = argparse.Namespace(**{**vars(args), "keys": SMALL})
        urls = {}
        for name in ("small", "large"):
            urls[name] = up(home, name, cleanup, env)
            bench.preload(small, urls[name])
        bench.kvlab("down", "--name", "large", env=env)
        began = time.perf_counter()
        written = write_stores(home / "large", args.keys, args.value_size)
        report["preload"] = {"records": written,
                             "duration_s": round(time.perf_counter() - began, 1),
                             "how": "SqliteStore.write per replica, preference lists"}
        log(f"wrote {written:,} records into the stores in {report['preload']['duration_s']}s")
        began = time.perf_counter()
        bench.kvlab("up", "--name", "large", env=env)
        report["up_s"] = round(time.perf_counter() - began, 2)

        spaces = {"small": small, "large": args}
        for name, space in spaces.items():  # warm-up, unmeasured
            bench.wrk(argparse.Namespace(**{**vars(space), "duration": 2}), urls[name], "get", 1)
        rounds: dict[str, dict[str, list[dict]]] = {n: {r: [] for r in RUNS} for n in spaces}
        for _ in range(args.rounds):
            for run, (_, mode, quorum) in RUNS.items():
                for name, space in spaces.items():
                    rounds[name][run].append(bench.wrk(space, urls[name], mode, quorum))
        for name, space in spaces.items():
            report[name] = {"keys": space.keys, "runs": {
                run: {"requests_per_sec": statistics.median(r["requests_per_sec"] for r in rs),
                      "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                      "all_requests_per_sec": [r["requests_per_sec"] for r in rs],
                      "errors": sum(sum(r["errors"].values()) for r in rs)}
                for run, rs in rounds[name].items()}, "nodes": nodes(home / name)}

        report["restart_n1"], report["restart_n1_small"] = [], []
        for _ in range(args.restarts):  # alternately, under the same host load
            report["restart_n1_small"].append(restart(home / "small", env))
            report["restart_n1"].append(restart(home / "large", env))
        report["after_restart"] = nodes(home / "large")
        bench.kvlab("kill", "n1", "--name", "large", env=env)
        report["restart_n1_after_kill"] = restart(home / "large", env)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def up(home: Path, name: str, cleanup: contextlib.ExitStack, env: dict[str, str]) -> str:
    port = free_port_block(4)
    cleanup.callback(subprocess.run, [sys.executable, "-m", "kvlab", "down", "--name", name],
                     env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, timeout=60)
    bench.kvlab("up", "--name", name, "--nodes", "3", "--replicas", "3", "--write-quorum", "2",
                "--read-quorum", "2", "--port", str(port), env=env)
    return f"http://127.0.0.1:{port}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=1_000_000, help="the large key space")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="wrk runs of each kind per key space")
    p.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    p.add_argument("--restarts", type=int, default=3, help="times to restart n1 (default 3)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    if args.keys <= SMALL:
        p.error(f"--keys must be more than {SMALL:,}")
    return args


def log(text: str) -> None:
    print(f"scale: {text}", file=sys.stderr, flush=True)


def restart(folder: Path, env: dict[str, str]) -> dict:
    """`kvlab restart n1`, timed, and how the node says it loaded."""
    began = time.perf_counter()
    bench.kvlab("restart", "n1", "--name", folder.name, env=env)
    took = time.perf_counter() - began
    data = cluster_json(folder)
    node = next(n for n in data["nodes"] if n["name"] == "n1")
    request = urllib.request.Request(f"http://127.0.0.1:{node['port']}/stats")
    if data.get("secret"):  # a node's own routes but /health and /metrics need it
        request.add_header("Authorization", f"Bearer {data['secret']}")
    with urllib.request.urlopen(request, timeout=5) as answer:
        stats = json.loads(answer.read())
    return {"s": round(took, 2), "node_s": round(serving_after(node["pid"], stats), 2),
            "load_s": stats["load_s"], "indexed": stats.get("indexed"), "keys": stats["held"]}


def serving_after(pid: int, stats: dict) -> float:
    """Seconds from the node's process start (/proc) to its replica loaded (`uptime_s`
    counts from then): Python's start, imports, opening the store, the load."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - stats["uptime_s"] - started


def cluster_json(folder: Path) -> dict:
    return json.loads((folder / "cluster.json").read_text())


def nodes(folder: Path) -> dict[str, dict]:
    """Each node's resident memory (MB; of it, the database's pages mapped from the page
    cache: `file_mb`) and the size of its folder (MB)."""
    out = {}
    for node in cluster_json(folder)["nodes"]:
        kb = {"VmRSS": 0, "RssFile": 0}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{node['pid']}/status").read_text().splitlines():
                field, _, rest = line.partition(":")
                if field in kb:
                    kb[field] = int(rest.split()[0])
        disk = sum(f.stat().st_size for f in (folder / node["name"]).iterdir()
                   if f.is_file())
        out[node["name"]] = {"rss_mb": round(kb["VmRSS"] / 1024, 1),
                             "file_mb": round(kb["RssFile"] / 1024, 1),
                             "disk_mb": round(disk / 1e6, 1)}
    return out


def write_stores(folder: Path, keys: int, value_size: int) -> int:
    """key-SMALL .. key-(keys-1) into the stores of the nodes that replicate each."""
    data = cluster_json(folder)
    spec = data["spec"]
    names = [n["name"] for n in data["nodes"]]
    ring = Ring(tuple(names), spec["vnodes"])
    # Above every version the proxy issued (it saved its high-water mark when it stopped),
    # and below its clock once it starts again: the proxy's own name, as its stamps carry.
    stamp = Version(time.time_ns() // 1_000_000, 0, data["proxy"]["name"])
    rng = random.Random(1)
    values = [("".join(rng.choices(string.ascii_letters, k=value_size))).encode()
              for _ in range(8)]
    stores = {name: SqliteStore(folder / name / "data.db", durable=False)
              for name in names}
    written = 0

    async def write() -> None:
        nonlocal written
        for start in range(SMALL, keys, BATCH):
            batches: dict[str, list[Record]] = {name: [] for name in names}
            for i in range(start, min(start + BATCH, keys)):
                key = f"key-{i}"
                record = Record(key, values[i % len(values)], stamp)
                for name in ring.preference_list(key, spec["replicas"]):
                    batches[name].append(record)
            await asyncio.gather(*(stores[name].write(Persist(0, batch, [], [], []))
                                   for name, batch in batches.items()))
            written += sum(len(batch) for batch in batches.values())

    try:
        asyncio.run(write())
    finally:
        for store in stores.values():
            store.close()
    return written


def render(report: dict) -> str:
    s, small, large = report["settings"], report["small"], report["large"]
    few, many = f"{small['keys']:,} keys", f"{large['keys']:,} keys"
    lines = [f"wrk -t{s['threads']} -c{s['connections']} -d{s['duration_s']}s, medians of "
             f"{s['rounds']} interleaved runs, values of {s['value_size']} bytes, 3 nodes (N=3)",
             f"{'run':<10}{few:>14}{many:>16}{'change':>9}{'p99 ms':>16}"]
    for run, (label, _, _) in RUNS.items():
        a, b = small["runs"][run], large["runs"][run]
        change = b["requests_per_sec"] / a["requests_per_sec"] - 1
        lines.append(f"{label:<10}{a['requests_per_sec']:>14,.0f}{b['requests_per_sec']:>16,.0f}"
                     f"{change:>+9.1%}{a['p99_ms']:>9.2f} / {b['p99_ms']:<6.2f}")
    lines.append(f"{report['preload']['records']:,} records written into the stores in "
                 f"{report['preload']['duration_s']}s; kvlab up with them in {report['up_s']}s")
    for title, key in ((many, "restart_n1"), (few, "restart_n1_small")):
        lines.append(f"kvlab restart n1 to healthy, {title}: " + ", ".join(
            f"{r['s']:.2f}s (process start to loaded {r['node_s']:.2f}s, of it the load "
            f"{r['load_s']:.2f}s{', index' if r['indexed'] else ''})" for r in report[key]))
    crash = report["restart_n1_after_kill"]
    lines.append(f"after kvlab kill n1: {crash['s']:.2f}s (process start to loaded "
                 f"{crash['node_s']:.2f}s, of it the load {crash['load_s']:.2f}s, "
                 f"{'index' if crash['indexed'] else 'every row read'})")
    for title, view in ((few, small["nodes"]), (many, large["nodes"]),
                        ("after the restarts", report["after_restart"])):
        lines.append(f"{title}: " + ", ".join(
            f"{n} RSS {v['rss_mb']:.0f} MB ({v['file_mb']:.0f} file-backed) disk "
            f"{v['disk_mb']:.0f} MB" for n, v in view.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
