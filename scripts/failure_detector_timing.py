"""How long the failure detector takes to hold a paused node down, and to take it back.

A fresh 3-node cluster in a temporary $KVLAB_HOME. One node is SIGSTOPped; the proxy's
`GET /cluster` is polled until it reports the node `suspect`, then `down`, and each time is
printed from the signal. Then reads that need the node (R=3) and reads that don't (R=2) are
timed: once it is down, the first fail at once (503) and the second succeed. Finally the
node is SIGCONTed and the time until it is `up` again is printed.

    python scripts/failure_detector_timing.py [--rounds 3]

The first poll after the pause can take up to 0.5 s (the proxy asks the node for its
counters while it still believes it up), so `suspect` is seen a little later than the
~0.7 s of silence it takes; `down` (phi 8, ~1.85 s at 100 ms heartbeats) is not affected.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request

from kvlab.cluster import supervisor
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.spec import ClusterSpec

NODE = "n2"
KEYS = 30


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _health(url: str) -> str:
    return _get(f"{url}/cluster")["membership"]["nodes"][NODE]["health"]


def _timed_read(url: str, key: str, r: int) -> tuple[int, float]:
    began = time.monotonic()
    try:
        urllib.request.urlopen(f"{url}/get?key={key}&r={r}", timeout=5).close()
        status = 200
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, (time.monotonic() - began) * 1000


def _round(cluster: supervisor.Cluster) -> None:
    url, pid = cluster.url, cluster.node(NODE).proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        began, seen = time.monotonic(), {}
        while "down" not in seen:
            if time.monotonic() - began > 10:
                raise SystemExit(f"{NODE} not held down 10 s after SIGSTOP")
            seen.setdefault(_health(url), round((time.monotonic() - began) * 1000))
            time.sleep(0.02)
        r3 = [_timed_read(url, f"k{i}", 3) for i in range(3)]
        r2 = [_timed_read(url, f"k{i}", 2) for i in range(3)]
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    while _health(url) != "up":
        if time.monotonic() - resumed > 10:
            raise SystemExit(f"{NODE} not up 10 s after SIGCONT")
        time.sleep(0.005)
    up_ms = (time.monotonic() - resumed) * 1000
    print(f"SIGSTOP {NODE}: suspect seen at {seen.get('suspect', '-')} ms, down at "
          f"{seen['down']} ms; then R=3 reads "
          f"{', '.join(f'{s} in {ms:.1f} ms' for s, ms in r3)}; R=2 reads "
          f"{', '.join(f'{s} in {ms:.1f} ms' for s, ms in r2)}; SIGCONT: up after "
          f"{up_ms:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="pauses to time (default: 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kvlab-detector-") as home:
        os.environ["KVLAB_HOME"] = home
        spec = ClusterSpec(name="detector", nodes=3, port=free_port_block(4),
                           durability="none")
        with supervisor.running(spec) as cluster:
            for i in range(KEYS):
                body = json.dumps({"key": f"k{i}", "value": "v"}).encode()
                urllib.request.urlopen(urllib.request.Request(
                    f"{cluster.url}/set", data=body, method="POST"), timeout=5).close()
            for _ in range(args.rounds):
                _round(cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
