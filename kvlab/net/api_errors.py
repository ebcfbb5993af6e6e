"""JSON errors for the proxy's HTTP API: `{"error": CODE, "message": TEXT, ...}`."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from kvlab.core.messages import TIMEOUT, UNAVAILABLE, Outcome


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details

    def response(self) -> web.Response:
        return json_response({"error": self.code, "message": str(self), **self.details},
                             status=self.status)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def quorum_error(outcome: Outcome) -> ApiError:
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
        # A failed write may still be stored on the replicas that acknowledged it.
        details["partially_applied"] = bool(outcome.acked)
    if outcome.status == UNAVAILABLE:
        return ApiError(503, "unavailable",
                        f"{verb} quorum not reached: {got} of {outcome.needed} replicas "
                        f"answered; failed: {', '.join(outcome.failed) or 'none'}", **details)
    assert outcome.status == TIMEOUT
    return ApiError(504, "timeout",
                    f"{verb} timed out: {got} of {outcome.needed} replicas answered; "
                    f"silent: {', '.join(outcome.pending)}", **details)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every error leaves the proxy as JSON, including aiohttp's own 404/405/413."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "bad_request")
        return ApiError(exc.status, code, exc.reason).response()
