#!/usr/bin/env python3
"""kvlab next to nginx under the same wrk load, against the speed goals.

In one run: nginx serving a small static file from a temp folder, a fresh 3-node kvlab cluster
(N=3, W=2) in a temp KVLAB_HOME, `kvlab bench --preload` to write the key space, then wrk at the
same connection count against nginx, `GET /get` with R=1 and R=2, and durable `POST /set` with
W=2; a table (or --json) of requests/s, ratio to nginx and p99 next to the goals.

Installs nothing. Needs Debian's `wrk` and `nginx-light` (`just bench` installs them if missing)
and kvlab importable by this Python. Everything it starts is stopped when it exits, Ctrl-C too.

nginx runs with `worker_processes auto`, access log off and keep-alive unlimited: the usual
production shape, so "fraction of nginx" means fraction of a well-tuned static server here.

  python scripts/bench_vs_nginx.py [--duration 10] [--connections 64] [--json] [--check]
  python scripts/bench_vs_nginx.py --nginx-only --ceiling   # no cluster; kvlab bench vs wrk
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from kvlab.cluster.ports import free_port_block

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_kvlab.lua"

# (run name, label, minimum ratio to nginx, maximum p99 ms); from the speed issue.
GOALS = {
    "get_r1": ("GET R=1", 0.25, 8.5),
    "get_r2": ("GET R=2", 0.15, 8.5),
    "set_w2": ("SET N=3 W=2", 0.08, 34.0),
}

NGINX_CONF = """\
worker_processes auto;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        # Canned answers in the shape of the Go-compatible API, so that `kvlab bench --api
        # compat` can be aimed at nginx to find the generator's own ceiling (--ceiling).
        location = /get {{ default_type application/json; return 200 '{{"value":"{value}"}}'; }}
        location = /set {{ return 200 'OK'; }}
    }}
}}
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the cleanups below stop nginx and the cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in ("wrk", "nginx"):
        if find_tool(tool) is None:
            print(f"bench_vs_nginx: {tool} not found; apt-get install -y wrk nginx-light",
                  file=sys.stderr)
            return 2
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as cleanup:
        tmp = Path(tempfile.mkdtemp(prefix="kvlab-bench-"))
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        nginx_url = start_nginx(tmp / "nginx", args.value_size, cleanup)
        results["nginx"] = wrk(args, nginx_url + "/small.txt", "static")
        if args.ceiling:
            results["ceiling"] = measure_ceiling(args, nginx_url)
        if not args.nginx_only:
            proxy = start_cluster(tmp / "kvlab", args, cleanup)
            preload(args, proxy)
            results["get_r1"] = wrk(args, proxy, "get", quorum=1)
            results["get_r2"] = wrk(args, proxy, "get", quorum=2)
            results["set_w2"] = wrk(args, proxy, "set", quorum=2)
    summary = summarise(results, args)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(render(summary))
    return 1 if args.check and not summary["goals_met"] else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    p.add_argument("--keys", type=int, default=10_000, help="key space to preload and read")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    p.add_argument("--nodes", type=int, default=3, help="cluster nodes (default 3)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    p.add_argument("--nginx-only", action="store_true", help="skip the kvlab cluster")
    p.add_argument("--ceiling", action="store_true",
                   help="also aim `kvlab bench --api compat` and wrk at nginx's canned /get and "
                   "/set, to show how fast the generator itself can go")
    return p.parse_args(argv)


def find_tool(name: str) -> str | None:
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def wait_http(url: str, timeout: float) -> None:
    """Return once `url` answers anything over HTTP; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after a short grace."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_nginx(root: Path, value_size: int, cleanup: contextlib.ExitStack) -> str:
    (root / "www").mkdir(parents=True)
    # nginx's workers drop root for an unprivileged user, who must be able to read the files.
    for folder in (root.parent, root, root / "www"):
        folder.chmod(0o755)
    (root / "www" / "small.txt").write_text("v" * value_size + "\n")
    port = free_port_block(1)
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=root, port=port, value="v" * value_size))
    proc = subprocess.Popen(
        [find_tool("nginx"), "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf),
         "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
    )
    cleanup.callback(stop_process, proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/small.txt", timeout=10)
    return url


def kvlab(*args: str, env: dict[str, str], timeout: float = 180) -> str:
    """Run a kvlab command; returns its stdout (its stderr, progress included, passes through)."""
    return subprocess.run(
        [sys.executable, "-m", "kvlab", *args], env=env, check=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, text=True, timeout=timeout,
    ).stdout


def start_cluster(home: Path, args: argparse.Namespace, cleanup: contextlib.ExitStack) -> str:
    env = {**os.environ, "KVLAB_HOME": str(home)}
    name = f"bench{os.getpid() % 1000:03d}"
    port = free_port_block(1 + args.nodes)  # the proxy's port, then one per node
    # Registered before `up` so that a half-started cluster is stopped as well.
    # Its report goes to stderr so that stdout stays one table or one JSON object.
    cleanup.callback(subprocess.run, [sys.executable, "-m", "kvlab", "down", "--name", name],
                     env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, timeout=60)
    kvlab("up", "--name", name, "--nodes", str(args.nodes), "--replicas", "3",
          "--write-quorum", "2", "--read-quorum", "2", "--port", str(port), env=env)
    return f"http://127.0.0.1:{port}"


def preload(args: argparse.Namespace, url: str) -> None:
    out = kvlab("bench", "--url", url, "--api", "compat", "--preload", "--requests", "0",
                "--keys", str(args.keys), "--value-size", str(args.value_size), "--w", "2",
                "--concurrency", str(args.connections), "--json", env=dict(os.environ))
    done = json.loads(out)["preload"]
    print(f"bench_vs_nginx: preloaded {done['keys']:,} keys in {done['duration_s']:.1f}s",
          file=sys.stderr)
    if done["errors"]:
        raise RuntimeError(f"preload failed {done['errors']:,} of {done['keys']:,} writes")


def wrk(args: argparse.Namespace, url: str, mode: str, quorum: int | None = None) -> dict:
    """One wrk run; returns requests/s, p50/p99/max in ms and wrk's error counts."""
    env = {**os.environ, "KVLAB_WRK_MODE": mode, "KVLAB_WRK_KEYS": str(args.keys),
           "KVLAB_WRK_VALUE_SIZE": str(args.value_size)}
    if quorum is not None:
        env["KVLAB_WRK_QUORUM"] = str(quorum)
    cmd = [find_tool("wrk"), f"-t{args.threads}", f"-c{args.connections}",
           f"-d{args.duration}s", "-s", str(WRK_SCRIPT), url]
    print(f"bench_vs_nginx: wrk {mode} {url} quorum={quorum}", file=sys.stderr)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=args.duration + 60).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result line:\n{out}")
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    return {
        "requests_per_sec": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "requests": raw["requests"],
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": raw["errors"],
    }


def measure_ceiling(args: argparse.Namespace, nginx_url: str) -> dict:
    """kvlab bench and wrk on the same canned nginx /get: how fast can each generator go."""
    bench = subprocess.run(
        [sys.executable, "-m", "kvlab", "bench", "--url", nginx_url, "--api", "compat",
         "--concurrency", str(args.connections), "--duration", str(args.duration),
         "--keys", str(args.keys), "--mix", "1:0", "--json", "--quiet"],
        check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=args.duration + 60,
    )
    report = json.loads(bench.stdout)
    return {
        "kvlab_bench_ops_per_sec": report["ops_per_sec"],
        "kvlab_bench_p99_ms": report["p99_ms"],
        "wrk_requests_per_sec": wrk(args, nginx_url, "get")["requests_per_sec"],
    }


def summarise(results: dict[str, dict], args: argparse.Namespace) -> dict:
    nginx_rps = results["nginx"]["requests_per_sec"]
    runs = {"nginx": {**results["nginx"], "label": "nginx static", "ratio": 1.0}}
    goals_met = True
    for name, (label, min_ratio, max_p99) in GOALS.items():
        if name not in results:
            continue
        run = results[name]
        ratio = run["requests_per_sec"] / nginx_rps if nginx_rps else 0.0
        met = ratio >= min_ratio and run["p99_ms"] <= max_p99
        goals_met &= met
        runs[name] = {**run, "label": label, "ratio": round(ratio, 3),
                      "goal_ratio": min_ratio, "goal_p99_ms": max_p99, "met": met}
    summary = {
        "runs": runs,
        "goals_met": goals_met and len(runs) == len(GOALS) + 1,
        "settings": {"duration_s": args.duration, "connections": args.connections,
                     "threads": args.threads, "keys": args.keys, "value_size": args.value_size,
                     "nodes": args.nodes},
    }
    if "ceiling" in results:
        summary["ceiling"] = results["ceiling"]
    return summary


def render(summary: dict) -> str:
    s = summary["settings"]
    lines = [
        f"wrk -t{s['threads']} -c{s['connections']} -d{s['duration_s']}s, "
        f"{s['keys']:,} keys of {s['value_size']} bytes, {s['nodes']} nodes",
        f"{'run':<14}{'req/s':>10}{'x nginx':>9}{'goal':>8}{'p99 ms':>9}{'goal':>8}"
        f"{'errors':>8}  ",
    ]
    for run in summary["runs"].values():
        errors = sum(run["errors"].values())
        goal_ratio = f">={run['goal_ratio']}" if "goal_ratio" in run else ""
        goal_p99 = f"<={run['goal_p99_ms']}" if "goal_p99_ms" in run else ""
        verdict = "" if "met" not in run else ("ok" if run["met"] else "MISSED")
        lines.append(
            f"{run['label']:<14}{run['requests_per_sec']:>10,.0f}{run['ratio']:>9.3f}"
            f"{goal_ratio:>8}{run['p99_ms']:>9.2f}{goal_p99:>8}{errors:>8}  {verdict}"
        )
    if "ceiling" in summary:
        c = summary["ceiling"]
        lines.append(
            f"generator ceiling on nginx's canned /get: kvlab bench "
            f"{c['kvlab_bench_ops_per_sec']:,.0f} ops/s (p99 {c['kvlab_bench_p99_ms']:.2f} ms), "
            f"wrk {c['wrk_requests_per_sec']:,.0f} req/s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
