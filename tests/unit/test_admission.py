"""The proxy's admission control: its limits, and the Retry-After it asks for."""

from __future__ import annotations

from kvlab.net.admission import MAX_RETRY_AFTER_S, Admission

MiB = 1024 * 1024


def test_limits_on_operations_and_on_bytes_being_written() -> None:
    admission = Admission(max_inflight=10, max_inflight_bytes=4 * MiB)
    assert admission.admits(pending=9, value_bytes=0, body=0)
    assert not admission.admits(pending=10, value_bytes=0, body=0)
    assert admission.admits(pending=3, value_bytes=3 * MiB, body=MiB)
    assert not admission.admits(pending=4, value_bytes=3 * MiB, body=MiB + 1)
    # Reads and deletes carry no value: big writes filling the bytes don't keep them out.
    assert admission.admits(pending=4, value_bytes=4 * MiB, body=0)
    # A write larger than the whole budget gets in alone, so it is never refused for good.
    assert admission.admits(pending=0, value_bytes=0, body=16 * MiB)
    assert not admission.admits(pending=1, value_bytes=1, body=16 * MiB)


def _overload(admission: Admission, start: int, seconds: int, clients: int,
              answered: int) -> tuple[list[int], int]:
    """`clients` refused, each back after the Retry-After it was given, while the proxy
    answers 40 a second; the Retry-After of each second, and the answers so far."""
    seen = []
    for second in range(start, start + seconds):
        answered += 40
        refusals = max(1, clients // admission.retry_after_s)
        for i in range(refusals):
            retry = admission.refuse(second + i / refusals, answered)
        seen.append(retry)
    return seen, answered


def test_retry_after_grows_while_refusals_outnumber_answers_and_comes_back() -> None:
    admission = Admission(max_inflight=1, max_inflight_bytes=1)
    seen, answered = _overload(admission, 0, 30, clients=300, answered=0)
    assert seen[0] == 1  # a first refusal: no reason to send anyone away for long
    # It settles where the refusals are about as many as the answers: 300 clients at 40
    # answers a second want about 7 s.
    assert all(4 <= s <= 16 for s in seen[10:]), seen
    assert max(seen) <= MAX_RETRY_AFTER_S
    # A mild overload after a quiet spell: 1 s, as it is for a first refusal.
    mild, _ = _overload(admission, 60, 10, clients=20, answered=answered + 1000)
    assert mild == [1] * 10, mild
