"""Service-tree glue: ordered stops, closers, freezing the start-up objects."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from pigeonpush.services import Closer, FreezeAfterStart


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
    service = FreezeAfterStart(reactor)
    made_at_start_up = [["a configured part"]]
    service.startService()
    assert any(each is made_at_start_up for each in gc.get_objects())  # not before it runs
    [freeze] = reactor.calls
    try:
        freeze()
        # Frozen: no collection walks it any more.
        assert not any(each is made_at_start_up for each in gc.get_objects())
        made_later = [["a connection"]]
        assert any(each is made_later for each in gc.get_objects())
    finally:
        gc.unfreeze()
