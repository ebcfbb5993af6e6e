"""A damaged replica database, on real files: the node says why in failed.json and exits 3.

At start (a header or a page overwritten): before it listens, fast. At run time (pages of a
running node's database overwritten, then keys read through the proxy): it stops answering,
closes its channels, and the proxy sees it down rather than a link that resets in a loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvlab.client import KV
from kvlab.client.protocol import NodeInfo
from kvlab.cluster.process import wait_until
from kvlab.core.messages import Persist
from kvlab.core.record import Record
from kvlab.core.version import Version
from kvlab.storage.sqlite import SqliteStore
from tests.cluster_helpers import eventually, real_cluster

PAGE = 4096  # SQLite's default page size, which kvlab keeps
GARBAGE = bytes(range(256)) * (PAGE // 256)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fill(path: Path, keys: int) -> None:
    """A node's database holding `keys` records (closed: the WAL is checkpointed into it)."""
    store = SqliteStore(path)
    records = [Record(f"key-{i:05d}", b"v" * 100, Version(1_700_000_000_000, 0, "p"))
               for i in range(keys)]

    async def write() -> None:
        await store.write(Persist(1, records, [], [], []))

    asyncio.run(write())
    store.close()


def _overwrite_pages(path: Path, pages: list[int]) -> None:
    """Overwrite whole pages (numbered from 1, as SQLite does) with garbage."""
    with open(path, "r+b") as f:
        for page in pages:
            f.seek((page - 1) * PAGE)
            f.write(GARBAGE)


def _page_count(path: Path) -> int:
    return path.stat().st_size // PAGE


def _start_node(data: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvlab.net.node", "--name", "n1", "--port", str(_free_port()),
         "--data", str(data)], capture_output=True, text=True, timeout=20, cwd=data)


def _failed(data: Path) -> dict:
    return json.loads((data / "failed.json").read_text())


def test_a_database_that_is_not_one_fails_the_start_with_status_3(tmp_path: Path) -> None:
    _fill(tmp_path / "data.db", 10)
    _overwrite_pages(tmp_path / "data.db", [1])  # the header and the schema
    began = time.time()
    done = _start_node(tmp_path)
    assert done.returncode == 3, done.stderr
    failed = _failed(tmp_path)
    assert "file is not a database" in failed["reason"]
    assert began - 1 <= failed["since"] <= time.time() + 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "file is not a database" in lines[0], done.stderr
    assert "kvlab wipe n1" in lines[0]


def test_a_damaged_page_fails_the_start_with_status_3(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    _fill(path, 3000)  # ~100 pages: a root over many leaves
    with sqlite3.connect(path) as db:
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'records'"
                          ).fetchone()[0]
    _overwrite_pages(path, [root])
    done = _start_node(tmp_path)
    assert done.returncode == 3, done.stderr
    assert "malformed" in _failed(tmp_path)["reason"]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_sound_database_starts_and_a_stale_failed_file_goes(tmp_path: Path) -> None:
    _fill(tmp_path / "data.db", 10)
    (tmp_path / "failed.json").write_text('{"reason": "repaired since", "since": 1}')
    port = _free_port()
    node = subprocess.Popen([sys.executable, "-m", "kvlab.net.node", "--name", "n1",
                             "--port", str(port), "--data", str(tmp_path)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        eventually(lambda: not (tmp_path / "failed.json").exists() or node.poll() is not None,
                   10, "the node to start")
        assert node.poll() is None
    finally:
        node.terminate()
        node.wait(10)


def _node_view(kv: KV, name: str) -> NodeInfo:
    return next(n for n in kv.cluster().nodes if n.name == name)


@pytest.mark.slow
def test_a_database_damaged_at_run_time_ends_its_node_and_the_proxy_sees_it_down(
        kvlab_home: Path) -> None:
    with real_cluster(nodes=3) as cluster, KV(cluster.url) as kv:
        keys = [f"key-{i:05d}" for i in range(500)]
        for key in keys:
            kv.set(key, "v" * 100)
        folder = cluster.dir / "n3"
        pid = cluster.node("n3").proc.pid
        path = folder / "data.db"
        with sqlite3.connect(path) as db:  # every record in the file, none only in the WAL
            assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        _overwrite_pages(path, list(range(2, _page_count(path) + 1)))

        def failed() -> bool:
            for key in keys[:50]:  # reads (and a write) meet the damaged pages
                kv.get(key)
            kv.set("touch", "x")
            return (folder / "failed.json").exists()

        eventually(failed, 10, "n3 to give up on its database")
        assert "malformed" in _failed(folder)["reason"]
        eventually(lambda: not cluster.node("n3").proc.alive(), 5, f"n3 (pid {pid}) to exit")
        eventually(lambda: _node_view(kv, "n3").health == "down", 10,
                   "the proxy to see n3 down")
        errors = _node_view(kv, "n3").errors
        # A link that reset in a loop counted an error per reset; one gone counts once.
        assert not wait_until(lambda: _node_view(kv, "n3").errors > errors + 1, 1.0)
        assert _node_view(kv, "n3").state == "down"
        assert kv.get(keys[0]) == "v" * 100  # the two other replicas serve on
