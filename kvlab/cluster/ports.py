"""Finding free TCP ports on the loopback interface."""

from __future__ import annotations

import random
import socket


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As the servers do: connections in TIME_WAIT from a killed node don't block it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# Below Linux's ephemeral range (32768-60999 by default): a port there can be taken at any
# moment as the source port of an outgoing connection, even a proxy's own reconnect attempt
# to a dead node on that very port (TCP self-connect).
LOW, HIGH = 10_000, 32_000


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """A base port such that `base .. base + count - 1` are all free right now."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(LOW, HIGH - count)
        if all(port_free(host, base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no block of {count} free ports found on {host}")
