"""Service-tree glue: listening that fails the start, ordered stops, closers,
the garbage collector's set-up."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from pigeonpush.services import Closer, GcTuning, fail_now, listen_or_fail
from support.logcheck import FailureCollector
from support.server_harness import result_of


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


# --- listening: the one listen-or-fail ------------------------------------------------


class Endpoint:
    """A stream server endpoint whose ``listen`` answers what the test says."""

    def __init__(self, answer: Callable[[], Deferred[Any]]) -> None:
        self._answer = answer
        self.factories: list[Any] = []

    def listen(self, factory: Any) -> Deferred[Any]:
        self.factories.append(factory)
        return self._answer()


class Port:
    def __init__(self) -> None:
        self.stopped = False

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


class TellingFactory(Factory):
    def __init__(self) -> None:
        self.told: list[Any] = []

    def listening_on(self, port: Any) -> None:
        self.told.append(port)


def test_fail_now_raises_what_has_already_failed(logged_failures: FailureCollector) -> None:
    with pytest.raises(CannotListenError):
        fail_now(fail(CannotListenError("127.0.0.1", 80, OSError("in use"))))
    pending: Deferred[int] = Deferred()
    assert fail_now(pending) is pending
    pending.errback(ValueError("later"))  # not raised here: the caller's to handle
    failures: list[Failure] = []
    pending.addErrback(failures.append)
    assert failures[0].check(ValueError)
    assert result_of(fail_now(succeed(3))) == 3


def test_a_listener_that_cannot_bind_fails_the_start(logged_failures: FailureCollector) -> None:
    error = CannotListenError("127.0.0.1", 8100, OSError("Address already in use"))
    listener = listen_or_fail(Endpoint(lambda: fail(error)), Factory())  # type: ignore[arg-type]
    with pytest.raises(CannotListenError):
        listener.privilegedStartService()
    assert listener.port is None
    assert listener.stopService() is None  # nothing to close, nothing logged


def test_a_listener_listens_once_tells_its_factory_and_closes_on_stop() -> None:
    port = Port()
    endpoint = Endpoint(lambda: succeed(port))
    factory = TellingFactory()
    listener = listen_or_fail(endpoint, factory)  # type: ignore[arg-type]
    waiting = listener.when_listening()
    listener.privilegedStartService()
    listener.startService()
    assert endpoint.factories == [factory]  # the privileged step listened; start did not again
    assert factory.told == [port] and listener.port is port
    assert result_of(waiting) is port and result_of(listener.when_listening()) is port
    assert listener.stopService() is not None and port.stopped and listener.port is None


def test_a_listener_started_without_the_privileged_step_listens_at_start() -> None:
    endpoint = Endpoint(lambda: succeed(Port()))
    listener = listen_or_fail(endpoint, Factory())  # type: ignore[arg-type]
    listener.startService()
    assert len(endpoint.factories) == 1 and listener.port is not None


def test_a_later_failure_is_logged_and_a_stop_while_binding_cancels(
    logged_failures: FailureCollector,
) -> None:
    binding: list[Deferred[Any]] = []

    def bind() -> Deferred[Any]:
        binding.append(Deferred())
        return binding[-1]

    endpoint = Endpoint(bind)
    late = listen_or_fail(endpoint, Factory())  # type: ignore[arg-type]
    late.privilegedStartService()
    binding[0].errback(OSError("no such interface"))
    assert len(logged_failures.flush(OSError)) == 1
    assert not late.when_listening().called

    stopped = listen_or_fail(endpoint, Factory())  # type: ignore[arg-type]
    stopped.privilegedStartService()
    assert stopped.stopService() is None
    assert binding[1].called  # cancelled: the CancelledError is not logged
