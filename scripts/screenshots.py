"""Regenerate screenshots/*.png from the real dashboard on a real local cluster.

    python scripts/screenshots.py [--out screenshots]     (or: just screenshots)

Starts a 5-node cluster in a temporary $KVLAB_HOME on free ports, drives the dashboard
headless through a story (healthy under traffic, a replica killed, its copy healed by hints
after a restart with no read, a partition, a node joining with its ranges in motion, the help
screen, the same at 80x24), and converts each SVG screenshot to PNG with `rsvg-convert`
(Debian: apt-get install librsvg2-bin).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE = (120, 36)
KEY = "user:42"
# Keys written before the story, and how fast a source streams them to a joining node: slow
# enough for the move to be on screen for several seconds.
PRELOAD, VALUE_BYTES, STREAM_MB_S = 3000, 200, 0.01


async def story(out: Path, svgs: Path) -> list[Path]:
    from kvlab.client import AsyncKV
    from kvlab.cluster.ports import free_port_block
    from kvlab.cluster.spec import ClusterSpec
    from kvlab.tui.app import make_app
    from kvlab.tui.live import LiveSource, attach_or_start
    from kvlab.tui.widgets.inspector import KeyInspector, verdicts

    spec = ClusterSpec(name="demo", nodes=5, port=free_port_block(7), durability="none",
                       stream_rate_mb_s=STREAM_MB_S)
    made: list[Path] = []
    with attach_or_start(spec, announce=print) as (cluster, _):
        async with AsyncKV(cluster.url, secret=cluster.secret) as kv:
            for i in range(PRELOAD):
                await kv.set(f"item:{i}", "x" * VALUE_BYTES)
        app = make_app(LiveSource(spec.name), poll_s=0.5, inspect_s=0.5)
        async with app.run_test(size=SIZE) as pilot:

            async def until(condition, timeout_s: float = 15.0) -> None:
                deadline = time.monotonic() + timeout_s
                while not condition():
                    if time.monotonic() > deadline:
                        raise SystemExit("screenshots: the dashboard never got there")
                    await pilot.pause(0.1)

            async def settle(seconds: float) -> None:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    await pilot.pause(0.1)

            def shot(name: str) -> None:
                svg = svgs / f"{name}.svg"
                # rsvg collapses the leading non-breaking spaces of each text run otherwise.
                svg.write_text(app.export_screenshot(title="kvlab")
                               .replace("<svg ", '<svg xml:space="preserve" ', 1))
                png = out / f"{name}.png"
                subprocess.run(["rsvg-convert", str(svg), "-o", str(png)], check=True)
                made.append(png)
                print(f"wrote {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")

            def copies() -> list[str]:
                view = app.query_one(KeyInspector).view
                return [verdict for _, verdict in verdicts(view)] if view else []

            await until(lambda: app.view is not None and all(
                n.state == "up" for n in app.view.nodes))
            await pilot.press("plus", "t")  # 200 ops/s
            await pilot.press("slash", *KEY, "enter")
            await pilot.press("u")
            await until(lambda: copies() == ["current"] * 3)
            await settle(6)
            shot("healthy-under-traffic")

            victim = app.view.ring.preference_list(KEY, app.view.n)[1]
            await pilot.press(victim[1:], "k")
            await until(lambda: app.view.node(victim).state == "down")
            await pilot.press("u")
            await until(lambda: "unreachable" in copies())
            await settle(4)
            shot("node-killed")

            # Restarted, it gets the writes it missed from the hints its neighbours kept:
            # current again with no read at all, and the event log says who handed what.
            await pilot.press("r")
            await until(lambda: app.view.node(victim).state == "up")
            await until(lambda: copies() == ["current"] * 3)
            await settle(2)
            shot("healed-by-hints")

            cut = app.view.ring.preference_list(KEY, app.view.n)[2]
            await pilot.press(cut[1:], "x")
            await until(lambda: app.view.node(cut).partitioned)
            await pilot.press("u")
            await settle(3)
            shot("partitioned")
            await pilot.press("x")
            await until(lambda: not app.view.node(cut).partitioned)

            def streaming() -> bool:
                change = app.view.change
                return change is not None and change.phase == "streaming" and change.keys > 0

            await pilot.press("a")
            await until(streaming, 30)
            await settle(2)
            shot("ranges-in-motion")
            await until(lambda: app.view.change is None and len(app.view.ring.nodes) == 6, 120)

            await pilot.press("question_mark")
            await settle(0.5)
            shot("help")
            await pilot.press("escape")

            await pilot.resize_terminal(80, 24)
            await settle(1.5)
            shot("small-80x24")
            await pilot.press("q")
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    args = parser.parse_args()
    if shutil.which("rsvg-convert") is None:
        print("screenshots: rsvg-convert not found (apt-get install librsvg2-bin)",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvlab-shots-") as tmp:
        os.environ["KVLAB_HOME"] = str(Path(tmp) / "home")
        os.environ["TZ"] = os.environ.get("TZ", "UTC")
        svgs = Path(tmp) / "svg"
        svgs.mkdir()
        asyncio.run(story(args.out, svgs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
