"""Print what ``benchmarks/gc_probe/sitecustomize.py`` recorded, one line per
process that used at least half a CPU second, and clear the records."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _name(argv: list[str]) -> str:
    for word in argv:
        if word.startswith("pigeon-"):
            return word
    if any("loadgen" in word for word in argv):
        return "load generator"
    return " ".join(argv)[:40]


def main() -> None:
    directory = Path(os.environ.get("PIGEONPUSH_GC_PROBE_DIR", "/tmp/pigeonpush-gc-probe"))
    records = sorted(directory.glob("*.json"))
    if not records:
        sys.exit(f"no records in {directory}")
    print(f"{'process':24} {'CPU s':>7} {'GC s':>6} {'GC %':>5}  per generation (s)  collections")
    for path in records:
        record = json.loads(path.read_text())
        path.unlink()
        if record["cpu"] < 0.5:
            continue
        seconds = record["gc_seconds"]
        print(
            f"{_name(record['argv']):24} {record['cpu']:7.2f} {sum(seconds):6.2f} "
            f"{100 * sum(seconds) / record['cpu']:5.1f}  "
            f"{' '.join(f'{s:.2f}' for s in seconds):18}  {record['collections']}"
        )


if __name__ == "__main__":
    main()
