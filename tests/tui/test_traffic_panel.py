"""The traffic panel's summary: the long form when it fits, the short one otherwise."""

from __future__ import annotations

from kvlab.tui.widgets.traffic import summary
from tests.tui.fake_source import FakeSource


def test_the_summary_takes_the_long_form_only_when_every_line_fits() -> None:
    stats = FakeSource().traffic
    for width in range(30, 90):
        text = summary(stats, (2, 2), width)
        longest = max(line.cell_len for line in text.split())
        short = "unavailable" not in text.plain
        # 46 columns used to get the long form, whose error line wraps there.
        assert short or longest <= width, width
    assert "errors  unavailable 21" in summary(stats, (2, 2), 60).plain
    assert "✗ unavail 21" in summary(stats, (2, 2), 46).plain
