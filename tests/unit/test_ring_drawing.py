"""The dashboard's ring drawing: pure layout code, tested without a terminal."""

from collections import Counter

from kvlab.core.ring import Ring
from kvlab.tui.widgets.ring import layout, walk

RING = Ring(tuple(f"n{i}" for i in range(1, 6)), 64)


def test_cells_stay_in_the_box_and_share_the_ring_like_the_nodes_do():
    box = layout(RING, 60, 24)
    assert box.cells and all(0 <= c.x < 60 and 0 <= c.y < 24 for c in box.cells)
    drawn = Counter(c.owner for c in box.cells)
    shares = RING.ownership()
    for node, share in shares.items():
        # Each node's colour covers about its share of the ring (cells are coarse).
        assert abs(drawn[node] / len(box.cells) - share) < 0.06, (node, drawn, shares)


def test_the_middle_box_is_inside_the_ring():
    box = layout(RING, 60, 24)
    x, y, w, h = box.inner
    ring_cells = {(c.x, c.y) for c in box.cells}
    assert w > 10 and h > 3
    assert not any((cx, cy) in ring_cells for cx in range(x, x + w) for cy in range(y, y + h))


def test_walk_meets_the_preference_list_in_order():
    for key in ("user:42", "a&b=c", "k0", "ünï"):
        steps = walk(RING, key, 3)
        assert [owner for owner, fresh in steps if fresh] == list(RING.preference_list(key, 3))
        assert steps[0][1] and steps[-1][1]  # starts at the primary, stops at the third


def test_layout_follows_membership():
    smaller = RING.without_node("n5")
    assert "n5" not in {c.owner for c in layout(smaller, 60, 24).cells}
