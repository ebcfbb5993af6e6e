"""The introspection API's types (kvlab.client.protocol): what the core reports fits them,
field for field, and an answer that does not fit is refused with the field it got wrong."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest

from kvlab.client import KV, BadAnswer, KVError
from kvlab.client.protocol import (
    ChangeInfo,
    ClusterInfo,
    HealingInfo,
    KeyInfo,
    MembershipInfo,
    RingInfo,
    answer,
)
from kvlab.core.coordinator import Quorum
from kvlab.core.replica import ReplicaConfig
from kvlab.core.ring import Ring
from kvlab.tui.source import _ring
from tests.unit.core_harness import CoreCluster


def as_json(data: object) -> object:
    """`data` as it arrives over HTTP (tuples become lists)."""
    return json.loads(json.dumps(data))


def typed(data: object, kind: type) -> object:
    """`data` decoded as `kind` and back to JSON: equal to `data` iff every field is typed
    (a field the type lacks would be dropped, one it has that `data` lacks refused)."""
    return json.loads(msgspec.json.encode(msgspec.json.decode(json.dumps(data), type=kind)))


def test_the_cores_membership_view_is_typed_field_for_field_during_and_after_a_change():
    c = CoreCluster(Quorum(3, 2, 2), nodes=("n1", "n2", "n3"))
    c.write_all([f"k{i}" for i in range(50)])
    c.join("n4")
    c.apply("p", c.membership.add("n4", c.now))
    c.tick(200)
    during = as_json(c.membership.view(c.now))
    assert during["change"] is not None and during["change"]["moving"]
    assert typed(during, MembershipInfo) == during
    c.finish_change()
    after = as_json(c.membership.view(c.now))
    assert after["change"] is None and after["last_change"]["phase"] == "done"
    assert typed(after, MembershipInfo) == after
    assert typed(after["last_change"], ChangeInfo) == after["last_change"]


def test_a_replicas_healing_counters_are_typed_field_for_field_with_exchanges():
    c = CoreCluster(Quorum(3, 2, 2), nodes=("n1", "n2", "n3"),
                    config=ReplicaConfig(n=3, anti_entropy_ms=1_000))
    c.write_all([f"k{i}" for i in range(30)])
    c.wipe("n3")  # a lost disk: anti-entropy refills it, and the exchanges say so
    c.restart("n3")
    c.tick(3_000)
    snapshots = [as_json(r.snapshot(c.now)) for r in c.replicas.values()]
    assert any(s["exchanges"] for s in snapshots), "no exchange repaired anything"
    for snapshot in snapshots:
        assert typed(snapshot, HealingInfo) == snapshot


@pytest.mark.parametrize("body, says", [
    (b'{"key": 7, "replicas": []}', "Expected `str`, got `int` - at `$.key`"),
    (b'{"key": "k"}', "missing required field `replicas`"),
    (b'{"key": "k", "replicas": [{"node": "n1"}]}', "`state` - at `$.replicas[0]`"),
    (b"<html>not JSON</html>", "JSON"),
])
def test_an_answer_that_does_not_fit_is_refused_with_what_is_wrong(body, says):
    with pytest.raises(BadAnswer) as refused:
        answer(200, body, KeyInfo, "the proxy at http://127.0.0.1:1/cluster/keys/k")
    assert says in str(refused.value)
    assert "the proxy at http://127.0.0.1:1/cluster/keys/k" in str(refused.value)
    assert "KeyInfo" in str(refused.value)


def test_an_error_answer_is_the_servers_error_not_a_bad_answer():
    body = b'{"error": "conflict", "message": "a change is in progress"}'
    with pytest.raises(KVError) as refused:
        answer(409, body, ClusterInfo)
    assert not isinstance(refused.value, BadAnswer)
    assert refused.value.status == 409 and str(refused.value) == "a change is in progress"


def test_the_client_refuses_a_server_that_is_not_a_kvlab_proxy():
    class Impostor(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"proxy": "me", "n": "three"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Impostor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with KV(url) as kv, pytest.raises(BadAnswer) as refused:
            kv.cluster()
        assert f"{url}/cluster" in str(refused.value) and "$.proxy" in str(refused.value)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_dashboard_reads_a_decoded_ring_with_its_seats() -> None:
    # The dashboard converts the decoded answer back with msgspec.to_builtins, which keeps
    # a seat a tuple: the seats were dropped, and keys placed on the wrong tokens.
    info = msgspec.json.decode(b'{"nodes": ["n1", "n2", "n4"], "vnodes": 8, '
                               b'"seats": [["n4", "n3"]]}', type=RingInfo)
    ring = _ring(msgspec.to_builtins(info))
    assert ring is not None and ring.seats == (("n4", "n3"),)
    assert ring == Ring(("n1", "n2", "n4"), 8, seats=(("n4", "n3"),))
