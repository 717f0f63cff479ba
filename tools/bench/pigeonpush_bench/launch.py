"""Exec wrapper for every process the benchmark starts.

``python -m pigeonpush_bench.launch PARENT_PID COMMAND [ARG...]`` makes the
process the leader of a new session (so a signal to its group reaches all it
forks, and a Ctrl-C on the terminal reaches only the benchmark, which then
stops its children in order), asks the kernel to SIGKILL it when the
benchmark dies (so even a SIGKILLed benchmark leaves nothing running), and
then becomes COMMAND with the same pid.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    name = ctypes.util.find_library("c")
    if name is None:  # pragma: no cover - every Linux has a libc
        return
    libc = ctypes.CDLL(name, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:  # pragma: no cover
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.stderr.write("usage: python -m pigeonpush_bench.launch PARENT_PID COMMAND [ARG...]\n")
        sys.exit(2)
    parent = int(argv[0])
    os.setsid()
    _die_with_parent()
    if os.getppid() != parent:
        # The benchmark died before the death signal was armed.
        sys.exit(1)
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
