"""The import-linter contracts in pyproject.toml hold: `python -m pytest` alone enforces them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def lint_imports() -> str | None:
    """The `lint-imports` beside this interpreter (its own environment) or else on PATH."""
    name = "lint-imports.exe" if os.name == "nt" else "lint-imports"
    beside = Path(sysconfig.get_path("scripts")) / name
    return str(beside) if beside.exists() else shutil.which(name)


def test_import_contracts_are_kept():
    command = lint_imports()
    if command is None:
        pytest.skip("lint-imports is not installed (pip install -e '.[test]')")
    # Run from the project root: that is where lint-imports finds [tool.importlinter].
    proc = subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"import contracts broken:\n{proc.stdout}\n{proc.stderr}"
