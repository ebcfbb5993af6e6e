"""How much work the proxy takes on at once, and how long it asks the clients it refuses to
wait (`Retry-After`).

Work let in beyond what the replicas can do in an operation's timeout only waits and times
out: 100 clients writing 1 MiB values got 27 writes through in 8 s (473 timeouts) when
everything was let in. So beyond `max_inflight` operations, or `max_inflight_bytes` of values
being written, a request is refused at once (503 overloaded). Only write bodies count toward
the bytes, so reads still get in while big writes fill that budget; a write alone is always
let in, whatever its size.

`Retry-After` is 1 s while the proxy refuses fewer requests than it answers. A refused client
that comes back costs the proxy its request again (a 1 MiB body is read each time: 300 clients
retrying every second cut the goodput by half), so while refusals outnumber answers it
doubles, up to `MAX_RETRY_AFTER_S`, and halves back once they are fewer than half the answers
(1 again after a quiet spell). It is judged over a window as long as itself: the clients
told to wait that long are back within it.
"""

from __future__ import annotations

MAX_RETRY_AFTER_S = 16


class Admission:
    """The limits, and the `Retry-After` the recent refusals call for."""

    def __init__(self, max_inflight: int, max_inflight_bytes: int) -> None:
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.refused = 0  # requests refused so far
        self.retry_after_s = 1
        self._window_at = 0.0
        self._window_refused = 0  # `refused` when the window began
        self._window_answered = 0  # answers so far when the window began

    def admits(self, pending: int, value_bytes: int, body: int) -> bool:
        """Whether a request may start, with `pending` operations in flight and
        `value_bytes` of values being written; `body`: the bytes it carries (0 for a read)."""
        return pending < self.max_inflight and not (
            body and value_bytes and value_bytes + body > self.max_inflight_bytes)

    def refuse(self, now_s: float, answered: int) -> int:
        """Count a refusal at `now_s` (any monotonic clock), `answered` operations having been
        answered so far; returns the seconds to ask the client to wait."""
        self.refused += 1
        if now_s - self._window_at >= self.retry_after_s:
            refused = self.refused - self._window_refused
            done = answered - self._window_answered
            if refused > done:
                self.retry_after_s = min(MAX_RETRY_AFTER_S, self.retry_after_s * 2)
            elif 2 * refused < done:
                # A window twice its length had a spell with no refusal at all in it.
                quiet = now_s - self._window_at >= 2 * self.retry_after_s
                self.retry_after_s = 1 if quiet else max(1, self.retry_after_s // 2)
            self._window_at = now_s
            self._window_refused, self._window_answered = self.refused, answered
        return self.retry_after_s
