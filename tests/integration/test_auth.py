"""The cluster's secret on a real cluster: what a local user without it can't do.

One 3-node cluster for the module. The attacks speak raw HTTP/1.1 over a socket, as a
hostile local client would; kvlab's own client shows that the secret opens the same doors.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from kvlab.client import KV, AsyncKV, KVError
from kvlab.cluster.ports import free_port_block
from kvlab.cluster.spec import cluster_dir
from kvlab.cluster.supervisor import Cluster
from tests.cluster_helpers import eventually, real_cluster, secret

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(module_home: str) -> Iterator[Cluster]:
    with real_cluster(nodes=3) as cluster:
        yield cluster


def raw(cluster: Cluster, method: str, path: str, body: bytes = b"",
        headers: dict[str, str] | None = None, port: int | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    """One request, byte for byte, on its own connection: (status, headers, body)."""
    fields = {"Host": cluster.spec.host, "Content-Length": str(len(body)),
              "Connection": "close", **(headers or {})}
    head = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in fields.items())]
    with socket.create_connection((cluster.spec.host, port or cluster.proxy.port), 5) as sock:
        sock.sendall("\r\n".join(head).encode("utf-8") + b"\r\n\r\n" + body)
        received = b""
        while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
            received += chunk
        header_block, _, answer = received.partition(b"\r\n\r\n")
        status_line, *lines = header_block.decode("latin-1").split("\r\n")
        got = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
        while len(answer) < int(got.get("content-length", 0)) and (chunk := sock.recv(65536)):
            answer += chunk
    return int(status_line.split()[1]), got, answer


def _listen_once_free(host: str, port: int) -> socket.socket:
    """A socket listening on `port`, once the process killed there has let it go."""
    bound: list[socket.socket] = []

    def bind() -> bool:
        try:
            bound.append(socket.create_server((host, port)))
        except OSError:
            return False
        return True

    eventually(bind, 5, f"port {port} free")
    return bound[0]


def assert_unauthorized(answer: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = answer
    assert status == 401, (status, body)
    assert headers["www-authenticate"] == "Bearer"
    assert json.loads(body)["error"] == "unauthorized"


def ring(cluster: Cluster) -> list[str]:
    with KV(cluster.url) as kv:
        view = kv.cluster()
    assert view.membership.change is None
    return [n.name for n in view.nodes]


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
        assert kv.cluster().nodes[0].partitioned is None
        with pytest.raises(KVError) as refused:
            kv.partition("n1")
        assert refused.value.status == 401
        kv.set("after the attack", "stored")
        assert kv.get("after the attack", r=3) == "stored"  # every link up, n1's too
    with KV(cluster.url, secret=secret(cluster)) as kv:
        assert kv.partition("n1").partitioned == "both"
        assert kv.partition("n1", False).partitioned is None


def test_a_node_refuses_its_channel_and_routes_without_the_secret(cluster):
    node = cluster.nodes[0]
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    # Neither as a coordinator nor as a peer: no RingUpdate, StreamOrder or write gets in.
    for path in ("/replica", "/replica?from=n2"):
        for presented in ({}, {"Authorization": "Bearer " + "x" * 43}):
            status, headers, body = raw(cluster, "GET", path, port=node.port,
                                        headers={**upgrade, **presented})
            assert status == 401 and "upgrade" not in headers, (path, status, headers)
            assert json.loads(body)["error"] == "unauthorized"
    assert_unauthorized(raw(cluster, "GET", "/stats", port=node.port))
    status, _, body = raw(cluster, "GET", "/health", port=node.port)
    assert status == 200 and json.loads(body)["node"] == node.name
    # The cluster's own links show it: the proxy's to each node, and the nodes' to each other.
    status, headers, _ = raw(cluster, "GET", "/replica", port=node.port,
                             headers={**upgrade, "Authorization": f"Bearer {secret(cluster)}"})
    assert status == 101 and headers["upgrade"].lower() == "websocket"
    with KV(cluster.url) as kv:
        assert all(n.state == "up" for n in kv.cluster().nodes)
    peers = json.loads(raw(cluster, "GET", "/health", port=cluster.nodes[1].port)[2])["peers"]
    assert peers == {"n1": "up", "n3": "up"}


def test_whoever_takes_a_dead_nodes_port_learns_nothing_it_can_use(cluster):
    """The proxy and the peers reconnect to a node that is down for as long as it is a
    member: a local user listening on the port it left heard the secret itself."""
    node = cluster.nodes[0]
    cluster.kill(node.name)
    heard: list[str] = []
    with _listen_once_free(cluster.spec.host, node.port) as squatter:
        squatter.settimeout(5)
        # The proxy's link and both peers' links come knocking within a second or so.
        while len({h.split(" ", 2)[1] for h in heard}) < 3:
            conn, _ = squatter.accept()
            with conn:
                conn.settimeout(2)
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                    head += chunk
                heard.append(head.decode("latin-1"))
    assert all(secret(cluster) not in h for h in heard), heard[0]
    proofs = [line.split(": ", 1)[1] for h in heard for line in h.split("\r\n")
              if line.lower().startswith("authorization:")]
    assert len(proofs) == len(heard)
    cluster.restart(node.name)
    # What it heard opens nothing on the node that takes the port back, nor elsewhere.
    for presented in proofs[:2]:
        assert_unauthorized(raw(cluster, "GET", "/stats", port=node.port,
                                headers={"Authorization": presented}))
        assert_unauthorized(raw(cluster, "GET", "/stats", port=cluster.nodes[1].port,
                                headers={"Authorization": presented}))
    with KV(cluster.url) as kv:
        eventually(lambda: all(n.state == "up" for n in kv.cluster().nodes),
                   message="the proxy's link to the restarted node")
    eventually(lambda: json.loads(raw(cluster, "GET", "/health", port=cluster.nodes[1].port)[2])
               ["peers"]["n1"] == "up", message="the peers' links to the restarted node")


def test_whoever_takes_a_dead_nodes_port_cannot_play_that_node(cluster):
    """A WebSocket upgrade proves nothing: a listener on a dead node's port that accepted the
    channel was taken for the node (the proxy sent it the ring, then writes, and took its
    replies and stream reports)."""
    node = cluster.nodes[2]
    cluster.kill(node.name)
    first: list[str] = []  # what each link did once its channel was open
    with _listen_once_free(cluster.spec.host, node.port) as impostor:
        impostor.settimeout(5)
        for _ in range(3):  # the proxy's link and both peers'
            conn, _ = impostor.accept()
            with conn:
                conn.settimeout(3)
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                    head += chunk
                key = next(line.split(b": ", 1)[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"sec-websocket-key:"))
                accept = base64.b64encode(hashlib.sha1(
                    key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                             b"\r\n\r\n" + b"\x81\x40" + b"0" * 64)  # a text frame, not the answer
                try:
                    frame = conn.recv(2)
                    first.append({b"": "eof"}.get(frame, {8: "close", 2: "binary"}.get(
                        frame[0] & 0x0F, "other") if frame else "eof"))
                except TimeoutError:
                    first.append("silence")
    assert first == ["close"] * 3, first
    cluster.restart(node.name)
    with KV(cluster.url) as kv:
        eventually(lambda: all(n.state == "up" for n in kv.cluster().nodes),
                   message="the proxy's link to the restarted node")


def test_whoever_listens_where_the_proxy_was_learns_nothing_it_can_use(cluster):
    """kvlab's client (the CLI's, the dashboard's) calls the proxy's URL whether the proxy
    runs or not: `kvlab set` sent the secret to whoever listened there."""
    heard: list[str] = []
    with socket.create_server((cluster.spec.host, 0)) as squatter:
        url = f"http://{cluster.spec.host}:{squatter.getsockname()[1]}"

        def answer_once() -> None:
            conn, _ = squatter.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                    head += chunk
                heard.append(head.decode("latin-1"))
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

        async def async_set() -> None:
            async with AsyncKV(url, secret=secret(cluster)) as kv:
                await kv.set("k", "v")

        for send in (lambda: KV(url, secret=secret(cluster)).set("k", "v"),
                     lambda: asyncio.run(async_set())):
            listener = threading.Thread(target=answer_once)
            listener.start()
            with pytest.raises(KVError):
                send()
            listener.join(5)
    assert len(heard) == 2 and all(secret(cluster) not in h for h in heard), heard
    for h in heard:
        presented = next(line.split(": ", 1)[1] for line in h.split("\r\n")
                         if line.lower().startswith("authorization:"))
        assert_unauthorized(raw(cluster, "DELETE", "/cluster/change",
                                headers={"Authorization": presented}))
    # What kvlab's client sends the real proxy opens its doors, as the secret does.
    with KV(cluster.url, secret=secret(cluster)) as kv:
        assert kv.partition("n2").partitioned == "both"
        assert kv.partition("n2", False).partitioned is None


def test_the_data_api_is_open_by_default(cluster):
    status, _, body = raw(cluster, "POST", "/set", b'{"key": "open", "value": "v"}')
    assert (status, body) == (200, b"OK")
    assert raw(cluster, "GET", "/kv/open")[2] == b"v"
    assert raw(cluster, "GET", "/cluster/keys/open")[0] == 200


def test_protect_data_guards_the_data_api_too(module_home):
    with real_cluster(nodes=1, replicas=1, read_quorum=1, write_quorum=1,
                      protect_data=True) as cluster:
        for method, path, body in (("POST", "/set", b'{"key": "k", "value": "v"}'),
                                   ("GET", "/get?key=k", b""), ("DELETE", "/delete?key=k", b""),
                                   ("PUT", "/kv/k", b"v"), ("GET", "/kv/k", b""),
                                   ("DELETE", "/kv/k", b""), ("GET", "/cluster/keys/k", b"")):
            assert_unauthorized(raw(cluster, method, path, body))
        assert raw(cluster, "GET", "/health")[0] == 200  # and what the dashboard polls
        assert raw(cluster, "GET", "/cluster")[0] == 200
        with KV(cluster.url, secret=secret(cluster)) as kv:
            kv.set("k", "v")
            assert kv.get("k") == "v" and kv.inspect("k").replicas[0].value == "v"
        # kvlab's own commands send it; with --url alone, a clear error and no traceback.
        cli = [sys.executable, "-m", "kvlab", "get", "k"]
        out = subprocess.run([*cli, "--name", cluster.spec.name], capture_output=True,
                             text=True, timeout=30)
        assert (out.returncode, out.stdout) == (0, "v\n"), out.stderr
        out = subprocess.run([*cli, "--name", "other", "--url", cluster.url],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and "secret" in out.stderr and "Traceback" not in out.stderr


def test_what_a_cluster_keeps_on_disk_is_its_owners_alone(cluster):
    with KV(cluster.url) as kv:
        kv.set("on disk", "v")  # so that every node has its database, WAL and all
    files, folders = [], [cluster.dir]
    for path in cluster.dir.rglob("*"):
        (folders if path.is_dir() else files).append(path)
    names = {p.name for p in files}
    assert {"cluster.json", "data.db", "data.db-wal", "data.db-shm", "node.log",
            "proxy.log"} <= names, names
    loose = [f"{p.relative_to(cluster.dir)} {oct(stat.S_IMODE(p.stat().st_mode))}"
             for p in files if stat.S_IMODE(p.stat().st_mode) != 0o600]
    loose += [f"{p.relative_to(cluster.dir)}/ {oct(stat.S_IMODE(p.stat().st_mode))}"
              for p in folders if stat.S_IMODE(p.stat().st_mode) != 0o700]
    assert loose == []


def test_a_folder_left_open_by_an_older_kvlab_is_closed_by_up(module_home):
    # An older kvlab made the cluster's folder 0755 and its databases 0644: umask and 0600
    # only cover the files made now, so the old ones stayed readable by every user.
    folder = cluster_dir("old")
    (folder / "n1").mkdir(mode=0o755, parents=True)
    folder.chmod(0o755)
    (folder / "n1" / "data.db").write_bytes(b"")
    (folder / "n1" / "data.db").chmod(0o644)
    with real_cluster(name="old", nodes=1, replicas=1, read_quorum=1, write_quorum=1):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
