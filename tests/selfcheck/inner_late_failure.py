"""Run by test_logcheck.py in a child pytest: a failed Deferred in a cycle kept
past its test and dropped in a later one must still fail the run."""

from typing import Any

from twisted.internet.defer import Deferred

KEPT: list[Any] = []


def test_keeps_a_failed_deferred_in_a_cycle():
    failed: Deferred[None] = Deferred()
    failed.errback(ValueError("dropped after its test"))
    box: list[Any] = [failed]
    box.append(box)
    KEPT.append(box)


def test_drops_it():
    KEPT.clear()
