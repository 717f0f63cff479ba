"""What a process costs, read from /proc, and what the machine is.

RSS is ``VmRSS`` of /proc/<pid>/status; CPU is ``utime + stime`` of
/proc/<pid>/stat in seconds. Both are procfs reads (kernel memory, no disk), so
reading them on the reactor thread is cheap enough; a window of CPU use is two
readings and the wall time between them.
"""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Mapping, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from pigeonpush_bench import FD_LIMIT, MAX_CONNECTIONS_PER_PROCESS

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessGone(RuntimeError):
    """The process to measure has exited."""


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        raise ProcessGone(f"process {pid} has exited") from None
    raise ProcessGone(f"process {pid} has no VmRSS (a zombie)")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used, in seconds."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        raise ProcessGone(f"process {pid} has exited") from None
    # Fields after the command name start at field 3 (state); utime and stime
    # are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@attrs.frozen(slots=True)
class Sample:
    rss: int
    cpu: float
    at: float


def sample(pid: int, clock: IReactorTime) -> Sample:
    return Sample(rss=rss_bytes(pid), cpu=cpu_seconds(pid), at=clock.seconds())


@attrs.frozen(slots=True)
class Usage:
    """One process over a window: CPU seconds used, its share of a core, RSS at the end."""

    cpu: float
    seconds: float
    rss: int

    @property
    def cores(self) -> float:
        return self.cpu / self.seconds if self.seconds > 0 else 0.0


def usage_between(first: Sample, last: Sample) -> Usage:
    return Usage(cpu=last.cpu - first.cpu, seconds=last.at - first.at, rss=last.rss)


async def measure_window(
    clock: IReactorTime, pids: Mapping[str, int], seconds: float
) -> dict[str, Usage]:
    """CPU and RSS of each named process over the next ``seconds``."""
    first = {name: sample(pid, clock) for name, pid in pids.items()}
    await deferLater(clock, seconds, lambda: None)
    return {name: usage_between(first[name], sample(pid, clock)) for name, pid in pids.items()}


def total_rss(pids: Sequence[int]) -> int:
    return sum(rss_bytes(pid) for pid in pids)


def total_cpu(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def fd_limit() -> int:
    """The soft limit of open files for this process and its children."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FD_LIMIT if soft == resource.RLIM_INFINITY else int(soft)


def connections_per_process() -> int:
    """Connections the tool puts on one process: the fd limit less a margin."""
    return min(MAX_CONNECTIONS_PER_PROCESS, fd_limit() - 500)


def machine() -> dict[str, object]:
    """The facts a figure needs beside it to mean anything."""
    memory = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
    except FileNotFoundError:
        memory = 0
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except FileNotFoundError:
        model = ""
    import twisted

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory / 2**30, 1),
        "fd_limit": fd_limit(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
    }
