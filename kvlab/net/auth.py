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

import functools
import hmac
import os
import time
from pathlib import Path

SECRET_ENV = "KVLAB_SECRET"
UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


TAKEN_KEPT = 1024  # proofs a guard remembers having taken (one per client connection)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: proofs then outlive a reboot (servers start anew anyway)
        return ""


# A proof's time is the machine's monotonic clock, which every local process shares and no
# clock step moves (on the wall clock, a step back let a server started after it take a
# proof captured before, and refused every new one for as long as the step). It starts at
# each boot, so the boot's id is in the MAC: a proof from before a reboot proves nothing.
_BOOT = _boot_id()


def _now_us() -> int:
    return time.monotonic_ns() // 1000


def secret_from_env() -> str | None:
    """The secret this process was given (an empty one is none)."""
    return os.environ.get(SECRET_ENV) or None


def proof(secret: str | None, port: int) -> dict[str, str]:
    """The header that shows the server on `port` that this process has the secret, and
    that nothing else can use: it names the port, and the time it was made, which comes
    before anything that starts listening on that port later (none without a secret)."""
    if secret is None:
        return {}
    made = _now_us()
    return {"Authorization": f"Kvlab {made} {_mac(secret, f'{_BOOT} {port} {made}')}"}


def answer(secret: str, header: str) -> str:
    """What a server that took the proof in `header` answers, to show that it has the
    secret too: only for that proof."""
    return _mac(secret, f"answer {header}")


def answered(secret: str, header: str, reply: str) -> bool:
    """Whether `reply` is the server's `answer` to the proof in `header`."""
    return hmac.compare_digest(reply.encode("latin-1", "replace"),
                               answer(secret, header).encode())


def _mac(secret: str, text: str) -> str:
    mac = _keyed(secret).copy()
    mac.update(text.encode("latin-1", "replace"))
    return mac.hexdigest()


@functools.lru_cache(maxsize=8)
def _keyed(secret: str) -> hmac.HMAC:
    # HMAC-SHA256 keyed once per secret: a proof, made or checked on each request of a
    # client, then costs ~1.6 µs instead of ~4.5 µs.
    return hmac.new(secret.encode(), digestmod="sha256")


class Guard:
    """Checks an `Authorization` header against the secret, in constant time: the secret
    itself (`Bearer`), or, given the `port` this server listens on, a `proof` made for that
    port since the guard was made (right before the server listens)."""

    def __init__(self, secret: str, port: int | None = None) -> None:
        self._text = secret
        self._secret = secret.encode()
        self._port = port
        self._since = _now_us()
        # Proofs taken, so that a client's next request on its connection costs a lookup
        # (~0.1 µs, not an HMAC's ~3 µs): only a holder of the secret can add one.
        self._taken: dict[str, None] = {}

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
        if header in self._taken:
            return True
        made, _, mac = token.strip().partition(" ")
        # A proof from before the guard was made went to whoever listened on the port then.
        if not (made.isascii() and made.isdigit() and len(made) < 20) \
                or int(made) < self._since:
            return False
        if not hmac.compare_digest(mac.strip().encode("latin-1", "replace"),
                                   _mac(self._text, f"{_BOOT} {self._port} {made}").encode()):
            return False
        if len(self._taken) >= TAKEN_KEPT:
            del self._taken[next(iter(self._taken))]  # the oldest
        self._taken[header] = None
        return True


MESSAGE = ("this route needs the cluster's secret: send Authorization: Bearer SECRET, where "
           "SECRET is the \"secret\" in the cluster's cluster.json ($KVLAB_HOME/NAME/)")
