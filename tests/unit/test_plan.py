"""Planning a membership change: which key ranges move, from whom to whom."""

import pytest

from kvlab.core.plan import plan
from kvlab.core.ring import Ring, hash_key

NODES = ("n1", "n2", "n3", "n4", "n5")


def test_adding_a_node_moves_only_the_ranges_it_joins_and_only_to_it():
    old, new = Ring(NODES), Ring(NODES + ("n6",))
    p = plan(old, new, 3)
    assert p.moves and {m.target for m in p.moves} == {"n6"}
    assert p.before["n1"] == pytest.approx(0.6, abs=0.08)  # each holds ~3/5 of the keys
    assert p.after["n6"] == pytest.approx(0.5, abs=0.08)  # and ~3/6 afterwards
    assert sum(p.before.values()) == pytest.approx(3) and sum(p.after.values()) == pytest.approx(3)
    assert p.changed == pytest.approx(p.after["n6"])  # exactly the keys n6 will hold
    # Checked key by key: a key moves to n6 exactly when its preference list gains n6.
    for i in range(2000):
        key = f"k{i}"
        point = hash_key(key)
        gains = "n6" in new.preference_list(key, 3)
        moving = [m for m in p.moves
                  if (m.start < point <= m.end) or (m.start > m.end and
                                                     (point > m.start or point <= m.end))]
        assert bool(moving) == gains, key
        if gains:
            (move,) = moving
            left = set(old.preference_list(key, 3)) - set(new.preference_list(key, 3))
            assert move.source in left  # it replaces the replica that leaves


def test_removing_a_node_streams_everything_it_held_to_the_others():
    old, new = Ring(NODES), Ring(tuple(n for n in NODES if n != "n3"))
    p = plan(old, new, 3)
    assert {m.source for m in p.moves} == {"n3"} and "n3" not in {m.target for m in p.moves}
    assert sum(f for (src, _), f in p.flows().items()) == pytest.approx(p.before["n3"])
    assert p.after.get("n3") is None


def test_growing_past_fewer_nodes_than_n_copies_from_a_current_replica():
    old, new = Ring(("n1", "n2")), Ring(("n1", "n2", "n3"))
    p = plan(old, new, 3)
    assert p.changed == pytest.approx(1.0) and {m.target for m in p.moves} == {"n3"}
    assert {m.source for m in p.moves} <= {"n1", "n2"}


def test_kvlab_plan_on_a_cluster_that_is_not_running(tmp_path, monkeypatch, capsys):
    import json

    from kvlab.cli import main
    from kvlab.cluster.spec import ClusterSpec
    from kvlab.cluster.supervisor import Cluster

    monkeypatch.setenv("KVLAB_HOME", str(tmp_path))
    cluster = Cluster.new(ClusterSpec(name="p"))
    cluster.dir.mkdir(parents=True)
    cluster.save()
    assert main(["plan", "add", "--name", "p", "--json"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["node"] == "n6" and {f["to"] for f in added["flows"]} == {"n6"}
    assert sum(added["after"].values()) == pytest.approx(3, abs=1e-3)
    assert main(["plan", "remove", "n3", "--name", "p"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("removing n3 (5 nodes now, N=3)") and "n3 -> " in text
    assert main(["plan", "remove", "n9", "--name", "p"]) == 2
    assert "no node 'n9'" in capsys.readouterr().err
    assert main(["plan", "add", "--name", "nosuch"]) == 3
