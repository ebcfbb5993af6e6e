"""Command-line argument types shared by the server processes (node and proxy)."""

from __future__ import annotations

import argparse


def on_off(text: str) -> bool:
    """An argparse type for `on` / `off`."""
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def name_url(text: str) -> tuple[str, str]:
    """An argparse type for `NAME=URL` (a node and where it listens)."""
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise argparse.ArgumentTypeError(f"expected NAME=URL, got {text!r}")
    if not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"the URL of {name!r} must start with http://")
    return name, url
