"""`GET /metrics` of the proxy and of each node: the Prometheus exposition.

Every figure is counted where it happens, in plain ints and `kvlab.net.histogram`
histograms (the counters behind `/cluster` and `/stats`); a collector turns them into metric
families only when `/metrics` is scraped, so the hot path pays nothing for Prometheus. Each
process has a registry of its own (never prometheus_client's global one): its collector,
and the process's CPU, memory and file descriptors.

Names follow Prometheus's rules: the `kvlab_` prefix, base units (seconds, bytes), `_total`
on counters. Labels name routes, statuses, nodes and mechanisms, never a key.

This module is imported at the first scrape, not at start: prometheus_client's exposition
costs ~40 ms to import, and a cluster starts a process per node.

A scrape renders at most once a second (`Exposition`): a render takes ~4 ms of the event
loop, and `/metrics` is open to any client; one asking for it in a loop (two connections,
32 pipelined) took another client's GETs through the proxy from ~1,000/s (p50 0.9 ms) to
4/s (p50 215 ms). Prometheus scrapes every 15 s or so: a second-old answer costs it
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from kvlab.core.detector import Health
from kvlab.core.messages import OpKind, Status
from kvlab.net.histogram import Histogram
from kvlab.net.link import UP

if TYPE_CHECKING:
    from kvlab.net.node import Node
    from kvlab.net.proxy import Proxy


MAX_AGE_S = 1.0  # a scrape this soon after the last one gets the same text


class Exposition:
    """A registry of the process's own (`collector` and the process's resources), rendered
    at most once per MAX_AGE_S in each of two formats: OpenMetrics 1.0.0 if `Accept` names
    it, Prometheus's text format 0.0.4 otherwise. Only these two, whatever version or
    escaping `Accept` asks for (prometheus_client's `choose_encoder` echoes the version
    asked into the content type: one cached text per version would grow without bound)."""

    def __init__(self, collector: Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        self._rendered: dict[bool, tuple[float, bytes]] = {}  # OpenMetrics? -> (when, text)

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition and its content type, for a scraper's `Accept`."""
        open_metrics = "application/openmetrics-text" in accept
        now = time.monotonic()
        rendered = self._rendered.get(open_metrics)
        if rendered is None or now - rendered[0] >= MAX_AGE_S:
            encode = openmetrics.generate_latest if open_metrics else generate_latest
            rendered = self._rendered[open_metrics] = (now, encode(self.registry))
        return rendered[1], (openmetrics.CONTENT_TYPE_LATEST if open_metrics
                             else CONTENT_TYPE_PLAIN_0_0_4)


def _histogram(name: str, doc: str, labels: list[str],
               series: Iterable[tuple[list[str], Histogram]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, histogram in series:
        buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
        family.add_metric(values, buckets, histogram.sum)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(family: CounterMetricFamily | GaugeMetricFamily,
              series: Iterable[tuple[list[str], float]]
              ) -> CounterMetricFamily | GaugeMetricFamily:
    for values, value in series:
        family.add_metric(values, value)
    return family


class ProxyCollector(Collector):
    """The proxy's figures: its HTTP API, quorum outcomes, links, detector, membership."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        proxy = self.proxy
        engine, coord, membership = proxy.engine, proxy.coordinator, proxy.membership
        now = engine.now_ms()
        server = proxy.server
        if server is not None:
            yield _histogram(
                "kvlab_http_request_duration_seconds",
                "Proxy API requests, from received whole to answered, by route ('none': "
                "refused before routing) and HTTP status.",
                ["route", "status"],
                (([route, str(status)], h) for route, timings
                 in sorted(server.router.durations.items())
                 for status, h in sorted(timings.items())))
            yield _gauge("kvlab_http_connections", "Client connections open on the proxy.",
                         len(server.connections))
        yield _labelled(
            CounterMetricFamily(
                "kvlab_quorum_outcomes", "Client operations by kind and how their quorum "
                "ended: ok, not_found (a read quorum found no value), unavailable (too many "
                "replicas failed or held down: 503), timeout (replicas silent at the "
                "deadline: 504).", labels=["op", "outcome"]),
            (([str(kind), str(status)], engine.outcomes[kind].get(status, 0))
             for kind in OpKind for status in Status))
        yield _counter("kvlab_hints_sent", "Hints handed to fallback nodes for replicas that "
                       "missed a write.", coord.hints_sent)
        yield _counter("kvlab_read_repairs_sent", "Newer records a read sent back to the "
                       "replicas that answered with less.", coord.repairs_sent)
        yield _counter("kvlab_writes_restamped", "Writes stamped again above a version a "
                       "replica held.", coord.restamped)
        # The engine's count, not the coordinator's: it keeps an answered operation until
        # every replica is heard (with one down: for the whole timeout).
        yield _gauge("kvlab_operations_pending", "Client operations waiting for their "
                     "outcome (what --max-inflight bounds).", engine.pending)
        yield _counter("kvlab_requests_overloaded", "Requests answered 503 overloaded: the "
                       "proxy had as much in flight as it takes.", proxy.admission.refused)
        yield _gauge("kvlab_write_bytes_in_flight", "Bytes of the values of writes waiting "
                     "for their outcome (what --max-inflight-bytes bounds).",
                     engine.value_bytes)
        yield _gauge("kvlab_ring_version", "Version of the ring the proxy committed to.",
                     membership.topology.version)
        yield _gauge("kvlab_membership_change_active",
                     "1 while a membership change is in progress.",
                     int(membership.change is not None))
        links = [engine.links[n] for n in membership.watched if n in engine.links]
        yield _histogram(
            "kvlab_link_round_trip_seconds",
            "Replica round trips by node: a request sent on the node's link to its reply.",
            ["node"], (([link.name], link.fold_latencies()) for link in links))
        for name, doc, field in (
                ("kvlab_link_messages_sent", "Messages sent to the node (requests and "
                 "control).", "sent"),
                ("kvlab_link_replies", "Replies received from the node.", "replies"),
                ("kvlab_link_errors", "Times the node's link failed or could not connect.",
                 "errors"),
                ("kvlab_link_connects", "Times the node's link connected.", "connects"),
                ("kvlab_link_requests_expired", "Requests dropped unsent: they waited for "
                 "their frame longer than an operation's timeout.", "expired")):
            yield _labelled(CounterMetricFamily(name, doc, labels=["node"]),
                            (([link.name], getattr(link, field)) for link in links))
        yield _labelled(GaugeMetricFamily("kvlab_link_up", "1 if the node's link is "
                                          "connected.", labels=["node"]),
                        (([link.name], int(link.state == UP)) for link in links))
        yield _labelled(
            GaugeMetricFamily("kvlab_node_health", "The failure detector's verdict on each "
                              "node: 1 for the state it is in.", labels=["node", "health"]),
            (([name, str(health)], int(membership.health(name, now) == health))
             for name in membership.watched for health in Health))
        yield _labelled(
            GaugeMetricFamily("kvlab_node_phi", "The failure detector's suspicion of each "
                              "node (phi accrual).", labels=["node"]),
            (([name], membership.detector.phi(name, now)) for name in membership.watched))


class NodeCollector(Collector):
    """A node's figures: its replica's traffic and healing, its store, its peer links."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        replica, store = node.replica, node.store
        s = replica.stats
        held = replica.key_count()
        live = replica.live_keys()
        for name, doc, value in (
                ("kvlab_node_reads", "Read requests answered.", s.reads),
                ("kvlab_node_writes", "Write requests taken (neither superseded nor "
                 "refused).", s.writes),
                ("kvlab_node_writes_superseded", "Writes answered 'superseded': a newer "
                 "version was held.", s.superseded),
                ("kvlab_node_writes_refused", "Writes refused: stamped too far ahead of "
                 "this node's clock.", s.refused),
                ("kvlab_node_requests_refused_not_owner", "Requests for keys no ring of this "
                 "node's version gives it.", s.refused_owner),
                ("kvlab_node_messages_ignored", "Messages refused: from a node that is not "
                 "a peer, or out of bounds.", s.ignored),
                ("kvlab_node_replies_dropped", "Replies for a coordinator whose connection "
                 "had gone.", node.dropped),
                ("kvlab_store_records", "Records stored in SQLite, repairs included.",
                 store.writes),
                ("kvlab_store_batches", "Persist batches made durable.", store.batches),
                ("kvlab_store_commits", "SQLite transactions committed (batches per commit: "
                 "the group commit factor).", store.commits),
                ("kvlab_hints_stored", "Hints this node took to keep for other nodes.",
                 s.hints_stored),
                ("kvlab_hints_replayed", "Hints handed over to their target.",
                 s.hints_replayed),
                ("kvlab_hints_expired", "Hints dropped after the hint window.",
                 s.hints_expired),
                ("kvlab_repair_bytes", "Key and value bytes received through repairs.",
                 s.repair_bytes),
                ("kvlab_anti_entropy_rounds", "Anti-entropy exchanges this node started and "
                 "finished.", s.ae_rounds),
                ("kvlab_anti_entropy_in_sync", "Anti-entropy exchanges that found nothing "
                 "to repair.", s.ae_in_sync),
                ("kvlab_tombstones_purged", "Tombstones dropped once every replica held "
                 "them.", s.purged),
                ("kvlab_stream_records", "Records streamed to new owners during membership "
                 "changes.", s.streamed_keys),
                ("kvlab_stream_bytes", "Bytes streamed to new owners.", s.streamed_bytes),
                ("kvlab_keys_dropped", "Keys dropped after a move: owned elsewhere now.",
                 s.dropped)):
            yield _counter(name, doc, value)
        yield _labelled(
            CounterMetricFamily("kvlab_keys_repaired", "Keys repaired on this node, by "
                                "mechanism (read_repair, hint, anti_entropy, stream).",
                                labels=["mechanism"]),
            (([mechanism], count) for mechanism, count in sorted(s.repaired.items())))
        yield _labelled(
            GaugeMetricFamily("kvlab_hints_held", "Hints kept for each target node.",
                              labels=["target"]),
            (([target], count) for target, count in sorted(replica.hints_held().items())))
        yield _gauge("kvlab_node_keys", "Live keys held (not deleted).", live)
        yield _gauge("kvlab_node_tombstones", "Deleted keys whose tombstones are kept.",
                     held - live)
        yield _gauge("kvlab_node_ring_version", "Version of the ring this node holds.",
                     replica.topology.version)
        yield _gauge("kvlab_node_coordinators", "Coordinator connections open.",
                     len(node.coordinators))
        peers = sorted(node.links.items())
        for name, doc, field in (
                ("kvlab_peer_messages_sent", "Messages sent to the peer.", "sent"),
                ("kvlab_peer_link_errors", "Times the peer's link failed or could not "
                 "connect.", "errors"),
                ("kvlab_peer_link_connects", "Times the peer's link connected.", "connects")):
            yield _labelled(CounterMetricFamily(name, doc, labels=["peer"]),
                            (([peer], getattr(link, field)) for peer, link in peers))
        yield _labelled(GaugeMetricFamily("kvlab_peer_link_up", "1 if the peer's link is "
                                          "connected.", labels=["peer"]),
                        (([peer], int(link.state == UP)) for peer, link in peers))
