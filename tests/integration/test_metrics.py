"""`GET /metrics` on a real cluster: what the proxy and the nodes count is the traffic made."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from kvlab.client import KV, BadRequest
from tests.cluster_helpers import eventually

PUTS, FOUND, MISSING = 7, 3, 2


def scrape(url: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(f"{url}/metrics",
                                     headers={} if accept is None else {"Accept": accept})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


def samples(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    _, text = scrape(url)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def total(scraped: dict, name: str) -> float:
    return sum(v for (n, _), v in scraped.items() if n == name)


@pytest.fixture(scope="module")
def traffic(cluster3):
    """A known mix of requests on a fresh cluster, and the proxy's scrape after it."""
    with KV(cluster3.url) as kv:
        for i in range(PUTS):
            kv.set(f"metrics-{i}", f"v{i}")
        for i in range(FOUND):
            assert kv.get(f"metrics-{i}") == f"v{i}"
        for i in range(MISSING):
            assert kv.get(f"metrics-missing-{i}") is None
        with pytest.raises(BadRequest):
            kv.read("metrics-0", r=9)
    return cluster3


def test_the_proxy_counts_each_request_by_route_and_status(traffic):
    scraped = samples(traffic.url)
    duration = "kvlab_http_request_duration_seconds"
    counts = {(dict(labels)["route"], dict(labels)["status"]): v
              for (name, labels), v in scraped.items() if name == f"{duration}_count"}
    assert counts[("PUT /kv/*", "200")] == PUTS
    assert counts[("GET /kv/*", "200")] == FOUND
    assert counts[("GET /kv/*", "404")] == MISSING
    assert counts[("GET /kv/*", "400")] == 1
    assert not any(route.startswith("GET /kv/metrics") for route, _ in counts), \
        "a key must never be a label"
    # The buckets are cumulative and end at the count.
    puts = {"route": "PUT /kv/*", "status": "200"}
    assert value(scraped, f"{duration}_bucket", le="+Inf", **puts) == PUTS
    assert value(scraped, f"{duration}_bucket", le="0.0001", **puts) <= \
        value(scraped, f"{duration}_bucket", le="1.0", **puts)
    assert 0 < value(scraped, f"{duration}_sum", **puts) < PUTS * 1.0

    outcomes = "kvlab_quorum_outcomes_total"
    assert value(scraped, outcomes, op="write", outcome="ok") == PUTS
    assert value(scraped, outcomes, op="read", outcome="ok") == FOUND
    assert value(scraped, outcomes, op="read", outcome="not_found") == MISSING
    assert value(scraped, outcomes, op="write", outcome="unavailable") == 0
    assert value(scraped, outcomes, op="read", outcome="timeout") == 0

    # Every reply to a request is one replica round trip, timed per node.
    nodes = [m.name for m in traffic.nodes]
    for node in nodes:
        assert value(scraped, "kvlab_link_up", node=node) == 1
        assert value(scraped, "kvlab_node_health", node=node, health="up") == 1
        assert value(scraped, "kvlab_link_round_trip_seconds_count", node=node) == \
            value(scraped, "kvlab_link_replies_total", node=node)
    # W=2 and R=2 of N=3: at least two replicas answered each operation.
    assert total(scraped, "kvlab_link_round_trip_seconds_count") >= 2 * (PUTS + FOUND + MISSING)
    assert value(scraped, "process_resident_memory_bytes") > 0


def test_the_nodes_count_the_writes_and_reads_they_took(traffic):
    urls = [m.url(traffic.spec.host) for m in traffic.nodes]

    def counted() -> tuple[float, float, float]:
        scraped = [samples(url) for url in urls]
        return (sum(value(s, "kvlab_node_writes_total") for s in scraped),
                sum(value(s, "kvlab_node_reads_total") for s in scraped),
                sum(value(s, "kvlab_node_keys") for s in scraped))

    # Every replica of N=3 takes every write and every read, the third one maybe a little
    # after the quorum answered.
    eventually(lambda: counted() == (3 * PUTS, 3 * (FOUND + MISSING), 3 * PUTS),
               message="every replica's write and read counted")
    scraped = samples(urls[0])
    assert value(scraped, "kvlab_store_commits_total") >= 1
    assert {dict(labels)["mechanism"] for name, labels in scraped
            if name == "kvlab_keys_repaired_total"} == \
        {"read_repair", "hint", "anti_entropy", "stream"}


@pytest.mark.parametrize("where", ["proxy", "node"])
def test_metrics_are_served_as_openmetrics_when_asked(traffic, where):
    url = traffic.url if where == "proxy" else traffic.nodes[0].url(traffic.spec.host)
    content_type, text = scrape(url)
    assert content_type.startswith("text/plain; version=0.0.4")
    content_type, text = scrape(url, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    names = {family.name for family in openmetrics(text)}
    assert ("kvlab_http_request_duration_seconds" if where == "proxy"
            else "kvlab_node_writes") in names


@pytest.mark.parametrize("where", ["proxy", "node"])
def test_a_scrape_renders_at_most_once_a_second(traffic, where):
    """/metrics is open to every client and a render takes milliseconds of the event loop:
    one client scraping in a loop took another's GETs through the proxy from ~1,000/s to 4/s.
    """
    url = traffic.url if where == "proxy" else traffic.nodes[0].url(traffic.spec.host)
    began = time.monotonic()
    texts = {scrape(url)[1] for _ in range(20)}  # each scrape is traffic a render would count
    assert len(texts) <= 2 + (time.monotonic() - began), len(texts)
    # Two formats, whatever version the scraper names: one text per version asked would grow
    # without bound.
    for version in ("1.0.0", "1.0.1", "7.0.0"):
        content_type, _ = scrape(url, f"application/openmetrics-text; version={version}")
        assert content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    last = scrape(url)[1]
    eventually(lambda: scrape(url)[1] != last, 5, "a scrape a second later rendered anew")
