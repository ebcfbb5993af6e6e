"""The replica state machine on the pure core: writes, hints, anti-entropy, tombstone purge."""

from __future__ import annotations

import pytest

from kvlab.core.coordinator import Quorum
from kvlab.core.messages import (
    OK,
    ErrorReply,
    HintRequest,
    KeysReply,
    Persist,
    Push,
    ReadRequest,
    RingSpec,
    RingUpdate,
    Send,
    Superseded,
    WriteReply,
    WriteRequest,
)
from kvlab.core.record import Record
from kvlab.core.replica import Replica, ReplicaConfig
from kvlab.core.ring import Ring
from kvlab.core.version import Version
from kvlab.storage.memory import MemoryStore
from tests.unit.core_harness import CoreCluster

NOW = 1_000_000


def _lone(config: ReplicaConfig = ReplicaConfig(n=1)) -> tuple[Replica, MemoryStore]:
    store = MemoryStore()
    return Replica("n1", Ring(("n1",), 8), config, store.get_many), store


def _rec(key: str, value: bytes | None, t: int) -> Record:
    return Record(key, value, Version(t, 0, "c"))


def _persist(replica: Replica, store: MemoryStore, effects) -> list:
    """Carry out the Persist effects at once; return every Send, in order."""
    sends = []
    for effect in effects:
        if isinstance(effect, Persist):
            store.write(effect)
            sends.extend(replica.persisted(effect.batch, NOW))
        else:
            sends.append(effect)
    return sends


# -- writes ---------------------------------------------------------------------------


def test_a_write_is_acknowledged_only_after_it_is_durable():
    replica, store = _lone()
    effects = replica.receive("p", WriteRequest(1, _rec("k", b"v", NOW)), NOW)
    assert [type(e) for e in effects] == [Persist]  # no acknowledgement yet
    assert store.get("k") is None
    sends = _persist(replica, store, effects)
    assert sends == [Send("p", WriteReply(1))] and store.get("k").value == b"v"


def test_an_older_write_is_answered_superseded_with_the_version_held():
    replica, store = _lone()
    _persist(replica, store, replica.receive("p", WriteRequest(1, _rec("k", b"new", NOW)), NOW))
    effects = replica.receive("p", WriteRequest(2, _rec("k", b"old", NOW - 5000)), NOW)
    assert effects == [Send("p", Superseded(2, Version(NOW, 0, "c")))]
    assert store.get("k").value == b"new"


def test_a_write_stamped_far_ahead_of_the_replicas_clock_is_refused():
    replica, store = _lone(ReplicaConfig(n=1, max_ahead_ms=60_000))
    effects = replica.receive("p", WriteRequest(1, _rec("k", b"v", NOW + 3_600_000)), NOW)
    assert len(effects) == 1 and isinstance(effects[0].message, ErrorReply)
    assert "ahead" in effects[0].message.error and replica.holds("k") is None
    ok = replica.receive("p", WriteRequest(2, _rec("k", b"v", NOW + 59_000)), NOW)
    assert isinstance(ok[0], Persist)


def test_a_failed_commit_is_undone_and_reported_never_acknowledged():
    replica, store = _lone()
    _persist(replica, store, replica.receive("p", WriteRequest(1, _rec("k", b"a", NOW)), NOW))
    effects = replica.receive("p", WriteRequest(2, _rec("k", b"b", NOW + 1)), NOW)
    assert replica.holds("k") == Version(NOW + 1, 0, "c")
    sends = replica.persist_failed(effects[0].batch, "disk full", NOW)
    assert sends == [Send("p", ErrorReply(2, "storage: disk full"))]
    assert replica.holds("k") == Version(NOW, 0, "c")  # back to what is on disk


# -- the whole cluster ----------------------------------------------------------------


def test_a_primary_that_missed_writes_gets_them_from_hints_without_any_read():
    c = CoreCluster()
    keys = [f"k{i}" for i in range(60)]
    victim = "n1"
    c.crash(victim)
    for key in keys:
        assert c.write(key, b"v").status == OK
    mine = [k for k in keys if victim in c.prefs(k)]
    assert mine
    held = sum(sum(r.hints_held().values()) for r in c.replicas.values())
    assert held == len(mine)
    # Each hint sits on the first node past the key's preference list.
    for key in mine:
        fallback = c.ring.preference_list(key, 4)[3]
        assert c.stores[fallback].get(key) is None
        assert any(h.record.key == key for h in c.stores[fallback].hints())
    c.restart(victim)
    c.tick(3_000)
    assert all(c.stores[victim].get(k) is not None for k in mine)
    assert all(not list(s.hints()) for s in c.stores.values())  # handed over, then dropped
    assert c.replicas[victim].stats.repaired["hint"] == len(mine)


def test_hints_do_not_count_toward_w_unless_the_write_is_sloppy():
    c = CoreCluster()
    key = "k"
    first, second, third = c.prefs(key)
    c.crash(first)
    c.crash(second)
    strict = c.write(key, b"v")
    assert strict.status != OK
    sloppy = c.write(key, b"v2", sloppy=True)
    assert sloppy.status == OK and set(sloppy.hinted) == {first, second}
    assert not set(sloppy.hinted.values()) & set(c.prefs(key))  # fallbacks, not primaries


def test_anti_entropy_restores_a_wiped_node_in_bounded_rounds():
    config = ReplicaConfig(n=3, exchange_keys=40, anti_entropy_ms=1_000, hints=False)
    c = CoreCluster(config=config)
    keys = [f"k{i}" for i in range(400)]
    for key in keys:
        c.write(key, key.encode())
    victim = "n2"
    c.crash(victim)
    c.wipe(victim)
    c.restart(victim)
    mine = [k for k in keys if victim in c.prefs(k)]
    c.tick(30_000)
    assert all(c.stores[victim].get(k) is not None for k in mine)
    # Every round carried at most `exchange_keys` records.
    rounds = [s.message for _, s in c.sent if isinstance(s.message, (KeysReply, Push))]
    assert rounds and max(len(m.records) for m in rounds) <= 40
    assert c.replicas[victim].stats.repaired["anti_entropy"] == len(mine)


def _deleted_but(missed_by: str) -> tuple[CoreCluster, str, str]:
    """A key written, then deleted while one replica is "silent" or "down" (a 1 s grace)."""
    config = ReplicaConfig(n=3, tombstone_grace_ms=1_000, hint_window_ms=0, max_ahead_ms=0,
                           anti_entropy_ms=500)
    c = CoreCluster(config=config, hints=False)
    key = "doomed"
    c.write(key, b"alive")
    lagging = c.prefs(key)[2]
    (c.silent if missed_by == "silent" else c.down).add(lagging)
    assert c.write(key, None).status == OK  # the delete misses one replica
    c.held.clear()
    c.silent.clear()
    return c, key, lagging


def test_a_missed_delete_never_comes_back_and_its_tombstone_is_purged_everywhere():
    c, key, _ = _deleted_but("silent")
    for _ in range(10):
        c.tick(1_000)
        assert c.read(key).status == "not_found"
    assert all(c.stores[n].get(key) is None for n in c.prefs(key))  # purged on all three
    assert sum(r.stats.purged for r in c.replicas.values()) >= 3


def test_a_tombstone_is_kept_while_a_replica_has_not_confirmed_it():
    c, key, lagging = _deleted_but("down")
    c.tick(10_000)  # long past the grace: but `lagging` never said it holds the tombstone
    assert all(c.stores[n].get(key).tombstone for n in c.prefs(key) if n != lagging)
    c.restart(lagging)
    c.tick(10_000)
    assert c.read(key).status == "not_found"
    assert all(c.stores[n].get(key) is None for n in c.prefs(key))


@pytest.mark.parametrize("hints", [True, False])
def test_a_hint_for_an_old_value_cannot_outlive_the_purge_of_its_delete(hints):
    # The hint window bounds how long an old value can wait on a fallback; a tombstone
    # waits at least that long before it goes.
    config = ReplicaConfig(n=3, tombstone_grace_ms=1_000, hint_window_ms=5_000,
                           max_ahead_ms=0, hints=hints)
    assert config.purge_after_ms == (5_000 if hints else 1_000)


def test_a_node_holding_keys_outside_its_ranges_keeps_them_apart():
    replica, store = _lone(ReplicaConfig(n=1))
    stray = next(f"s{i}" for i in range(100)
                 if Ring(("n1", "n2", "n3"), 8).preference_list(f"s{i}", 1) != ("n1",))
    _persist(replica, store, replica.receive("p", WriteRequest(1, _rec(stray, b"v", NOW)), NOW))
    _persist(replica, store, replica.receive(  # the key's range moved away
        "p", RingUpdate(1, RingSpec(["n1", "n2", "n3"], 8)), NOW))
    assert replica.holds(stray) == Version(NOW, 0, "c")
    assert replica.key_count() == 1


def test_a_coordinator_request_for_a_key_the_node_does_not_own_is_refused():
    replica, store = _lone(ReplicaConfig(n=1))
    _persist(replica, store, replica.receive("p", RingUpdate(1, RingSpec(["n1", "n2", "n3"], 8)),
                                             NOW))
    stray = next(f"s{i}" for i in range(100)
                 if Ring(("n1", "n2", "n3"), 8).preference_list(f"s{i}", 1) != ("n1",))
    sent = _persist(replica, store, replica.receive_many(
        "p", [WriteRequest(1, _rec(stray, b"v", NOW)), ReadRequest(2, stray)], NOW))
    # Refused, never "not found": a read here would hide the key its owner holds.
    assert [type(s.message) for s in sent] == [ErrorReply, ErrorReply]
    assert all("does not own" in s.message.error for s in sent)
    assert replica.holds(stray) is None and store.get(stray) is None


def test_a_fallback_keeps_the_newest_hint_per_target_and_key():
    replica, store = _lone()
    for req, t in ((1, NOW), (2, NOW + 5), (3, NOW + 2)):
        _persist(replica, store, replica.receive(
            "p", HintRequest(req, _rec("k", str(t).encode(), t), "n9"), NOW))
    assert [h.record.value for h in store.hints()] == [str(NOW + 5).encode()]
    assert replica.hints_held() == {"n9": 1}


def test_a_value_written_over_a_ripe_tombstone_is_never_purged():
    config = ReplicaConfig(n=1, tombstone_grace_ms=1_000, hint_window_ms=0, max_ahead_ms=0)
    replica, store = _lone(config)
    _persist(replica, store, replica.receive("p", WriteRequest(1, _rec("k", None, NOW)), NOW))
    replica.handle_timer(NOW)
    # Past the grace: the tombstone is ripe (no peers to confirm: n=1)...
    later = NOW + 2_000
    _persist(replica, store, replica.receive("p", WriteRequest(2, _rec("k", b"back", later)),
                                             later))
    _persist(replica, store, replica.handle_timer(later + 1_000))
    assert store.get("k").value == b"back" and replica.holds("k") is not None


def test_a_second_write_under_a_version_already_held_gets_a_fresh_stamp():
    # A restarted coordinator whose clock lands on a stamp it used before: acknowledging
    # the second value as a retry would drop it unseen.
    replica, store = _lone()
    _persist(replica, store, replica.receive("p", WriteRequest(1, _rec("k", b"a", NOW)), NOW))
    again = replica.receive("p", WriteRequest(2, _rec("k", b"b", NOW)), NOW)
    assert again == [Send("p", Superseded(2, Version(NOW, 0, "c")))]
    repair = replica.receive("p", WriteRequest(3, _rec("k", b"a", NOW), repair=True), NOW)
    assert [type(e) for e in repair] == [Persist]  # a repair with the same version is fine


def test_a_fresh_replica_asks_for_its_first_timer_at_once():
    replica, _ = _lone()
    assert replica.get_timer() == 0
    replica.handle_timer(NOW)
    assert replica.get_timer() == NOW + replica.config.purge_every_ms


def test_a_hint_replay_is_bounded_by_bytes_as_well_as_by_count():
    store = MemoryStore()
    replica = Replica("n1", Ring(("n1", "n9"), 8), ReplicaConfig(n=1, exchange_bytes=3 << 20),
                      store.get_many)
    big = b"x" * (1 << 20)
    for i in range(10):
        _persist(replica, store, replica.receive(
            "p", HintRequest(i, _rec(f"big{i}", big, NOW), "n9"), NOW))
    pushes = [e.message for e in replica.handle_timer(NOW) if isinstance(e, Send)]
    assert len(pushes) == 1 and len(pushes[0].records) == 2  # 3 MiB at most, keys included


def _run(c: CoreCluster, node: str, effects) -> list:
    """Persist at once; return the Sends, undelivered."""
    out = []
    for e in effects:
        if isinstance(e, Persist):
            c.stores[node].write(e)
            out += _run(c, node, c.replicas[node].persisted(e.batch, c.now))
        else:
            out.append(e)
    return out


def test_a_tombstone_that_arrives_during_an_exchange_is_not_confirmed_by_its_reply():
    # Found in review: a TreeReply compares the peer with our tree *as sent*; a tombstone
    # that reached us meanwhile was not in it, so the reply says nothing about it.
    from kvlab.core.messages import Mechanism, Purge, Push
    cfg = ReplicaConfig(n=3, hints=False, tombstone_grace_ms=1000, anti_entropy_ms=10**9)
    c = CoreCluster(Quorum(3, 2, 2), nodes=("A", "B", "C"), config=cfg)
    t0 = c.now
    v1 = Record("k", b"v1", Version(t0, 0, "p"))
    dead = Record("k", None, Version(t0 + 10, 0, "p"))
    for n, record in (("A", v1), ("B", v1), ("C", dead)):
        _run(c, n, c.replicas[n].receive("C" if n != "C" else "A",
                                         Push(0, [record], Mechanism.HINT), t0))
    a, b, d = (c.replicas[n] for n in "ABC")
    c.now = now = t0 + 10_000
    for r in (a, b, d):
        _run(c, r.name, r.handle_timer(now))
    rng = ("A", "B", "C")
    a._urgent.append((rng, "B"))
    effects: list = []
    a._start_exchange(now, effects)
    (request,) = effects
    (reply,) = _run(c, "B", b.receive("A", request.message, now))
    assert reply.message.leaves == []  # A and B agreed when A asked
    _run(c, "A", a.receive("C", Push(77, [dead], Mechanism.ANTI_ENTROPY), now))
    now += cfg.purge_every_ms
    c.now = now
    _run(c, "A", a.handle_timer(now))
    assert "k" in a._ripe
    _run(c, "A", a.receive("B", reply.message, now))
    assert "B" in a._ripe["k"].missing  # B was not confirmed: it still holds v1
    sends = _run(c, "A", a.handle_timer(now + cfg.purge_every_ms))
    assert not [s for s in sends if isinstance(s.message, Purge)]
    # Ordinary anti-entropy from here on: the delete wins everywhere, then is purged.
    for r in (a, b, d):
        object.__setattr__(r, "config", ReplicaConfig(**{**cfg.__dict__,
                                                         "anti_entropy_ms": 100}))
        r._next_ae = now
    c.tick(10_000)
    assert c.read("k").status == "not_found"
    assert all(c.stores[n].get("k") is None for n in "ABC")


def test_peer_messages_from_a_coordinator_connection_are_ignored():
    from kvlab.core.messages import Mechanism, Purge, Push
    c = CoreCluster(config=ReplicaConfig(n=3, tombstone_grace_ms=0))
    key = "k"
    c.write(key, b"v1")
    first = c.prefs(key)[0]
    replica = c.replicas[first]
    forged = Record(key, b"rogue", Version(c.now + 10, 0, "evil"))
    assert replica.receive("coordinator#7", Push(1, [forged], Mechanism.HINT), c.now) == []
    tomb = c.write(key, None).record.version
    assert replica.receive("coordinator#7", Purge([(key, tomb)]), c.now) == []
    assert replica.holds(key) == tomb and replica.stats.ignored == 2


def test_a_far_future_record_is_refused_from_a_peer_too():
    from kvlab.core.messages import Mechanism, Push
    c = CoreCluster()
    key = "k"
    first, second = c.prefs(key)[:2]
    future = Record(key, b"rogue", Version(c.now + 10 * 365 * 86_400_000, 0, "evil"))
    sends = _run(c, first, c.replicas[first].receive(second, Push(1, [future],
                                                                  Mechanism.ANTI_ENTROPY),
                                                     c.now))
    assert [s.message.stored for s in sends] == [0]  # acknowledged, not stored
    assert c.replicas[first].holds(key) is None and c.replicas[first].stats.refused == 1


def test_with_the_default_grace_a_missed_delete_reaches_the_replica_and_is_kept():
    c = CoreCluster()  # the defaults: a day's grace, hints on, anti-entropy every 5 s
    key = "doomed"
    c.write(key, b"alive")
    lagging = c.prefs(key)[2]
    c.down.add(lagging)
    assert c.write(key, None).status == OK
    c.restart(lagging)  # back with the value it had before the delete
    c.tick(12_000)  # hints and anti-entropy, no reads
    assert c.stores[lagging].get(key).tombstone
    assert all(c.stores[n].get(key).tombstone for n in c.prefs(key))  # kept: within grace
    assert c.read(key).status == "not_found"


def test_a_hint_addressed_to_the_node_itself_is_a_write_not_a_hint():
    # The coordinator's ring and ours disagree: keeping it as a hint would mean handing
    # it over to ourselves later.
    replica, store = _lone()
    sends = _persist(replica, store, replica.receive(
        "p", HintRequest(1, _rec("k", b"v", NOW), "n1"), NOW))
    assert sends == [Send("p", WriteReply(1))]
    assert store.get("k").value == b"v" and replica.hints_held() == {}


def test_a_hint_for_a_key_its_target_no_longer_replicates_goes_to_the_new_replica():
    replica, store = _lone(ReplicaConfig(n=1))
    three, four = Ring(("n1", "n2", "n3"), 8), Ring(("n1", "n2", "n3", "n4"), 8)
    key = next(f"k{i}" for i in range(1000) if three.preference_list(f"k{i}", 1) == ("n2",)
               and four.preference_list(f"k{i}", 1) == ("n4",))
    _persist(replica, store, replica.receive("p", RingUpdate(1, RingSpec(["n1", "n2", "n3"], 8)),
                                             NOW))
    _persist(replica, store, replica.receive("p", HintRequest(1, _rec(key, b"v", NOW), "n2"),
                                             NOW))
    assert replica.hints_held() == {"n2": 1}
    # The key's range moves from n2 to n4 (say, a sloppy write's only copy is this hint).
    _persist(replica, store, replica.receive(
        "p", RingUpdate(2, RingSpec(["n1", "n2", "n3", "n4"], 8)), NOW))
    sent = _persist(replica, store, replica.handle_timer(NOW))
    sent += _persist(replica, store, replica.handle_timer(NOW + 1))
    assert replica.hints_held() == {"n4": 1}
    assert [h.target for h in store.hints()] == ["n4"]
    pushes = [s for s in sent if isinstance(s, Send) and isinstance(s.message, Push)]
    assert [(p.node, [r.key for r in p.message.records]) for p in pushes] == [("n4", [key])]
