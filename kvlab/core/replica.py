"""A replica's side of the protocol.

Reads are answered straight from the store. Writes are gathered so that a driver can make
a whole batch durable in one transaction (group commit) and acknowledge them together; the
rule for accepting a record (`record.supersedes`) is applied by the store inside that
transaction, so two racing writes to one key can't be applied out of order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from kvlab.core.messages import ReadReply, ReadRequest, Reply, Request, WriteReply, WriteRequest
from kvlab.core.record import Record


def serve(requests: Iterable[Request],
          lookup: Callable[[Sequence[str]], Mapping[str, Record]]
          ) -> tuple[list[Reply], list[WriteRequest]]:
    """Answer the reads now; return the writes that must be persisted before their replies.

    `lookup` gets the keys of all the reads at once (a store answers them in one query) and
    returns the records it holds, by key.
    """
    reads: list[ReadRequest] = []
    writes: list[WriteRequest] = []
    for request in requests:
        if isinstance(request, ReadRequest):
            reads.append(request)
        else:
            writes.append(request)
    if not reads:
        return [], writes
    found = lookup([r.key for r in reads])
    return [ReadReply(r.req, found.get(r.key)) for r in reads], writes


def acknowledge(writes: Iterable[WriteRequest]) -> list[Reply]:
    """Replies for writes that are now durable."""
    return [WriteReply(w.req) for w in writes]
