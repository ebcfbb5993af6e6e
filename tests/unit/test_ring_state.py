"""The proxy's saved topology: round trip, atomic replace, and a clear error when broken."""

from __future__ import annotations

import pytest

from kvlab.core.ring import Ring
from kvlab.core.topology import Topology
from kvlab.net.ring_state import RingState, RingStateError


def test_a_saved_topology_comes_back_with_its_pending_ring_and_addresses(tmp_path):
    state = RingState(tmp_path)
    assert state.load() is None
    topology = Topology(7, Ring(("n1", "n2", "n3"), 8), Ring(("n1", "n2", "n4"), 8,
                                                           (("n4", "n3"),)))
    state.save(topology.update({"n4": "http://127.0.0.1:9"}))
    again = RingState(tmp_path)
    update = again.load()
    assert Topology.of(update) == topology and update.addresses == {"n4": "http://127.0.0.1:9"}
    assert again.version == 7
    assert [p.name for p in tmp_path.iterdir()] == ["ring.json"]  # no temporary file left


def test_an_unreadable_file_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "ring.json").write_text("{not json")
    with pytest.raises(RingStateError, match="unreadable"):
        RingState(tmp_path).load()
