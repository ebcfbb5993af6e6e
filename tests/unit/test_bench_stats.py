"""The numbers `kvlab bench` reports: mix, outcomes, percentiles, tallies, report, progress."""

from __future__ import annotations

import pytest

from kvlab.bench.stats import (
    NOT_FOUND, TIMEOUT, LatencySummary, Mix, Report, Tally, outcome, percentile, progress_line,
)


@pytest.mark.parametrize(
    ("text", "reads", "writes"),
    [("9:1", 9, 1), ("1:1", 1, 1), ("0:1", 0, 1), ("1:0", 1, 0), (" 3 : 2", 3, 2)],
)
def test_mix_parses_read_write(text: str, reads: int, writes: int) -> None:
    assert Mix.parse(text) == Mix(reads, writes)


@pytest.mark.parametrize("text", ["1:x", "1", "1:2:3", "0:0", "-1:2", "", ":", "1.5:1"])
def test_mix_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        Mix.parse(text)


@pytest.mark.parametrize(
    ("mix", "pattern"),
    [
        (Mix(1, 1), (False, True)),
        (Mix(3, 2), (False, True, False, True, True)),
        (Mix(2, 4), (False, False, True)),  # reduced to 1:2
        (Mix(1, 0), (True,)),
        (Mix(0, 5), (False,)),
    ],
)
def test_mix_pattern_spreads_writes_evenly(mix: Mix, pattern: tuple[bool, ...]) -> None:
    assert mix.pattern() == pattern


def test_mix_pattern_has_exact_split_per_cycle() -> None:
    pattern = Mix(9, 1).pattern()
    assert len(pattern) == 10 and sum(pattern) == 9
    assert str(Mix(9, 1)) == "9:1"


@pytest.mark.parametrize(
    ("status", "is_read", "kind"),
    [
        (200, True, None),
        (204, False, None),
        (404, True, NOT_FOUND),
        (404, False, "http_404"),
        (503, True, "http_503"),
        (400, False, "http_400"),
    ],
)
def test_outcome(status: int, is_read: bool, kind: str | None) -> None:
    assert outcome(status, is_read) == kind


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (0, 1, 50, 90, 99, 100)] == [1, 1, 50, 90, 99, 100]
    ten = [float(v) for v in range(1, 11)]
    assert percentile(ten, 50) == 5
    assert percentile(ten, 99) == 10
    assert percentile([7.0], 99) == 7
    assert percentile([], 50) == 0.0


def test_latency_summary_sorts_and_converts_to_ms() -> None:
    seconds = [0.010, 0.001, 0.003, 0.002, 0.004, 0.009, 0.005, 0.008, 0.006, 0.007]
    assert LatencySummary.of(seconds) == LatencySummary(
        p50_ms=5.0, p90_ms=9.0, p99_ms=10.0, max_ms=10.0
    )


def make_tally() -> Tally:
    tally = Tally()
    tally.add(True, None, 0.002)
    tally.add(True, NOT_FOUND, 0.001)
    tally.add(False, None, 0.004)
    tally.add(False, "http_503", 0.003)
    tally.add(True, TIMEOUT, None)
    tally.add(False, "http_503", 0.005)
    return tally


def test_tally_counts_outcomes() -> None:
    tally = make_tally()
    assert (tally.ops, tally.reads, tally.writes, tally.not_found) == (6, 3, 3, 1)
    assert tally.errors == {"http_503": 2, TIMEOUT: 1}
    assert tally.error_count == 3
    # A timeout has no latency to record.
    assert sorted(tally.latencies) == [0.001, 0.002, 0.003, 0.004, 0.005]


def test_report_json_shape() -> None:
    report = Report.of(
        make_tally(), 2.0, url="http://x", api="compat", concurrency=4, mix=Mix(1, 1),
        settings={"keys": 10, "r": 2}, preload={"keys": 10, "duration_s": 0.5, "errors": 0},
    )
    assert report.to_dict() == {
        "ops_per_sec": 3.0,
        "p50_ms": 3.0,
        "p90_ms": 5.0,
        "p99_ms": 5.0,
        "max_ms": 5.0,
        "errors": {"http_503": 2, "timeout": 1},
        "error_count": 3,
        "ops": 6,
        "reads": 3,
        "writes": 3,
        "not_found": 1,
        "duration_s": 2.0,
        "concurrency": 4,
        "url": "http://x",
        "api": "compat",
        "mix": "1:1",
        "keys": 10,
        "r": 2,
        "preload": {"keys": 10, "duration_s": 0.5, "errors": 0},
    }


def test_report_text() -> None:
    report = Report.of(make_tally(), 2.0, url="http://x", api="rest", concurrency=4, mix=Mix(1, 1))
    text = report.render()
    assert "6 in 2.00s (3 reads, 3 writes)" in text
    assert "throughput   3 ops/s" in text
    assert "p50 3.00  p90 5.00  p99 5.00  max 5.00" in text
    assert "not found    1 reads" in text
    assert "errors       3: http_503 2, timeout 1" in text


def test_empty_run_reports_zeros() -> None:
    report = Report.of(Tally(), 0.0, url="http://x", api="rest", concurrency=1, mix=Mix(9, 1))
    out = report.to_dict()
    assert (out["ops"], out["ops_per_sec"], out["p99_ms"], out["errors"]) == (0, 0.0, 0.0, {})
    assert "errors       none" in report.render()


def test_progress_line() -> None:
    assert progress_line("bench", 2.0, 5000, 3, 0.25) == (
        "bench    2.0s       5,000 ops      2,500 ops/s  3 errors   25%"
    )
    assert progress_line("bench", 0.0, 0, 0, None) == (
        "bench    0.0s           0 ops          0 ops/s  0 errors"
    )
