"""How an operation's outcome is written into a history (shared by both drivers)."""

from __future__ import annotations

from kvlab.chaos.workload import READ
from kvlab.core.messages import NOT_FOUND, OK, UNAVAILABLE


def history_type(f: str, status: str) -> str:
    """The history event type for an outcome status: did the operation happen?

    A read that could not reach its quorum changed nothing (fail); a write that could not
    may still be stored on some replicas (info); a timeout is unknown either way (info).
    """
    if status == OK or status == NOT_FOUND:
        return "ok"
    if status == UNAVAILABLE and f == READ:
        return "fail"
    return "info"
