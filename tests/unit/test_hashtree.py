"""The anti-entropy hash tree: XOR of hash(key, version) per segment, order-free."""

from hypothesis import given
from hypothesis import strategies as st

from kvlab.core.hashtree import (
    BRANCHES,
    SEGMENTS,
    HashTree,
    differing_branches,
    differing_segments,
    segment_of,
)
from kvlab.core.ring import hash_key
from kvlab.core.version import Version


def _tree(entries) -> HashTree:
    tree = HashTree()
    for key, version in entries:
        tree.put(segment_of(hash_key(key)), key, version)
    return tree


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.integers(1, 50)),
                max_size=40, unique_by=lambda e: e[0]), st.randoms())
def test_same_versions_give_the_same_hashes_in_any_order(entries, rnd):
    versions = [(k, Version(t, 0, "c")) for k, t in entries]
    shuffled = list(versions)
    rnd.shuffle(shuffled)
    a, b = _tree(versions), _tree(shuffled)
    assert a.leaves == b.leaves and a.branches == b.branches and a.root == b.root


def test_an_overwrite_is_the_old_hash_out_and_the_new_one_in():
    key = "user:1"
    direct = _tree([(key, Version(2, 0, "c"))])
    overwritten = _tree([(key, Version(1, 0, "c")), (key, Version(2, 0, "c"))])
    assert overwritten.leaves == direct.leaves and overwritten.root == direct.root
    overwritten.remove(segment_of(hash_key(key)), key)
    assert overwritten.root == 0 and not any(overwritten.leaves) and len(overwritten) == 0


def test_one_differing_key_is_found_in_one_branch_and_one_segment():
    common = [(f"k{i}", Version(i + 1, 0, "c")) for i in range(500)]
    a = _tree(common)
    b = _tree(common + [("extra", Version(9, 0, "c"))])
    branches = differing_branches(a.branches, b.branches)
    assert len(branches) == 1
    segments = differing_segments(a, [(br, b.branch_leaves(br)) for br in branches])
    assert segments == [segment_of(hash_key("extra"))]
    assert ("extra", Version(9, 0, "c")) in list(b.items(segments))


def test_shape():
    assert SEGMENTS == 1024 and BRANCHES == 32
    assert 0 <= segment_of(2**64 - 1) < SEGMENTS
