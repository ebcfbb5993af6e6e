"""Self-healing on the simulator: hinted handoff, anti-entropy, tombstones, clocks, sloppy
quorums, and the processes and network they run on. Every healing step comes from the
core `Replica`; these tests watch the simulated cluster converge without client reads."""

from __future__ import annotations

import pytest

from kvlab.chaos.checker import check
from kvlab.chaos.history import Recorder
from kvlab.core.messages import NOT_FOUND, OK, TIMEOUT, UNAVAILABLE, Outcome
from kvlab.sim import Latency, World, WorldConfig
from kvlab.sim.network import RESET

STEADY = Latency(base_us=200, jitter_us=0)
KEYS = [f"k{i}" for i in range(60)]


def world(**config: object) -> World:
    settings = {"nodes": 5, "latency": STEADY, "fsync": Latency(500, 0)} | config
    return World(WorldConfig(**settings), seed=1)  # type: ignore[arg-type]


class Client:
    """Operations on a world, their outcomes, and a history for the checker."""

    def __init__(self, w: World) -> None:
        self.world = w
        self.recorder = Recorder()
        self.outcomes: list[Outcome] = []
        self._process = 0

    def run(self, f: str, key: str, value: str | None = None, **kw: object) -> Outcome:
        """One operation, run to its end (the world advances past the deadline)."""
        process, self._process = self._process, self._process + 1
        self.recorder.invoke(process, f, key, value, self._ns())
        box: list[Outcome] = []
        self.world.submit(f, key, value.encode() if value else None, callback=box.append,
                          **kw)  # type: ignore[arg-type]
        while not box:
            self.world.advance(1)
        outcome = box[0]
        status = outcome.status
        kind = "ok" if status in (OK, NOT_FOUND) else "fail" if f == "read" else "info"
        read = outcome.record.value.decode() if f == "read" and status == OK else None
        self.recorder.complete(process, kind, read, self._ns())
        self.outcomes.append(outcome)
        return outcome

    def write_all(self, keys: list[str], value: str, **kw: object) -> dict[str, Outcome]:
        return {key: self.run("write", key, f"{value}-{key}", **kw) for key in keys}

    def _ns(self) -> int:
        return self.world.clock.now * 1000


def holding(w: World, node: str) -> list[str]:
    """Keys of KEYS whose preference list holds `node`."""
    return [k for k in KEYS if node in w.ring.preference_list(k, w.config.replicas)]


def healing(w: World, node: str) -> dict:
    return next(v.healing for v in w.nodes() if v.name == node)


# -- hinted handoff -----------------------------------------------------------------------


def test_hinted_handoff_brings_a_restarted_node_up_to_date_without_reads():
    w = world(anti_entropy=False)  # only hints can repair here
    client = Client(w)
    victim = "n1"
    keys = holding(w, victim)
    client.write_all(keys, "old")
    w.crash(victim)
    assert all(o.status == OK for o in client.write_all(keys, "new").values())
    assert sum(v.hints_held for v in w.nodes()) == len(keys)  # one hint per missed write
    assert sorted(w.under_replicated()) == sorted(keys)
    w.restart(victim)
    w.advance(2000)  # no client operation from here on
    assert w.under_replicated() == []
    assert all(w.node(victim).store.get(k).value == f"new-{k}".encode() for k in keys)
    assert healing(w, victim)["repaired"]["hint"] == len(keys)
    assert sum(v.hints_held for v in w.nodes()) == 0  # handed over, then dropped
    assert all(o.kind == "write" for o in client.outcomes)


def test_hints_cross_a_partition_between_coordinator_and_node_but_not_between_nodes():
    w = world(anti_entropy=False)
    client = Client(w)
    victim = "n2"
    keys = holding(w, victim)
    # Cut from the coordinator only: its primaries time out, fallbacks keep hints and
    # hand them over on the node-to-node links, which the partition left alone.
    w.partition("c1", victim)
    client.write_all(keys, "v")
    w.advance(2000)
    assert w.network.is_cut("c1", victim) and w.under_replicated() == []
    # Cut from the other nodes as well: the hints wait until the links heal.
    others = [n for n in w.node_names if n != victim]
    for node in others:
        w.partition(node, victim)
    client.write_all(keys, "w")
    w.advance(3000)
    assert sorted(w.under_replicated()) == sorted(keys)
    for node in others:
        w.heal(node, victim)
    # A replay lost in the cut is given up after `exchange_timeout_ms` (5 s), then
    # retried after `retry_ms` (1 s).
    w.advance(6_100)
    assert w.under_replicated() == []


# -- anti-entropy -------------------------------------------------------------------------


def test_anti_entropy_refills_a_wiped_node_with_every_key():
    w = world(hints=False, anti_entropy_ms=2000)
    client = Client(w)
    victim = "n3"
    keys = holding(w, victim)
    client.write_all(KEYS, "v")
    client.run("delete", keys[0])  # a tombstone must come back too
    assert w.wipe(victim) == 0
    assert w.node(victim).store.count() == 0
    assert sorted(w.under_replicated()) == sorted(keys)
    w.advance(2 * 2000)  # each (range, peer) pair is compared once a period, from each side
    assert w.under_replicated() == []
    store = w.node(victim).store
    assert store.get(keys[0]).tombstone and store.count() == len(keys) - 1
    stats = healing(w, victim)
    assert stats["repaired"]["anti_entropy"] == len(keys) and stats["hints_replayed"] == 0


def test_without_hints_and_anti_entropy_a_wiped_node_stays_empty():
    w = world(hints=False, anti_entropy=False)
    Client(w).write_all(KEYS, "v")
    w.wipe("n3")
    w.advance(20_000)
    assert sorted(w.under_replicated()) == sorted(holding(w, "n3"))


# -- tombstones ---------------------------------------------------------------------------


@pytest.mark.parametrize("hints", [True, False])
def test_a_delete_missed_by_a_replica_never_comes_back(hints):
    # Grace, hint window and clock bound of 1 s each: tombstones may go after 2 s, but only
    # once anti-entropy has seen them on every replica.
    w = world(hints=hints, tombstone_grace_ms=1000, hint_window_ms=1000, max_ahead_ms=1000)
    client = Client(w)
    key = "k7"
    victim = w.ring.preference_list(key, 3)[0]
    client.run("write", key, "alive")
    w.crash(victim)
    assert client.run("delete", key).status == OK
    w.advance(10_000)  # far past the grace: the others may not purge without the victim
    others = [n for n in w.ring.preference_list(key, 3) if n != victim]
    assert all(w.node(n).store.get(key).tombstone for n in others)
    w.restart(victim)  # it still holds the value
    assert w.node(victim).store.get(key).value == b"alive"
    w.advance(30_000)
    assert all(w.node(n).store.get(key) is None for n in w.node_names)  # purged everywhere
    assert sum(v.healing["purged"] for v in w.nodes()) == 3
    assert client.run("read", key, quorum=3).status == NOT_FOUND
    assert check(client.recorder.events).linearizable is True


# -- clocks -------------------------------------------------------------------------------


@pytest.mark.parametrize("behind_ms", [5_000, 3_600_000])
def test_a_restarted_proxy_that_kept_its_clock_mark_writes_above_its_last_run(behind_ms):
    w = world()
    client = Client(w)
    keys = KEYS[:20]
    client.write_all(keys, "before")
    w.restart_coordinator("c1", skew_ms=-behind_ms)  # as the real proxy, from its state
    after = client.write_all(keys, "after")
    assert all(o.status == OK for o in after.values())
    assert w.coordinator("c1").core.restamped == 0  # no replica had to say Superseded
    for key in keys:
        assert client.run("read", key).record.value == f"after-{key}".encode()
    verdict = check(client.recorder.events)
    assert verdict.linearizable is True and verdict.lost_writes == 0


@pytest.mark.parametrize("behind_ms", [5_000, 3_600_000])
def test_a_restarted_proxy_with_its_clock_behind_loses_no_acknowledged_write(behind_ms):
    w = world()
    client = Client(w)
    keys = KEYS[:20]
    client.write_all(keys, "before")
    # It lost its state folder: no memory of the versions it stamped.
    w.restart_coordinator("c1", skew_ms=-behind_ms, keep_clock=False)
    after = client.write_all(keys, "after")
    fresh = client.write_all(["new-a", "new-b"], "fresh")
    assert all(o.status == OK for o in fresh.values())
    if behind_ms < w.config.max_ahead_ms:
        # Replicas answered Superseded and the proxy stamped again above what they hold.
        assert all(o.status == OK for o in after.values())
        assert w.coordinator("c1").core.restamped >= len(keys)
    else:
        # Versions an hour ahead of its clock are not followed: it can't stamp above them,
        # so it fails those writes rather than acknowledge writes that would lose.
        assert all(o.status == UNAVAILABLE for o in after.values())
    # Read back every key: each shows the last acknowledged write.
    for key in keys:
        last = "after" if after[key].status == OK else "before"
        assert client.run("read", key).record.value == f"{last}-{key}".encode()
    verdict = check(client.recorder.events)
    assert verdict.linearizable is True and verdict.lost_writes == 0


def test_a_restarted_proxy_fails_its_pending_operations_and_never_sees_their_replies():
    w = world(fsync=Latency(5000, 0))
    old: list[Outcome] = []
    w.submit("write", "a", b"1", callback=old.append)
    w.advance(1)  # on the replicas, waiting for their 5 ms fsync
    w.restart_coordinator("c1")
    assert [(o.status, o.failed) for o in old] == [(TIMEOUT, {"c1": RESET})]
    # The new process numbers its requests from 1 again, to the same replicas: the old
    # acknowledgements, which carry those numbers, must not count for this write, which
    # is durable only after the next commit.
    new: list[tuple[float, Outcome]] = []
    w.submit("write", "a", b"2", callback=lambda o: new.append((w.now_ms, o)))
    w.advance(30)
    assert len(old) == 1 and [o.status for _, o in new] == [OK]
    assert new[0][0] > 10  # two 5 ms commits, one after the other
    assert all(r.value == b"2" for r in w.replica_records("a").values())


def test_a_far_future_hint_is_refused_by_the_fallback_too():
    w = world()
    key = "k1"
    w.crash(w.ring.preference_list(key, 3)[0])  # its write goes to a fallback as a hint
    w.skew(0, 120_000)  # the proxy's clock is two minutes ahead: beyond the 60 s bound
    outcome = Client(w).run("write", key, "future")
    assert outcome.status == UNAVAILABLE
    w.advance(100)
    assert sum(v.hints_held for v in w.nodes()) == 0
    # Both live primaries refuse, and so does every fallback the hint is passed on to.
    assert sum(v.healing["refused"] for v in w.nodes()) >= 3
    assert all(r is None for r in w.replica_records(key).values())


def test_a_node_clock_can_be_skewed():
    w = world()
    node = w.ring.preference_list("k1", 3)[1]
    w.skew(node, -120_000)  # two minutes behind: every correct version is "far ahead"
    write = Client(w).run("write", "k1", "v", quorum=3)
    assert write.status == UNAVAILABLE and list(write.failed) == [node]
    assert w.node(node).now_ms() == w.coordinator(0).now_ms() - 120_000


# -- sloppy quorum ------------------------------------------------------------------------


@pytest.mark.parametrize("sloppy", [True, False])
def test_a_sloppy_quorum_writes_with_two_primaries_down_and_reads_can_then_be_stale(sloppy):
    w = world(anti_entropy=False)
    client = Client(w)
    key = "k3"
    a, b, c = w.ring.preference_list(key, 3)
    w.crash(a)
    w.crash(b)
    write = client.run("write", key, "v", sloppy=sloppy)
    if not sloppy:
        assert write.status == UNAVAILABLE  # 1 primary of W=2, and hints don't count
        return
    # One primary and one hint make W=2; the other primary's hint follows.
    assert write.status == OK and write.acked == (c,) and len(write.hinted) == 1
    assert set(write.hinted) < {a, b}
    w.advance(10)
    assert sum(v.hints_held for v in w.nodes()) == 2
    # The primaries come back before their hints are handed over, and the one primary
    # that has the write is cut off: a quorum read sees nothing.
    w.restart(a)
    w.restart(b)
    w.partition("c1", c)
    assert client.run("read", key).status == NOT_FOUND
    verdict = check(client.recorder.events)
    assert verdict.stale_reads == 1 and verdict.linearizable is False
    w.heal()
    w.advance(2000)  # the hints reach a and b
    assert w.under_replicated() == []
    assert client.run("read", key).record.value == b"v"


# -- the timer each node keeps ------------------------------------------------------------


def test_each_node_keeps_one_wake_up_however_long_it_idles():
    w = world()
    Client(w).write_all(KEYS[:10], "v")
    w.advance(60_000)
    # One replica wake-up per node (anti-entropy, purge), and the committer's (heartbeats),
    # nothing piling up behind them.
    assert len(w.clock) <= len(w.node_names) + 1
    assert all(v.healing["ae_rounds"] > 0 for v in w.nodes())


def test_a_paused_node_runs_its_rounds_only_after_resume():
    w = world()
    w.pause("n4")
    w.advance(20_000)
    rounds = healing(w, "n4")["ae_rounds"]
    assert rounds == 0
    w.resume("n4")
    w.advance(20_000)
    assert healing(w, "n4")["ae_rounds"] > 0
