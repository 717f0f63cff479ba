"""What a process costs, read with psutil, and what the machine is.

RSS is psutil's ``memory_info().rss``; CPU is ``user + system`` of its
``cpu_times()`` in seconds. On Linux both are procfs reads (kernel memory, no
disk), so reading them on the reactor thread is cheap enough; a window of CPU
use is two readings and the wall time between them.
"""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Mapping, Sequence

import attrs
import psutil
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from pigeonpush_bench import FD_LIMIT, MAX_CONNECTIONS_PER_PROCESS


class ProcessGone(RuntimeError):
    """The process to measure has exited."""


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            raise ProcessGone(f"process {pid} has exited (a zombie)")
        return int(process.memory_info().rss)
    except psutil.NoSuchProcess:
        raise ProcessGone(f"process {pid} has exited") from None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used, in seconds."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        raise ProcessGone(f"process {pid} has exited") from None
    return float(times.user + times.system)


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
    memory = psutil.virtual_memory().total
    # psutil has no CPU model name; /proc/cpuinfo has it on Linux.
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
