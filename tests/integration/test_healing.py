"""Self-healing on real processes: hinted handoff, anti-entropy, safe tombstone purge, a
proxy clock that never goes back, sloppy quorums.

Each test starts its own cluster (fresh ports, the test's $KVLAB_HOME) and stops it after.
The two refill tests print their figures (run with -s to see them); the acceptance sizes:
  KVLAB_HANDOFF_KEYS=5000 KVLAB_REFILL_KEYS=10000 KVLAB_VALUE_BYTES=100 \
      python -m pytest -s -k "handoff or wipe" tests/integration/test_healing.py
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest

from kvlab.client import KV, AsyncKV, Result, Unavailable
from kvlab.client.protocol import ReplicaCopy
from kvlab.cluster.process import wait_until
from kvlab.cluster.supervisor import Cluster
from kvlab.core.ring import Ring
from tests.cluster_helpers import auth, eventually, real_cluster

HANDOFF_KEYS = int(os.environ.get("KVLAB_HANDOFF_KEYS", "1000"))
REFILL_KEYS = int(os.environ.get("KVLAB_REFILL_KEYS", "2000"))
VALUE_BYTES = int(os.environ.get("KVLAB_VALUE_BYTES", "12"))  # of each refilled value


# -- helpers ----------------------------------------------------------------------------


async def _write_all(url: str, items: dict[str, str], w: int | None = None,
                     concurrency: int = 32) -> dict[str, Result]:
    """Write every key (several at once); every write must be acknowledged."""
    results: dict[str, Result] = {}
    queue = list(items.items())

    async def worker(kv: AsyncKV) -> None:
        while queue:
            key, value = queue.pop()
            results[key] = await kv.set(key, value, w=w)

    async with AsyncKV(url, timeout=10) as kv:
        await asyncio.gather(*(worker(kv) for _ in range(concurrency)))
    return results


def write_all(cluster: Cluster, items: dict[str, str], w: int | None = None
              ) -> dict[str, Result]:
    return asyncio.run(_write_all(cluster.url, items, w))


def node_stats(cluster: Cluster, name: str) -> dict | None:
    url = cluster.node(name).url(cluster.spec.host)
    try:
        request = urllib.request.Request(f"{url}/stats", headers=auth(cluster))
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def live_keys(cluster: Cluster, name: str) -> int:
    return (node_stats(cluster, name) or {}).get("keys", -1)


def copies(kv: KV, key: str) -> dict[str, ReplicaCopy]:
    """Each replica's own copy of `key` (the proxy asks each; nothing is repaired)."""
    return {r.node: r for r in kv.inspect(key).replicas}


def not_current_on(kv: KV, node: str, written: dict[str, Result]) -> list[str]:
    return [k for k, r in written.items() if copies(kv, k)[node].version != r.version]


def healing_of(cluster: Cluster, name: str) -> dict:
    stats = node_stats(cluster, name)
    assert stats is not None, f"{name} does not answer /stats"
    return stats["healing"]


def http(url: str, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def report(text: str) -> None:
    print(f"\n[healing] {text}")


# -- (a) hinted handoff -------------------------------------------------------------------


@pytest.mark.slow
def test_hinted_handoff_brings_a_restarted_node_current_without_any_read(kvlab_home):
    """n1 is down while keys are written; restarted, it holds every key it replicates
    within 10 s, with no client read (anti-entropy is off: this is the hints' doing)."""
    with real_cluster(nodes=5, anti_entropy=False) as cluster:
        cluster.kill("n1")
        written = write_all(cluster, {f"handoff-{i}": f"v{i}" for i in range(HANDOFF_KEYS)})
        mine = {k: r for k, r in written.items() if "n1" in r.replicas}
        assert mine and all("n1" not in r.acked for r in mine.values())

        began = time.monotonic()
        cluster.restart("n1")
        ready = time.monotonic()
        eventually(lambda: live_keys(cluster, "n1") >= len(mine), 10 - (ready - began),
                   f"n1 to hold its {len(mine)} keys")
        took = time.monotonic() - began
        with KV(cluster.url) as kv:
            assert not_current_on(kv, "n1", mine) == []
        healing = healing_of(cluster, "n1")
        assert healing["repaired"]["hint"] == len(mine)
        replayed = sum(healing_of(cluster, n)["hints_replayed"] for n in ("n2", "n3", "n4",
                                                                         "n5"))
        assert replayed >= len(mine)
        report(f"hinted handoff: {len(written)} keys written with n1 down, {len(mine)} of "
               f"them n1's; all current on n1 {took:.2f} s after `restart n1` began "
               f"({ready - began:.2f} s of it starting up); {replayed} hints replayed")


# -- (b) anti-entropy ---------------------------------------------------------------------


@pytest.mark.slow
def test_anti_entropy_refills_a_wiped_node(kvlab_home):
    """n2 loses its disk: anti-entropy gives it back every key it replicates, within 60 s."""
    with real_cluster(nodes=5) as cluster:
        written = write_all(cluster, {f"refill-{i}": f"value {i:06d}".ljust(VALUE_BYTES, ".")
                                      for i in range(REFILL_KEYS)}, w=3)
        mine = {k: r for k, r in written.items() if "n2" in r.replicas}
        assert live_keys(cluster, "n2") == len(mine)

        began = time.monotonic()
        cluster.wipe("n2")
        ready = time.monotonic()
        eventually(lambda: live_keys(cluster, "n2") >= len(mine), 60 - (ready - began),
                   f"anti-entropy to refill n2's {len(mine)} keys")
        took = time.monotonic() - began
        with KV(cluster.url) as kv:
            assert not_current_on(kv, "n2", mine) == []
        healing = healing_of(cluster, "n2")
        assert healing["repaired"]["anti_entropy"] >= len(mine)
        assert healing["repaired"]["hint"] == 0 and healing["repaired"]["read_repair"] == 0
        moved = sum(healing_of(cluster, n)["repair_bytes"] for n in cluster.spec.node_names())
        report(f"anti-entropy: n2 wiped, its {len(mine)} keys (of {len(written)}) back in "
               f"{took:.2f} s after `wipe n2` began ({ready - began:.2f} s of it restarting); "
               f"{healing['repair_bytes']:,} bytes repaired into n2, {moved:,} in all, in "
               f"{sum(healing_of(cluster, n)['ae_rounds'] for n in cluster.spec.node_names())}"
               f" anti-entropy rounds")


# -- (c) tombstones ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_delete_missed_by_a_replica_never_comes_back(kvlab_home):
    """n1 misses deletes and stays down past the grace (1 s) and the hint window (1 s): the
    others keep their tombstones (n1 has not confirmed them), n1 comes back with the old
    values, and the tombstones win; only then are they purged, everywhere."""
    with real_cluster(nodes=5, tombstone_grace_s=1, hint_window_s=1, max_clock_ahead_s=1,
                      anti_entropy_s=0.5) as cluster:
        ring = Ring(tuple(cluster.spec.node_names()), cluster.spec.vnodes)
        keys = [k for k in (f"gone-{i}" for i in range(200))
                if "n1" in ring.preference_list(k, 3)][:30]
        write_all(cluster, {k: "alive" for k in keys}, w=3)
        cluster.kill("n1")
        with KV(cluster.url) as kv:
            for key in keys:
                kv.delete(key)
        deleted = time.monotonic()
        others = ("n2", "n3", "n4", "n5")

        def expired() -> int:
            return sum(healing_of(cluster, n)["hints_expired"] for n in others)

        eventually(lambda: expired() >= len(keys), 15, "n1's hints to expire")
        # Past the purge age (grace, and hint window + clock bound: 2 s) and a few more
        # anti-entropy rounds: still no purge, since n1 could not confirm.
        rounds = sum(healing_of(cluster, n)["ae_rounds"] for n in others)
        eventually(lambda: time.monotonic() - deleted > 3 and sum(
            healing_of(cluster, n)["ae_rounds"] for n in others) > rounds + 8, 15,
            "the purge age to pass")
        assert sum(healing_of(cluster, n)["purged"] for n in others) == 0
        with KV(cluster.url) as kv:
            for key in keys:
                held = [c for n, c in copies(kv, key).items() if n != "n1"]
                assert all(c.state == "ok" and c.deleted for c in held), (key, held)

            cluster.restart("n1")  # with the values it missed the deletes of

            def all_purged() -> bool:
                views = [copies(kv, key) for key in keys]
                for view in views:  # never alive anywhere but on n1 before its repair
                    assert not [n for n, c in view.items()
                                if n != "n1" and c.value is not None], view
                return all(c.state == "missing" for v in views for c in v.values())

            eventually(all_purged, 30, "the tombstones to reach n1 and then be purged")
            # A few more rounds: nothing comes back from anywhere.
            rounds = sum(healing_of(cluster, n)["ae_rounds"] for n in cluster.spec.node_names())
            eventually(lambda: sum(healing_of(cluster, n)["ae_rounds"]
                                   for n in cluster.spec.node_names()) > rounds + 10, 15,
                       "more anti-entropy rounds")
            assert all_purged()
            assert all(kv.get(key, r=3) is None for key in keys)
        # The tombstones reached n1 by anti-entropy (its hints had expired), over old values.
        assert healing_of(cluster, "n1")["repaired"]["anti_entropy"] >= len(keys)


# -- (d) the proxy's clock -----------------------------------------------------------------


def test_a_proxy_restarted_with_its_clock_behind_loses_no_acknowledged_write(kvlab_home):
    with real_cluster(nodes=5) as cluster:
        keys = [f"clock-{i}" for i in range(100)]
        acked: dict[str, str] = {}

        def write_round(tag: str) -> None:
            with KV(cluster.url) as kv:
                for key in keys:
                    kv.set(key, f"{key}={tag}")
                    acked[key] = f"{key}={tag}"

        def check() -> None:
            with KV(cluster.url) as kv:
                lost = [k for k in keys if kv.get(k) != acked[k]]
            assert lost == [], f"acknowledged writes lost: {lost[:5]}"

        write_round("before")
        for offset_ms, tag in ((-5_000, "5s behind"), (-3_600_000, "1h behind")):
            cluster.restart_proxy(offset_ms)
            write_round(tag)
            check()
        # SIGKILL: no clean save of the clock; the lease saved a second ago covers it.
        proxy = cluster.proxy.proc
        assert proxy is not None and proxy.signal(signal.SIGKILL)
        assert wait_until(lambda: not proxy.alive(), 5)
        cluster.restart_proxy(-3_600_000)
        write_round("killed, 1h behind")
        check()
        view = json.loads(http(f"{cluster.url}/cluster")[2])["proxy"]
        assert view["clock_offset_ms"] == -3_600_000

        # Without the saved clock an hour behind is past the clock bound: a write to a key
        # holding a newer version can't be re-stamped above it, so it fails, never lies.
        cluster.proxy.proc.stop()
        (cluster.dir / "proxy" / "clock.json").unlink()
        cluster.restart_proxy(-3_600_000)
        with KV(cluster.url) as kv:
            with pytest.raises(Unavailable) as refused:
                kv.set(keys[0], "lost?")
            assert "superseded" in str(refused.value.details.get("failed"))
        check()


# -- (e) sloppy quorums --------------------------------------------------------------------


def _key_with_replicas(cluster: Cluster) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """A key, its preference list and its fallbacks."""
    ring = Ring(tuple(cluster.spec.node_names()), cluster.spec.vnodes)
    everyone = ring.preference_list("sloppy", 5)
    return "sloppy", everyone[:3], everyone[3:]


def test_sloppy_writes_succeed_with_two_of_three_replicas_down(kvlab_home):
    with real_cluster(nodes=5) as cluster:
        key, (a, b, c), (f1, f2) = _key_with_replicas(cluster)
        cluster.kill(b)
        cluster.kill(c)
        url = cluster.url
        # Strict (the default): one acknowledgement of W=2, so 503, whatever the hints.
        status, _, body = http(f"{url}/kv/{key}", "PUT", b"strict")
        assert status == 503 and json.loads(body)["error"] == "unavailable"
        # Sloppy: a hint on a fallback stands in for a missing replica.
        status, headers, body = http(f"{url}/kv/{key}?sloppy=1", "PUT", b"sloppy")
        assert status == 200, body
        answer = json.loads(body)
        # W=2 from whichever answered first: a, and the fallbacks standing in for b and c.
        hinted = answer["hinted"]
        assert set(answer["acked"]) <= {a} and len(answer["acked"]) + len(hinted) == 2
        assert set(hinted) <= {b, c} and set(hinted.values()) <= {f1, f2}
        assert len(set(hinted.values())) == len(hinted)  # one fallback per missing replica
        assert headers["X-Kvlab-Hinted"] == ",".join(f"{p}={f}" for p, f in hinted.items())
        # Every write route takes it, the Go-compatible ones too.
        body = json.dumps({"key": key, "value": "via set"}).encode()
        assert http(f"{url}/set", "POST", body)[0] == 503
        status, headers, _ = http(f"{url}/set?sloppy=1", "POST", body)
        assert status == 200 and "X-Kvlab-Hinted" in headers
        with KV(url) as kv:
            assert kv.set(key, "client", sloppy=True).hinted
            with pytest.raises(Unavailable):
                kv.set(key, "client", sloppy=False)
        assert http(f"{url}/kv/{key}?sloppy=maybe", "PUT", b"x")[0] == 400

        # Back up: the hints are handed over, and the primaries hold the last sloppy write.
        cluster.restart(b)
        cluster.restart(c)
        with KV(url) as kv:
            eventually(lambda: all(copies(kv, key)[n].value == "client" for n in (a, b, c)),
                       10, "the hints to reach the primaries")
            status, headers, _ = http(f"{url}/delete?key={key}&sloppy=1", "DELETE")
            assert status == 200 and "X-Kvlab-Hinted" not in headers  # nobody missed it
            assert kv.get(key) is None


def test_a_sloppy_cluster_takes_sloppy_writes_by_default(kvlab_home):
    with real_cluster(nodes=5, sloppy=True) as cluster:
        key, (a, b, c), _ = _key_with_replicas(cluster)
        cluster.kill(b)
        cluster.kill(c)
        with KV(cluster.url) as kv:
            hinted = kv.set(key, "v").hinted
            assert hinted and set(hinted) <= {b, c}
            with pytest.raises(Unavailable):
                kv.set(key, "v", sloppy=False)
        cluster_view = json.loads(http(f"{cluster.url}/cluster")[2])
        assert cluster_view["sloppy"] is True and cluster_view["proxy"]["hints_sent"] >= 2
