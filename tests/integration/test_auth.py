"""The cluster's secret on a real cluster: what a local user without it can't do.

One 3-node cluster for the module. The attacks speak raw HTTP/1.1 over a socket, as a
hostile local client would; kvlab's own client shows that the secret opens the same doors.
"""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator

import pytest

from kvlab.client import KV, KVError
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.supervisor import Cluster
from tests.cluster_helpers import real_cluster, secret

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(module_home: str) -> Iterator[Cluster]:
    with real_cluster(nodes=3) as cluster:
        yield cluster


def raw(cluster: Cluster, method: str, path: str, body: bytes = b"",
        headers: dict[str, str] | None = None, port: int | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    """One request, byte for byte, on its own connection: (status, headers, body)."""
    head = [f"{method} {path} HTTP/1.1", f"Host: {cluster.spec.host}",
            f"Content-Length: {len(body)}", "Connection: close",
            *(f"{name}: {value}" for name, value in (headers or {}).items())]
    with socket.create_connection((cluster.spec.host, port or cluster.proxy.port), 5) as sock:
        sock.sendall("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    header_block, _, answer = received.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, answer


def assert_unauthorized(answer: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = answer
    assert status == 401, (status, body)
    assert headers["www-authenticate"] == "Bearer"
    assert json.loads(body)["error"] == "unauthorized"


def ring(cluster: Cluster) -> list[str]:
    with KV(cluster.url) as kv:
        view = kv.cluster()
    assert view["membership"]["change"] is None
    return [n["name"] for n in view["nodes"]]


def test_a_rogue_node_is_not_let_in_without_the_secret_or_with_a_wrong_one(cluster):
    rogue = json.dumps({"name": "n9",
                        "url": f"http://127.0.0.1:{free_port_block(1)}"}).encode()
    assert_unauthorized(raw(cluster, "POST", "/cluster/nodes", rogue))
    for wrong in ("Bearer " + "x" * 43, "Bearer " + secret(cluster)[:-1], "Bearer",
                  secret(cluster), "Basic " + secret(cluster), "Bearer ünï"):
        assert_unauthorized(raw(cluster, "POST", "/cluster/nodes", rogue,
                                {"Authorization": wrong}))
    # Nor can it take a member's place, or push one out, or give up a change.
    assert_unauthorized(raw(cluster, "POST", "/cluster/nodes/n1/replace", rogue))
    assert_unauthorized(raw(cluster, "DELETE", "/cluster/nodes/n1"))
    assert_unauthorized(raw(cluster, "DELETE", "/cluster/change"))
    assert ring(cluster) == ["n1", "n2", "n3"]


def test_the_secret_opens_the_control_routes(cluster):
    bearer = {"Authorization": f"Bearer {secret(cluster)}"}
    # Past the check, the route answers as ever: nothing to abort; N=3 of 3 nodes.
    status, _, body = raw(cluster, "DELETE", "/cluster/change", headers=bearer)
    assert status == 404 and json.loads(body)["error"] == "not_found"
    lower = {"authorization": f"bearer {secret(cluster)}"}  # scheme and name: any case
    status, _, body = raw(cluster, "DELETE", "/cluster/nodes/n1", headers=lower)
    assert status == 409 and "fewer than N=3" in json.loads(body)["message"]


def test_a_link_is_not_cut_without_the_secret(cluster):
    cut = b'{"partitioned": true, "direction": "both"}'
    assert_unauthorized(raw(cluster, "PUT", "/cluster/faults/n1", cut))
    with KV(cluster.url) as kv:
        assert kv.cluster()["nodes"][0]["partitioned"] is None
        with pytest.raises(KVError) as refused:
            kv.partition("n1")
        assert refused.value.status == 401
        kv.set("after the attack", "stored")
        assert kv.get("after the attack", r=3) == "stored"  # every link up, n1's too
    with KV(cluster.url, secret=secret(cluster)) as kv:
        assert kv.partition("n1")["partitioned"] == "both"
        assert kv.partition("n1", False)["partitioned"] is None


def test_the_secret_is_kept_in_a_file_only_its_owner_can_read(cluster):
    mode = stat.S_IMODE((cluster.dir / "cluster.json").stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(cluster.dir.stat().st_mode) == 0o700
