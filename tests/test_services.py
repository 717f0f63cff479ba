"""Service-tree glue: ordered stops and closers."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from pigeonpush.services import Closer


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
