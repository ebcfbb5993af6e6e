"""The cluster secret on the servers' side: who may change the cluster and talk to its nodes.

`kvlab up` makes a random secret, keeps it in the cluster's cluster.json (mode 0600) and
hands it to the proxy and the nodes in `KVLAB_SECRET` (the environment, not argv: every
local user can read a process's command line). A request shows it as `Authorization:
Bearer <secret>` (from curl, say). A process started without it checks nothing (a node or a
proxy run by hand, as the channel tests do); one started by `kvlab up` always has it.

kvlab's own senders (the links to the nodes, the clients, the CLI and the dashboard) never
send the secret itself: they call a port that may have been left by a stopped process (a
link reconnects to a node for as long as it is a member), and any local user may listen
there. They send a proof instead, `Authorization: Kvlab <time> <HMAC of the port and the
time>`, accepted only by a server on that port that began listening before that time:
whoever held the port then can use it nowhere (see `proof`). A node answers a link's proof
with one of its own (`answer`), first thing on the channel, and the link takes nothing from
a channel without it: whoever listens where a node was can't play that node (take its
writes, answer reads with records of its own, report a stream done).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time

SECRET_ENV = "KVLAB_SECRET"
UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def secret_from_env() -> str | None:
    """The secret this process was given (an empty one is none)."""
    return os.environ.get(SECRET_ENV) or None


def proof(secret: str | None, port: int) -> dict[str, str]:
    """The header that shows the server on `port` that this process has the secret, and
    that nothing else can use: it names the port, and the time it was made, which comes
    before anything that starts listening on that port later (none without a secret)."""
    if secret is None:
        return {}
    made = time.time_ns() // 1000
    return {"Authorization": f"Kvlab {made} {_mac(secret.encode(), port, made)}"}


def answer(secret: str, header: str) -> str:
    """What a server that took the proof in `header` answers, to show that it has the
    secret too: only for that proof."""
    return hmac.new(secret.encode(), f"answer {header}".encode("latin-1", "replace"),
                    hashlib.sha256).hexdigest()


def answered(secret: str, header: str, reply: str) -> bool:
    """Whether `reply` is the server's `answer` to the proof in `header`."""
    return hmac.compare_digest(reply.encode("latin-1", "replace"),
                               answer(secret, header).encode())


def _mac(key: bytes, port: int, made: int) -> str:
    return hmac.new(key, f"{port} {made}".encode(), hashlib.sha256).hexdigest()


class Guard:
    """Checks an `Authorization` header against the secret, in constant time: the secret
    itself (`Bearer`), or, given the `port` this server listens on, a `proof` made for that
    port since the guard was made (right before the server listens)."""

    def __init__(self, secret: str, port: int | None = None) -> None:
        self._secret = secret.encode()
        self._port = port
        self._since = time.time_ns() // 1000

    def allows(self, header: str | None) -> bool:
        if header is None:
            return False
        scheme, _, token = header.partition(" ")
        scheme = scheme.lower()
        # latin-1: the header as received, byte for byte (compare_digest takes only ASCII str)
        if scheme == "bearer":
            return hmac.compare_digest(token.strip().encode("latin-1", "replace"), self._secret)
        if scheme != "kvlab" or self._port is None:
            return False
        made, _, mac = token.strip().partition(" ")
        # A proof from before the guard was made went to whoever listened on the port then.
        if not (made.isascii() and made.isdigit() and len(made) < 20) \
                or int(made) < self._since:
            return False
        return hmac.compare_digest(mac.strip().encode("latin-1", "replace"),
                                   _mac(self._secret, self._port, int(made)).encode())


MESSAGE = ("this route needs the cluster's secret: send Authorization: Bearer SECRET, where "
           "SECRET is the \"secret\" in the cluster's cluster.json ($KVLAB_HOME/NAME/)")
