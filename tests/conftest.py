"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def kvlab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private $KVLAB_HOME, so tests never touch ~/.kvlab or each other."""
    home = tmp_path / "kvlab-home"
    monkeypatch.setenv("KVLAB_HOME", str(home))
    yield home


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("kvlab-home")
    old = os.environ.get("KVLAB_HOME")
    os.environ["KVLAB_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("KVLAB_HOME", None)
    else:
        os.environ["KVLAB_HOME"] = old
