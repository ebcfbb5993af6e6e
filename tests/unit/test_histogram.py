"""The plain-Python histograms behind /metrics: Prometheus's bucket rules, batch or not,
and a replica link's round trips, folded in by windows."""

from __future__ import annotations

import random

from kvlab.core.messages import ReadReply, ReadRequest
from kvlab.net import codec
from kvlab.net.histogram import Histogram
from kvlab.net.link import LATENCY_WINDOW, ReplicaLink


def test_a_value_on_a_bound_is_in_that_bounds_bucket_and_the_buckets_are_cumulative():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.cumulative() == [(0.1, 2), (1.0, 4), (float("inf"), 5)]
    assert h.count == 5 and abs(h.sum - 8.65) < 1e-9


def test_a_batch_counts_as_the_same_values_one_by_one():
    rng = random.Random(11)
    values = [rng.choice((0.001, 0.25, 5.0)) if i % 7 == 0 else rng.expovariate(200)
              for i in range(5000)]
    one_by_one, batched = Histogram(), Histogram()
    for v in values:
        one_by_one.observe(v)
    batched.observe_many(values[:1234])
    batched.observe_many(values[1234:])
    batched.observe_many([])
    assert batched.counts == one_by_one.counts
    assert abs(batched.sum - one_by_one.sum) < 1e-9


class _Frames:
    """Where a link queues what it sends: the socket's frame writer, with no socket."""

    def push(self, message: object) -> None:
        pass


def test_a_link_times_every_reply_across_its_windows_and_a_scrape_between_them():
    link = ReplicaLink("n1", "http://127.0.0.1:9", None, lambda *a: None,  # type: ignore
                       lambda *a: None, lambda *a: None, lambda *a: None)
    link._writer = _Frames()  # type: ignore[assignment]
    req, frames = 0, 5
    for frame in range(frames):
        reqs = range(req, req + 1000)
        for r in reqs:
            link.send(ReadRequest(r, "k"))
        link._frame(codec.encode([ReadReply(r, None) for r in reqs]))
        req += 1000
        if frame == 1:
            assert link.fold_latencies().count == 2000  # a scrape mid-window
    assert link.replies == frames * 1000
    assert link.fold_latencies().count == frames * 1000
    assert link.fold_latencies().count == frames * 1000  # folding again adds nothing
    assert len(link.latencies) < LATENCY_WINDOW and link.p99_ms() is not None
