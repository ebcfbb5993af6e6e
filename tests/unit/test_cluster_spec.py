"""A cluster's spec: old cluster.json files, the `kvlab up` healing flags, and what the
supervisor tells each process it starts (no process is started here)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kvlab.cli import build_parser
from kvlab.cli.options import spec_from
from kvlab.cluster import supervisor
from kvlab.cluster.process import Held, Proc
from kvlab.cluster.spec import ClusterSpec
from kvlab.cluster.supervisor import Cluster

# What `kvlab up` wrote before the healing settings existed.
OLD = {"name": "old", "nodes": 5, "replicas": 3, "write_quorum": 2, "read_quorum": 2,
       "port": 8000, "vnodes": 64, "durability": "fsync", "timeout_ms": 1000,
       "host": "127.0.0.1"}


def test_an_old_cluster_json_loads_with_the_healing_defaults():
    spec = ClusterSpec.from_json(OLD)
    assert (spec.hints, spec.anti_entropy, spec.anti_entropy_s, spec.sloppy) == (
        True, True, 5.0, False)
    assert (spec.tombstone_grace_s, spec.hint_window_s) == (86_400, 10_800)
    assert ClusterSpec.from_json(spec.to_json()) == spec
    assert ClusterSpec.from_json({**OLD, "from_the_future": 1}).name == "old"


@pytest.mark.parametrize("bad", [{"sloppy": True, "hints": False}, {"anti_entropy_s": 0},
                                 {"tombstone_grace_s": -1}, {"hint_window_s": -1}])
def test_impossible_healing_settings_are_refused(bad):
    with pytest.raises(ValueError):
        ClusterSpec(**bad)


def parse_up(*argv: str) -> ClusterSpec:
    return spec_from(build_parser().parse_args(["up", *argv]))


def test_up_flags_make_the_spec():
    assert parse_up() == ClusterSpec()
    spec = parse_up("--sloppy", "--anti-entropy", "0.5", "--tombstone-grace", "1",
                    "--hint-window", "2", "--max-clock-ahead", "3")
    assert (spec.sloppy, spec.anti_entropy, spec.anti_entropy_s) == (True, True, 0.5)
    assert (spec.tombstone_grace_s, spec.hint_window_s, spec.max_clock_ahead_s) == (1, 2, 3)
    spec = parse_up("--hints", "off", "--anti-entropy", "off")
    assert (spec.hints, spec.anti_entropy, spec.anti_entropy_s) == (False, False, 5.0)


def test_bad_up_flags_are_usage_errors(capsys):
    from kvlab.cli import UsageError

    for argv in (["--hints", "maybe"], ["--anti-entropy", "-1"], ["--hint-window", "x"]):
        with pytest.raises(SystemExit) as exit_:
            parse_up(*argv)
        assert exit_.value.code == 2
    with pytest.raises(UsageError, match="needs hints on"):
        parse_up("--sloppy", "--hints", "off")


def test_each_process_is_told_the_healing_settings_and_its_peers(kvlab_home: Path, monkeypatch):
    spawned: dict[str, list[str]] = {}
    envs: dict[str, dict[str, str]] = {}

    def spawn(module: str, argv: list[str], log: Path, cwd: Path, env: dict[str, str]
              ) -> Held:
        spawned[log.parent.name], envs[log.parent.name] = argv, env
        return Held(Proc(0, 0), io.BytesIO())

    monkeypatch.setattr(supervisor.Proc, "spawn", staticmethod(spawn))
    spec = ClusterSpec(name="argv", nodes=3, port=9000, sloppy=True, anti_entropy_s=0.5,
                       tombstone_grace_s=1, hint_window_s=2, max_clock_ahead_s=3)
    cluster = Cluster.new(spec)
    for node in cluster.nodes:
        cluster._spawn_node(node)
    cluster._spawn_proxy(clock_offset_ms=-5000)

    def flags(argv: list[str], name: str) -> list[str]:
        return [argv[i + 1] for i, a in enumerate(argv) if a == name]

    n1 = spawned["n1"]
    assert flags(n1, "--peer") == ["n2=http://127.0.0.1:9002", "n3=http://127.0.0.1:9003"]
    assert (flags(n1, "--hints"), flags(n1, "--anti-entropy")) == (["on"], ["on"])
    assert flags(n1, "--anti-entropy-interval") == ["0.5"]
    assert (flags(n1, "--tombstone-grace"), flags(n1, "--hint-window")) == (["1"], ["2"])
    assert (flags(n1, "--replicas"), flags(n1, "--vnodes")) == (["3"], ["64"])
    assert flags(n1, "--max-clock-ahead") == flags(spawned["proxy"], "--max-clock-ahead") == ["3"]
    proxy = spawned["proxy"]
    assert "--sloppy" in proxy and flags(proxy, "--hints") == ["on"]
    assert flags(proxy, "--state") == [str(cluster.dir / "proxy")]
    assert flags(proxy, "--clock-offset-ms") == ["-5000"]
    # The secret goes in the environment, never on argv (which every local user can read).
    assert len(cluster.secret) >= 40 and set(envs) == {"n1", "n2", "n3", "proxy"}
    assert all(env == {"KVLAB_SECRET": cluster.secret} for env in envs.values())
    assert not any(cluster.secret in arg for argv in spawned.values() for arg in argv)
    assert "--protect-data" not in proxy
