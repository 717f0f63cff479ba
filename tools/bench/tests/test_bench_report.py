"""Latency histograms, the result table, the JSON document and the progress line."""

from __future__ import annotations

import io
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from pigeonpush_bench.histogram import LatencyHistogram, bucket_ceiling, bucket_floor
from pigeonpush_bench.report import (
    Progress,
    Report,
    Target,
    format_json,
    format_number,
    format_table,
)


def test_percentiles_are_within_the_bucket_precision() -> None:
    values = [random.Random(7).randrange(1, 2_000_000) for _ in range(10_000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    ordered = sorted(values)
    for fraction in (0.5, 0.95, 0.99):
        exact = ordered[round(fraction * len(ordered)) - 1]
        found = histogram.percentile(fraction)
        assert found is not None
        assert exact <= found <= exact * 1.04
    assert histogram.percentile(1.0) == histogram.maximum == max(values)
    assert histogram.minimum == min(values)


@given(st.integers(min_value=0, max_value=10**12))
def test_a_value_lies_within_its_bucket(value: int) -> None:
    floor = bucket_floor(value)
    assert floor <= value <= bucket_ceiling(floor)
    assert bucket_ceiling(floor) - floor <= max(1, value // 32)


def test_merged_histograms_equal_one_fed_everything() -> None:
    first, second, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for value in range(0, 50_000, 7):
        (first if value % 2 else second).record(value)
        both.record(value)
    merged = LatencyHistogram.merged([first, second])
    assert merged.to_json() == both.to_json()


def test_a_histogram_survives_json() -> None:
    histogram = LatencyHistogram()
    for value in (5, 500, 50_000, 5_000_000):
        histogram.record(value)
    again = LatencyHistogram.from_json(json.loads(json.dumps(histogram.to_json())))
    assert again.to_json() == histogram.to_json()
    assert again.summary() == histogram.summary()


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"buckets": {"x": 1}, "count": 1, "total": 1, "min": 1, "max": 1},
        {"buckets": {"1": 2}, "count": 1, "total": 1, "min": 1, "max": 1},
        {"buckets": [], "count": 0, "total": 0, "min": None, "max": None},
    ],
)
def test_something_else_is_not_taken_for_a_histogram(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="not a latency histogram"):
        LatencyHistogram.from_json(data)


def test_an_empty_histogram_has_no_percentiles() -> None:
    histogram = LatencyHistogram()
    assert histogram.percentile(0.5) is None
    assert histogram.summary()["p99_ms"] is None
    histogram.record(1)
    with pytest.raises(ValueError, match="fraction must be in"):
        histogram.percentile(0)


def test_negative_values_count_as_zero() -> None:
    """Clock granularity can make a receipt look earlier than its millisecond stamp."""
    histogram = LatencyHistogram()
    histogram.record(-300)
    assert histogram.minimum == 0 and histogram.count == 1


def _report() -> Report:
    report = Report(
        scenario="connections",
        title="connections: 2,000 clients",
        parameters={"n": 2000},
        systems=["pigeonpush", "twisted", "mosquitto"],
        command="pigeonpush-bench connections --n 2000",
        machine={"cpus": 2, "memory_gib": 23.4, "fd_limit": 20000},
    )
    report.add(
        "rss",
        "RSS per connection",
        "KiB",
        {"pigeonpush": 6.0, "twisted": 3.0, "mosquitto": None},
        higher_is_better=False,
    )
    report.add("rate", "connect rate", "/s", {"pigeonpush": 1500.0, "twisted": 3000.0})
    report.targets.append(Target("RSS at most 2x bare Twisted", True, "2.00x"))
    report.targets.append(Target("75,000 connections", None))
    report.notes.append("handshake: TCP only for bare Twisted")
    return report


def test_the_table_shows_values_ratios_and_targets() -> None:
    table = format_table(_report())
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == [
        "metric",
        "pigeonpush",
        "twisted",
        "mosquitto",
        "pigeonpush/twisted",
        "pigeonpush/mosquitto",
    ]
    rss = next(line for line in lines if line.startswith("RSS per connection (KiB)"))
    assert rss.split()[-5:] == ["6", "3", "-", "2.00x", "-"]
    rate = next(line for line in lines if line.startswith("connect rate"))
    assert rate.split()[-5:] == ["1,500", "3,000", "-", "0.50x", "-"]
    assert "  [met] RSS at most 2x bare Twisted (2.00x)" in lines
    assert "  [not measured] 75,000 connections" in lines
    assert "note: handshake: TCP only for bare Twisted" in lines
    assert "command: pigeonpush-bench connections --n 2000" in lines


def test_the_json_document_carries_values_ratios_and_targets() -> None:
    document = json.loads(format_json(_report()))
    assert document["scenario"] == "connections"
    assert document["systems"] == ["pigeonpush", "twisted", "mosquitto"]
    rss = document["metrics"][0]
    assert rss["values"] == {"pigeonpush": 6.0, "twisted": 3.0, "mosquitto": None}
    assert rss["ratios"] == {"twisted": 2.0}
    assert rss["higher_is_better"] is False
    assert document["targets"][1] == {"text": "75,000 connections", "met": None, "detail": ""}
    assert document["machine"]["fd_limit"] == 20000


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (19500, "19,500"),
        (1234.5, "1,234"),
        (123.45, "123.5"),
        (12.345, "12.35"),
        (0.012345, "0.0123"),
        (0.0, "0"),
        (float("nan"), "-"),
    ],
)
def test_numbers_are_formatted_for_people(value: float | int | None, text: str) -> None:
    assert format_number(value) == text


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    clock = Clock()
    stream = io.StringIO()
    progress = Progress(stream, clock, interactive=True)
    progress.update("10/20 connected")
    clock.advance(1)
    progress.update("20/20")
    progress.phase("measuring")
    assert stream.getvalue().startswith("\r[   0.0s] 10/20 connected\r[   1.0s] 20/20")
    assert stream.getvalue().endswith("[   1.0s] measuring\n")


def test_progress_writes_a_line_at_most_every_interval_otherwise() -> None:
    clock = Clock()
    stream = io.StringIO()
    progress = Progress(stream, clock, interactive=False, interval=5)
    progress.update("1")
    clock.advance(1)
    progress.update("2")
    clock.advance(5)
    progress.update("3")
    assert stream.getvalue().splitlines() == ["[   0.0s] 1", "[   6.0s] 3"]


def test_progress_can_be_silenced() -> None:
    stream = io.StringIO()
    progress = Progress(stream, Clock(), interactive=True, enabled=False)
    progress.update("x")
    progress.phase("y")
    progress.clear()
    assert stream.getvalue() == ""
