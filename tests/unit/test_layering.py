"""The protocol core must stay free of IO: importing it loads no network, UI or disk layer."""

import subprocess
import sys

FORBIDDEN = ("aiohttp", "textual", "asyncio", "sqlite3", "socket", "selectors")


def test_core_imports_no_io_modules():
    code = (
        "import sys, pkgutil, importlib, kvlab.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('kvlab.core.' + m.name)\n"
        f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"kvlab.core pulled in: {out.stdout.strip()}"


def test_core_never_reads_the_wall_clock_or_global_random():
    import pathlib

    import kvlab.core

    for path in pathlib.Path(kvlab.core.__file__).parent.glob("*.py"):
        text = path.read_text()
        for banned in ("import time", "from time", "import random", "datetime"):
            assert banned not in text, f"{path.name} uses {banned}"
