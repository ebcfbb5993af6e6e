"""The first moments of a process the supervisor starts: it waits to be recorded.

`python -m kvlab.cluster.launch MODULE ARGS...` reads one byte from its standard input and
then runs MODULE as `python -m MODULE ARGS...` would. The supervisor writes that byte once
the process's PID is in cluster.json. Should the pipe close first (the supervisor could not
write the file, or was killed), it exits having started nothing: no process of a cluster
can outlive the command that started it without `kvlab down` knowing of it.
"""

from __future__ import annotations

import os
import runpy
import sys

NOT_RECORDED = 75  # EX_TEMPFAIL: the supervisor gave up before recording this process


def main() -> None:
    if os.read(0, 1) != b"1":
        sys.exit(NOT_RECORDED)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # as a process started with stdin from /dev/null
    os.close(null)
    sys.argv = sys.argv[1:]
    # In this interpreter, not a new one: an exec would add a Python start to every node's.
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
