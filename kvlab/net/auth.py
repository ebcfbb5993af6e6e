"""The cluster secret on the servers' side: who may change the cluster and talk to its nodes.

`kvlab up` makes a random secret, keeps it in the cluster's cluster.json (mode 0600) and
hands it to the proxy and the nodes in `KVLAB_SECRET` (the environment, not argv: every
local user can read a process's command line). A request shows it as `Authorization:
Bearer <secret>`. A process started without it checks nothing (a node or a proxy run by
hand, as the channel tests do); one started by `kvlab up` always has it.
"""

from __future__ import annotations

import hmac
import os

SECRET_ENV = "KVLAB_SECRET"
UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def secret_from_env() -> str | None:
    """The secret this process was given (an empty one is none)."""
    return os.environ.get(SECRET_ENV) or None


def bearer(secret: str | None) -> dict[str, str]:
    """The header that presents `secret` (none without one)."""
    return {} if secret is None else {"Authorization": f"Bearer {secret}"}


class Guard:
    """Checks an `Authorization` header against the secret, in constant time."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    def allows(self, header: str | None) -> bool:
        if header is None:
            return False
        scheme, _, token = header.partition(" ")
        # latin-1: the header as received, byte for byte (compare_digest takes only ASCII str)
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("latin-1", "replace"), self._secret)


MESSAGE = ("this route needs the cluster's secret: send Authorization: Bearer SECRET, where "
           "SECRET is the \"secret\" in the cluster's cluster.json ($KVLAB_HOME/NAME/)")
