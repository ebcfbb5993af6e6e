from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kvlab.cluster.supervisor import Cluster
from tests.cluster_helpers import real_cluster


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = str(tmp_path_factory.mktemp("kvlab-home"))
    old = os.environ.get("KVLAB_HOME")
    os.environ["KVLAB_HOME"] = home
    yield home
    if old is None:
        os.environ.pop("KVLAB_HOME", None)
    else:
        os.environ["KVLAB_HOME"] = old


@pytest.fixture(scope="module")
def cluster5(module_home: str) -> Iterator[Cluster]:
    """One 5-node N=3 R=2 W=2 cluster shared by a test module."""
    with real_cluster(nodes=5) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster3(module_home: str) -> Iterator[Cluster]:
    with real_cluster(nodes=3) as cluster:
        yield cluster
