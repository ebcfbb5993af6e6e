"""How a failed quorum reads in the proxy's HTTP API: 503 or 504 with the replicas' story;
and a request the proxy has no room for: 503 overloaded."""

from __future__ import annotations

from kvlab.core.messages import TIMEOUT, UNAVAILABLE, Outcome
from kvlab.net.http import HttpError


def quorum_error(outcome: Outcome) -> HttpError:
    """503 when too many replicas failed for the quorum, 504 when they stayed silent."""
    verb = "write" if outcome.kind == "write" else "read"
    got = len(outcome.acked)
    details = {
        "key": outcome.key,
        "replicas": list(outcome.replicas),
        "acked": list(outcome.acked),
        "failed": outcome.failed,
        "pending": list(outcome.pending),
        "needed": outcome.needed,
    }
    if outcome.kind == "write":
        # A failed write may still be stored on the replicas that acknowledged it, or as a
        # hint on a fallback node that will hand it over.
        details["partially_applied"] = bool(outcome.acked or outcome.hinted)
        details["hinted"] = outcome.hinted
    if outcome.status == UNAVAILABLE:
        return HttpError(503, "unavailable",
                         f"{verb} quorum not reached: {got} of {outcome.needed} replicas "
                         f"answered; failed: {', '.join(outcome.failed) or 'none'}", **details)
    assert outcome.status == TIMEOUT
    return HttpError(504, "timeout",
                     f"{verb} timed out: {got} of {outcome.needed} replicas answered; "
                     f"silent: {', '.join(outcome.pending)}", **details)


def overloaded(message: str, retry_after_s: int) -> HttpError:
    """503 `overloaded`: the proxy has as much work in flight as it takes; come back later."""
    return HttpError(503, "overloaded", f"the proxy is overloaded: {message}; retry after "
                     f"{retry_after_s}s", headers={"Retry-After": str(retry_after_s)})
