"""Service-tree glue: ordered stops, closers, the garbage collector's set-up."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from pigeonpush.services import Closer, GcTuning


def test_the_closer_closes_on_stop_and_waits_for_it() -> None:
    closing: Deferred[None] = Deferred()
    calls: list[int] = []

    def close() -> Deferred[None]:
        calls.append(1)
        return closing

    service = Closer(close)
    service.startService()
    assert calls == []
    stopped = service.stopService()
    assert calls == [1]
    assert not stopped.called
    closing.callback(None)
    assert stopped.called


class _Starting:
    """callWhenRunning of a reactor that is about to run."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], Any]] = []

    def callWhenRunning(self, function: Callable[[], Any]) -> None:
        self.calls.append(function)


def test_start_up_objects_are_frozen_once_the_reactor_runs() -> None:
    reactor = _Starting()
    service = GcTuning(reactor)
    made_at_start_up = [["a configured part"]]
    service.startService()
    assert any(each is made_at_start_up for each in gc.get_objects())  # not before it runs
    [tune] = reactor.calls
    try:
        tune()
        # Frozen: no collection walks it any more.
        assert not any(each is made_at_start_up for each in gc.get_objects())
        made_later = [["a connection"]]
        assert any(each is made_later for each in gc.get_objects())
    finally:
        service.stopService()
        gc.unfreeze()


def test_the_young_threshold_is_raised_while_running_and_restored_on_stop() -> None:
    before = gc.get_threshold()
    reactor = _Starting()
    service = GcTuning(reactor, young_threshold=4321)
    service.startService()
    assert gc.get_threshold() == before  # not before the reactor runs
    [tune] = reactor.calls
    try:
        tune()
        assert gc.get_threshold() == (4321, *before[1:])
    finally:
        service.stopService()
        gc.unfreeze()
    assert gc.get_threshold() == before


def test_a_service_stopped_before_the_reactor_ran_changes_nothing() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    reactor = _Starting()
    service = GcTuning(reactor, young_threshold=4321)
    service.startService()
    service.stopService()
    [tune] = reactor.calls
    tune()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_a_young_threshold_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="young_threshold must be at least 1"):
        GcTuning(_Starting(), young_threshold=0)
