"""A compact, mergeable latency histogram.

Load generators record one value per message and the parent merges the
histograms of every process, so the recording must be cheap and the result
small whatever the message count: values (microseconds) fall into log-linear
buckets of 32 per power of two, which keeps every percentile within about 3 %
of the exact value, and the exact minimum and maximum are kept beside them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Values below this are their own bucket; above, a bucket spans 1/32 of its power of two.
_LINEAR_LIMIT = 64
_MANTISSA_BITS = 6


def bucket_floor(value: int) -> int:
    """The smallest value of the bucket ``value`` falls in."""
    if value < _LINEAR_LIMIT:
        return max(value, 0)
    shift = value.bit_length() - _MANTISSA_BITS
    return (value >> shift) << shift


def bucket_ceiling(floor: int) -> int:
    """The largest value of the bucket whose smallest value is ``floor``."""
    if floor < _LINEAR_LIMIT:
        return floor
    shift = floor.bit_length() - _MANTISSA_BITS
    return floor + (1 << shift) - 1


class LatencyHistogram:
    """Counts of microsecond values per bucket, plus exact count, sum, min and max."""

    __slots__ = ("buckets", "count", "maximum", "minimum", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.minimum: int | None = None
        self.maximum: int | None = None

    def record(self, micros: float) -> None:
        value = int(micros) if micros > 0 else 0
        key = bucket_floor(value)
        buckets = self.buckets
        buckets[key] = buckets.get(key, 0) + 1
        self.count += 1
        self.total += value
        if self.maximum is None or value > self.maximum:
            self.maximum = value
        if self.minimum is None or value < self.minimum:
            self.minimum = value

    def merge(self, other: LatencyHistogram) -> None:
        for key, count in other.buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + count
        self.count += other.count
        self.total += other.total
        if other.maximum is not None and (self.maximum is None or other.maximum > self.maximum):
            self.maximum = other.maximum
        if other.minimum is not None and (self.minimum is None or other.minimum < self.minimum):
            self.minimum = other.minimum

    def percentile(self, fraction: float) -> int | None:
        """The value (bucket ceiling, capped at the exact maximum) under which
        ``fraction`` of the values fall; None when empty."""
        if not self.count:
            return None
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], not {fraction}")
        rank = max(1, round(fraction * self.count))
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                assert self.maximum is not None
                return min(bucket_ceiling(key), self.maximum)
        return self.maximum

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def summary(self) -> dict[str, float | None]:
        """p50/p95/p99/max and mean in milliseconds (None when empty)."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value / 1000.0, 3)

        return {
            "count": self.count,
            "p50_ms": ms(self.percentile(0.50)),
            "p95_ms": ms(self.percentile(0.95)),
            "p99_ms": ms(self.percentile(0.99)),
            "max_ms": ms(self.maximum),
            "mean_ms": ms(self.mean()),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "buckets": {str(key): count for key, count in self.buckets.items()},
            "count": self.count,
            "total": self.total,
            "min": self.minimum,
            "max": self.maximum,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        """The inverse of ``to_json``; ValueError on anything else."""
        histogram = cls()
        try:
            histogram.buckets = {int(key): int(count) for key, count in data["buckets"].items()}
            histogram.count = int(data["count"])
            histogram.total = int(data["total"])
            histogram.minimum = None if data["min"] is None else int(data["min"])
            histogram.maximum = None if data["max"] is None else int(data["max"])
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"not a latency histogram: {e}") from e
        if sum(histogram.buckets.values()) != histogram.count:
            raise ValueError("not a latency histogram: bucket counts do not add up")
        return histogram

    @classmethod
    def merged(cls, histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
        result = cls()
        for histogram in histograms:
            result.merge(histogram)
        return result
