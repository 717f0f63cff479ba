"""The failure check itself: an unhandled error is reported in the test during
which its Deferred became garbage, also when the Deferred outlived a test."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from support.logcheck import FailureCollector, collect_garbage


def _failed_deferred_in_a_cycle() -> list[Any]:
    """A failed Deferred only the collector can free (a list that holds itself)."""
    failed: Deferred[None] = Deferred()
    failed.errback(ValueError("dropped after an earlier test"))
    box: list[Any] = [failed]
    box.append(box)
    return box


def test_a_cycle_that_outlived_a_test_is_reported_when_dropped(
    logged_failures: FailureCollector,
) -> None:
    holder = _failed_deferred_in_a_cycle()
    collect_garbage()  # the end of an earlier test: the cycle is still held
    assert logged_failures.flush(ValueError) == []
    del holder
    collect_garbage()
    (failure,) = logged_failures.flush(ValueError)
    assert str(failure.value) == "dropped after an earlier test"
