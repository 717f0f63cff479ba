"""The benchmark's latency histogram against hdrhistogram: recording cost and accuracy.

Run from the repository root (hdrhistogram is needed only here:
``pip install hdrhistogram``)::

    PYTHONPATH=tools/bench python benchmarks/latency_histogram.py

A load generator records one value per message received, on the same two
cores as the servers it measures, so what a record costs is CPU taken from
them. The values are log-normal microseconds (median about 3 ms, p99 about
30 ms, like a loaded unicast run); each figure is the best of five passes.
"""

from __future__ import annotations

import argparse
import random
import timeit

from hdrh.histogram import HdrHistogram

from pigeonpush_bench.histogram import LatencyHistogram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=200_000)
    args = parser.parse_args()
    random.seed(1)
    values = [int(random.lognormvariate(8, 1)) for _ in range(args.values)]
    ours = LatencyHistogram()
    # 1 us to 60 s, two significant digits (1 %): what the report needs.
    hdr = HdrHistogram(1, 60_000_000, 2)

    def record_ours() -> None:
        record = ours.record
        for value in values:
            record(value)

    def record_hdr() -> None:
        record = hdr.record_value
        for value in values:
            record(value)

    for name, run in (("LatencyHistogram", record_ours), ("hdrhistogram", record_hdr)):
        best = min(timeit.repeat(run, number=1, repeat=5))
        print(f"{name:17s} record: {best / len(values) * 1e9:5.0f} ns per value")
    ordered = sorted(values)
    for percent in (50, 95, 99):
        exact = ordered[max(0, round(len(ordered) * percent / 100) - 1)]
        print(
            f"p{percent}: exact {exact} us, LatencyHistogram {ours.percentile(percent / 100)}, "
            f"hdrhistogram {hdr.get_value_at_percentile(percent)}"
        )


if __name__ == "__main__":
    main()
