"""Per-process garbage collection time, for a whole benchmark run.

Put this directory on PYTHONPATH and every Python process of the run (the
daemons, the load generators, the benchmark itself) imports it at start-up::

    PYTHONPATH=benchmarks/gc_probe pigeonpush-bench connections --n 75000 --servers 4
    python benchmarks/gc_probe/report.py

Each process adds up the CPU time of its collections per generation (from
``gc.callbacks``, with ``time.thread_time``: collections run on the thread
that triggers them, and wall time would count the moments the scheduler
gave the core to another process) and writes it with its total CPU time to
``$PIGEONPUSH_GC_PROBE_DIR`` (default ``/tmp/pigeonpush-gc-probe``) every
two seconds and when it exits (the benchmark SIGKILLs a daemon that is slow
to stop, and a killed process runs no exit hook).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import threading
import time
from typing import Any

_DIRECTORY = os.environ.get("PIGEONPUSH_GC_PROBE_DIR", "/tmp/pigeonpush-gc-probe")
_started = 0.0
_seconds = [0.0, 0.0, 0.0]
_counts = [0, 0, 0]


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.thread_time()
        return
    generation = info["generation"]
    _seconds[generation] += time.thread_time() - _started
    _counts[generation] += 1


def _write() -> None:
    os.makedirs(_DIRECTORY, exist_ok=True)
    record = {
        "argv": sys.argv,
        "cpu": time.process_time(),
        "gc_seconds": _seconds,
        "collections": _counts,
        "threshold": gc.get_threshold(),
    }
    with open(os.path.join(_DIRECTORY, f"{os.getpid()}.json"), "w") as out:
        json.dump(record, out)


def _every_two_seconds() -> None:
    while True:
        time.sleep(2.0)
        _write()


gc.callbacks.append(_on_collection)
atexit.register(_write)
threading.Thread(target=_every_two_seconds, name="gc-probe", daemon=True).start()
