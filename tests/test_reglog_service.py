"""The discovery watch that feeds reglog's balancer (static discovery and a Clock)."""

from __future__ import annotations

import random
from typing import Any

from prometheus_client import REGISTRY
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from pigeonpush.discovery import DiscoveryClosed, StaticDiscovery, Watch, WatchCallback
from pigeonpush.discovery.interface import SERVERS
from pigeonpush.reglog.balancer import Balancer
from pigeonpush.reglog.service import ServerWatchService


def sample(name: str) -> float | None:
    value: float | None = REGISTRY.get_sample_value(name)
    return value


def server_data(connections: int = 0, capacity: int = 10) -> dict[str, Any]:
    return {
        "client": "127.0.0.1:7100",
        "rpc": "127.0.0.1:7101",
        "connections": connections,
        "capacity": capacity,
    }


class FlakyStaticDiscovery(StaticDiscovery):
    """Static discovery whose first ``failures`` watches fail, like a backend out of reach."""

    def __init__(self, failures: int, clock: Clock) -> None:
        super().__init__(clock=clock, min_update_interval=0)
        self.failures = failures
        self.attempts = 0

    def watch(self, kind: str, callback: WatchCallback) -> Deferred[Watch]:
        self.attempts += 1
        if self.attempts <= self.failures:
            return fail(DiscoveryClosed("backend not reachable"))
        return super().watch(kind, callback)


def test_the_balancer_follows_the_live_servers() -> None:
    clock = Clock()
    discovery = StaticDiscovery(clock=clock, min_update_interval=0)
    balancer = Balancer(clock, random.Random(1))
    service = ServerWatchService(discovery, balancer, clock)
    service.startService()
    clock.advance(0)
    assert balancer.servers == {}

    registered = discovery.register(SERVERS, "s1", server_data(connections=4, capacity=10))
    clock.advance(0)
    assert set(balancer.servers) == {"s1"}
    assert balancer.free("s1") == 6
    assert sample("pigeonpush_reglog_live_servers") == 1
    assert sample("pigeonpush_reglog_published_free_capacity") == 6

    registered.result.unregister()
    clock.advance(0)
    assert balancer.servers == {}
    assert sample("pigeonpush_reglog_live_servers") == 0
    service.stopService()


def test_no_updates_after_stop() -> None:
    clock = Clock()
    discovery = StaticDiscovery(clock=clock, min_update_interval=0)
    balancer = Balancer(clock, random.Random(1))
    service = ServerWatchService(discovery, balancer, clock)
    service.startService()
    clock.advance(0)
    service.stopService()
    discovery.register(SERVERS, "s1", server_data())
    clock.advance(0)
    assert balancer.servers == {}


def test_a_failed_watch_is_retried_with_doubling_delays() -> None:
    clock = Clock()
    discovery = FlakyStaticDiscovery(failures=3, clock=clock)
    discovery.register(SERVERS, "s1", server_data())
    balancer = Balancer(clock, random.Random(1))
    service = ServerWatchService(discovery, balancer, clock, retry_delays=(1.0, 3.0))
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        service.startService()
        assert discovery.attempts == 1
        clock.advance(1.0)
        assert discovery.attempts == 2
        clock.advance(1.9)
        assert discovery.attempts == 2
        clock.advance(0.1)  # 2 s after the second failure
        assert discovery.attempts == 3
        clock.advance(3.0)  # capped at 3 s
        assert discovery.attempts == 4
        clock.advance(0)
        assert set(balancer.servers) == {"s1"}
    finally:
        globalLogPublisher.removeObserver(events.append)
        service.stopService()
    warnings = [e for e in events if e.get("error") == "backend not reachable"]
    assert [e["delay"] for e in warnings] == [1.0, 2.0, 3.0]


def test_stopping_cancels_a_pending_retry() -> None:
    clock = Clock()
    discovery = FlakyStaticDiscovery(failures=1, clock=clock)
    service = ServerWatchService(discovery, Balancer(clock), clock)
    service.startService()
    service.stopService()
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert discovery.attempts == 1


def test_a_watch_that_arrives_after_stop_is_cancelled() -> None:
    clock = Clock()
    discovery = StaticDiscovery(clock=clock, min_update_interval=0)
    discovery.register(SERVERS, "s1", server_data())
    balancer = Balancer(clock)
    service = ServerWatchService(discovery, balancer, clock)
    service.startService()  # the watch fires from the loop, after this
    service.stopService()
    clock.advance(0)
    clock.advance(0)
    assert balancer.servers == {}
