"""The delivery worker's service parts: listening, registration, ordered stop,
the lag gauge, and the consume loop's handling of its own bugs."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from pigeonpush.delivery import metrics
from pigeonpush.delivery.loop import ConsumeLoop
from pigeonpush.delivery.router import BatchReport
from pigeonpush.delivery.service import LagGauge, RegistrationService
from pigeonpush.discovery import Node, StaticDiscovery
from pigeonpush.discovery.interface import NodeRegistration
from pigeonpush.services import Listener, StopInOrder
from pigeonpush.store.memory import MemoryStore
from pigeonpush.store.model import Message, Notification, QueueEntry
from support.logcheck import FailureCollector
from support.waiting import wait_for


def listener(reactor: Any, port: int = 0) -> Listener:
    endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    return Listener(endpoint, Factory.forProtocol(Protocol))


@pytest_twisted.ensureDeferred
async def test_a_port_in_use_fails_the_start() -> None:
    from twisted.internet import reactor

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        service = listener(reactor, taken.getsockname()[1])
        with pytest.raises(CannotListenError):
            service.startService()


@pytest_twisted.ensureDeferred
async def test_registration_publishes_the_listening_port_and_leaves_on_stop() -> None:
    from twisted.internet import reactor

    discovery = StaticDiscovery(clock=reactor)
    seen: list[Mapping[str, Node]] = []
    await discovery.watch("delivery", seen.append)
    rpc = listener(reactor)
    registration = RegistrationService(discovery, "worker-1", rpc, advertise=None)
    rpc.startService()
    registration.startService()
    port = (await rpc.when_listening()).getHost().port  # type: ignore[attr-defined]
    await wait_for(lambda: seen and "worker-1" in seen[-1], timeout=5, what="the node")
    assert seen[-1]["worker-1"].data == {"rpc": f"127.0.0.1:{port}"}
    await registration.stopService()
    await wait_for(lambda: "worker-1" not in seen[-1], timeout=5, what="the node to go")
    await rpc.stopService()
    await discovery.close()


@pytest_twisted.ensureDeferred
async def test_an_advertised_address_wins() -> None:
    from twisted.internet import reactor

    discovery = StaticDiscovery(clock=reactor)
    seen: list[Mapping[str, Node]] = []
    await discovery.watch("delivery", seen.append)
    rpc = listener(reactor)
    registration = RegistrationService(discovery, "worker-1", rpc, advertise="10.1.2.3:7201")
    rpc.startService()
    registration.startService()
    await wait_for(lambda: seen and "worker-1" in seen[-1], timeout=5, what="the node")
    assert seen[-1]["worker-1"].data == {"rpc": "10.1.2.3:7201"}
    await registration.stopService()
    await rpc.stopService()
    await discovery.close()


class RefusingDiscovery:
    def register(self, kind: str, node_id: str, data: Mapping[str, Any]) -> Deferred[Any]:
        raise ValueError("node id worker-1 is registered already")


class SilentDiscovery:
    """A discovery whose registration never completes (ZooKeeper unreachable)."""

    def __init__(self) -> None:
        self.pending: list[Deferred[NodeRegistration]] = []

    def register(self, kind: str, node_id: str, data: Mapping[str, Any]) -> Deferred[Any]:
        waiting: Deferred[NodeRegistration] = Deferred()
        self.pending.append(waiting)
        return waiting


@pytest_twisted.ensureDeferred
async def test_a_failed_registration_is_logged_and_stop_still_works(
    logged_failures: FailureCollector,
) -> None:
    from twisted.internet import reactor

    rpc = listener(reactor)
    registration = RegistrationService(RefusingDiscovery(), "worker-1", rpc, None)  # type: ignore[arg-type]
    rpc.startService()
    registration.startService()
    await rpc.when_listening()
    assert logged_failures.flush(ValueError)
    await registration.stopService()
    await rpc.stopService()


@pytest_twisted.ensureDeferred
async def test_a_registration_that_never_completes_does_not_hold_up_stop() -> None:
    from twisted.internet import reactor

    discovery = SilentDiscovery()
    rpc = listener(reactor)
    registration = RegistrationService(discovery, "worker-1", rpc, None)  # type: ignore[arg-type]
    rpc.startService()
    registration.startService()
    await rpc.when_listening()
    assert len(discovery.pending) == 1
    stopped = registration.stopService()
    assert stopped.called
    await rpc.stopService()


def test_stop_before_the_port_listens() -> None:
    never: Deferred[Any] = Deferred()

    class Unbound:
        def listen(self, factory: Any) -> Deferred[Any]:
            return never

    rpc = Listener(Unbound(), Factory())  # type: ignore[arg-type]
    registration = RegistrationService(SilentDiscovery(), "w", rpc, None)  # type: ignore[arg-type]
    rpc.startService()
    registration.startService()
    assert registration.stopService().called


class Recorder(Service):
    def __init__(self, name: str, log: list[str], fails: bool = False) -> None:
        self.name = name
        self._log = log
        self._fails = fails
        self.finish: Deferred[None] = Deferred()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._log.append(f"stop {self.name}")
        if self._fails:
            raise RuntimeError(f"{self.name} failed to stop")
        return self.finish.addCallback(lambda _: self._log.append(f"stopped {self.name}"))


def test_children_stop_one_at_a_time_last_first(logged_failures: FailureCollector) -> None:
    log: list[str] = []
    top = StopInOrder()
    first, broken, last = (
        Recorder("first", log),
        Recorder("broken", log, True),
        Recorder("last", log),
    )
    for child in (first, broken, last):
        child.setServiceParent(top)
    top.startService()
    stopped = top.stopService()
    assert log == ["stop last"]
    last.finish.callback(None)
    assert log == ["stop last", "stopped last", "stop broken", "stop first"]
    assert logged_failures.flush(RuntimeError)
    assert not stopped.called
    first.finish.callback(None)
    assert stopped.called


def test_the_lag_gauge_follows_the_queue_and_survives_a_store_error() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    gauge = LagGauge(store, 5.0, clock)
    gauge.startService()
    message = Message("01HZX3JQ6Q4V8Y2N7K5M9T1B3C", "t", "x", {}, 0, 600)
    store.accept([Notification(message, ("a",))])
    clock.advance(5)
    assert metrics.QUEUE_LAG._value.get() == 1
    store.close()
    clock.advance(5)  # logged as a warning, not a failure; the timer goes on
    assert gauge.running
    gauge.stopService()


class BuggyRouter:
    def __init__(self) -> None:
        self.calls = 0

    async def route(self, entries: Sequence[QueueEntry]) -> BatchReport:
        self.calls += 1
        if self.calls == 1:
            raise ZeroDivisionError("a bug")
        return BatchReport(entries=len(entries))


def test_a_bug_in_routing_is_logged_and_the_batch_retried(
    logged_failures: FailureCollector,
) -> None:
    clock = Clock()
    store = MemoryStore(clock)
    router = BuggyRouter()
    loop = ConsumeLoop(store, router, clock, consumer="w", retry_initial=1.0)  # type: ignore[arg-type]
    loop.startService()
    message = Message("01HZX3JQ6Q4V8Y2N7K5M9T1B3C", "t", "x", {}, 0, 600)
    store.accept([Notification(message, ("a",))])
    clock.advance(0)
    assert router.calls == 1
    assert logged_failures.flush(ZeroDivisionError)
    assert store.queue_lag().result == 1  # type: ignore[attr-defined]
    clock.advance(1.0)
    assert router.calls == 2
    assert store.queue_lag().result == 0  # type: ignore[attr-defined]
    loop.stopService()
    clock.advance(1.0)
