"""The behaviour both discovery backends share, run against each of them
(the static backend, and ZooKeeper through the real server)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.internet.task import Clock
from zope.interface import implementer

from pigeonpush.discovery.interface import DELIVERY, SERVERS, Discovery, DiscoveryClosed
from pigeonpush.discovery.static import StaticDiscovery
from pigeonpush.discovery.zookeeper import ZooKeeperDiscovery
from support.discoveries import (
    TEST_SESSION_TIMEOUT,
    TEST_UPDATE_INTERVAL,
    Discoveries,
    Recorder,
)
from support.logcheck import FailureCollector

SERVER_DATA = {
    "client": "127.0.0.1:7100",
    "rpc": "127.0.0.1:7101",
    "connections": 0,
    "capacity": 10,
}


def load(connections: int) -> dict[str, object]:
    return {**SERVER_DATA, "connections": connections}


@pytest_twisted.ensureDeferred
async def test_a_registered_node_appears_to_a_watcher(discoveries: Discoveries) -> None:
    recorder = Recorder()
    await discoveries.observer.watch(SERVERS, recorder)
    assert recorder.sets == [{}]

    await discoveries.owner.register(SERVERS, "s1", SERVER_DATA)

    await recorder.wait_for_data("s1", SERVER_DATA)
    node = recorder.latest["s1"]
    assert (node.kind, node.node_id) == (SERVERS, "s1")
    assert all(thread is threading.main_thread() for thread in recorder.threads)


@pytest_twisted.ensureDeferred
async def test_a_watch_starts_with_the_nodes_already_there(discoveries: Discoveries) -> None:
    await discoveries.owner.register(SERVERS, "s1", SERVER_DATA)
    await discoveries.owner.register(SERVERS, "s2", load(3))
    recorder = Recorder()
    # The first set may come before the nodes are visible to another session.
    await discoveries.observer.watch(SERVERS, recorder)
    await recorder.wait_for_data("s2", load(3))
    assert set(recorder.latest) == {"s1", "s2"}
    assert discoveries.observer.live(SERVERS) == recorder.latest


@pytest_twisted.ensureDeferred
async def test_the_first_set_is_delivered_before_watch_fires(discoveries: Discoveries) -> None:
    recorder = Recorder()
    watch = await discoveries.observer.watch(SERVERS, recorder)
    assert len(recorder.sets) == 1
    watch.cancel()


@pytest_twisted.ensureDeferred
async def test_data_updates_reach_the_watcher(discoveries: Discoveries) -> None:
    recorder = Recorder()
    await discoveries.observer.watch(SERVERS, recorder)
    registration = await discoveries.owner.register(SERVERS, "s1", load(0))
    await recorder.wait_for_data("s1", load(0))

    registration.update(load(7))

    await recorder.wait_for_data("s1", load(7))


@pytest_twisted.ensureDeferred
async def test_updates_are_coalesced_and_the_latest_wins(discoveries: Discoveries) -> None:
    """Updates within one interval make one write, of the last data."""
    recorder = Recorder()
    await discoveries.observer.watch(SERVERS, recorder)
    registration = await discoveries.owner.register(SERVERS, "s1", load(0))
    for connections in range(1, 6):
        registration.update(load(connections))

    await recorder.wait_for_data("s1", load(5))
    # Two writes: the registration, then one for all five updates.
    assert recorder.data_seen("s1") == [None, load(0), load(5)]


@implementer(IReactorTime, IReactorThreads)
class ClockedReactor:
    """The real reactor's threads with a Clock's time: timers wait for the test."""

    def __init__(self, clock: Clock) -> None:
        from twisted.internet import reactor

        self._reactor = reactor
        self._clock = clock

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> IDelayedCall:
        return self._clock.callLater(delay, f, *args, **kwargs)

    def getDelayedCalls(self) -> Any:
        return self._clock.getDelayedCalls()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


async def check_updates_wait_for_the_interval(
    owner: Discovery, observer: Discovery, clock: Clock
) -> None:
    """An update within the interval waits for it, on the owner's clock."""
    recorder = Recorder()
    watching = observer.watch(SERVERS, recorder)
    clock.advance(0)  # the static backend publishes on its clock
    await watching
    registration = await owner.register(SERVERS, "s1", load(0))
    clock.advance(0)
    await recorder.wait_for_data("s1", load(0))

    registration.update(load(1))
    clock.advance(TEST_UPDATE_INTERVAL * 0.99)
    assert recorder.data_seen("s1")[-1] == load(0)
    clock.advance(TEST_UPDATE_INTERVAL)
    clock.advance(0)
    await recorder.wait_for_data("s1", load(1))


@pytest_twisted.ensureDeferred
async def test_updates_are_spaced_by_the_interval_static() -> None:
    clock = Clock()
    discovery = StaticDiscovery(clock=clock, min_update_interval=TEST_UPDATE_INTERVAL)
    try:
        await check_updates_wait_for_the_interval(discovery, discovery, clock)
    finally:
        await discovery.close()


@pytest_twisted.ensureDeferred
async def test_updates_are_spaced_by_the_interval_zookeeper(
    zookeeper_hosts: str, make_zookeeper_discovery: Any
) -> None:
    clock = Clock()
    owner = ZooKeeperDiscovery(
        zookeeper_hosts,
        ClockedReactor(clock),  # type: ignore[arg-type]
        min_update_interval=TEST_UPDATE_INTERVAL,
        session_timeout=TEST_SESSION_TIMEOUT,
    )
    try:
        await check_updates_wait_for_the_interval(owner, make_zookeeper_discovery(), clock)
    finally:
        await owner.close()


@pytest_twisted.ensureDeferred
async def test_unchanged_data_is_not_written_again(discoveries: Discoveries) -> None:
    recorder = Recorder()
    await discoveries.observer.watch(SERVERS, recorder)
    registration = await discoveries.owner.register(SERVERS, "s1", load(1))
    await recorder.wait_for_data("s1", load(1))
    registration.update(load(1))
    registration.update(load(2))
    registration.update(load(1))
    registration.update({"rpc": "127.0.0.1:7101"})
    await recorder.wait_for_data("s1", {"rpc": "127.0.0.1:7101"})
    assert recorder.data_seen("s1") == [None, load(1), {"rpc": "127.0.0.1:7101"}]


@pytest_twisted.ensureDeferred
async def test_an_unregistered_node_disappears(discoveries: Discoveries) -> None:
    recorder = Recorder()
    await discoveries.observer.watch(SERVERS, recorder)
    registration = await discoveries.owner.register(SERVERS, "s1", SERVER_DATA)
    await discoveries.owner.register(SERVERS, "s2", SERVER_DATA)
    await recorder.wait_for_data("s1", SERVER_DATA)

    await registration.unregister()

    await recorder.wait_for_absence("s1")
    assert "s2" in recorder.latest
    registration.update(load(9))  # after unregister: ignored
    await registration.unregister()  # twice: harmless
    assert "s1" not in discoveries.observer.live(SERVERS)


@pytest_twisted.ensureDeferred
async def test_a_node_id_can_register_again_after_unregister(discoveries: Discoveries) -> None:
    recorder = Recorder()
    await discoveries.observer.watch(SERVERS, recorder)
    first = await discoveries.owner.register(SERVERS, "s1", load(1))
    await first.unregister()
    await discoveries.owner.register(SERVERS, "s1", load(2))
    await recorder.wait_for_data("s1", load(2))


@pytest_twisted.ensureDeferred
async def test_kinds_are_watched_separately(discoveries: Discoveries) -> None:
    servers, delivery = Recorder(), Recorder()
    await discoveries.observer.watch(SERVERS, servers)
    await discoveries.observer.watch(DELIVERY, delivery)
    await discoveries.owner.register(DELIVERY, "d1", {"rpc": "127.0.0.1:7201"})
    await discoveries.owner.register(SERVERS, "s1", SERVER_DATA)

    await delivery.wait_for_data("d1", {"rpc": "127.0.0.1:7201"})
    await servers.wait_for_data("s1", SERVER_DATA)
    assert set(delivery.latest) == {"d1"}
    assert set(servers.latest) == {"s1"}


@pytest_twisted.ensureDeferred
async def test_a_cancelled_watch_gets_no_more_sets(discoveries: Discoveries) -> None:
    cancelled, kept = Recorder(), Recorder()
    watch = await discoveries.observer.watch(SERVERS, cancelled)
    await discoveries.observer.watch(SERVERS, kept)
    watch.cancel()

    await discoveries.owner.register(SERVERS, "s1", SERVER_DATA)

    await kept.wait_for_data("s1", SERVER_DATA)
    assert cancelled.sets == [{}]


@pytest_twisted.ensureDeferred
async def test_a_failing_callback_does_not_stop_the_others(
    discoveries: Discoveries, logged_failures: FailureCollector
) -> None:
    def broken(live: object) -> None:
        raise RuntimeError("callback bug")

    await discoveries.observer.watch(SERVERS, broken)
    recorder = Recorder()
    await discoveries.observer.watch(SERVERS, recorder)
    await discoveries.owner.register(SERVERS, "s1", SERVER_DATA)

    await recorder.wait_for_data("s1", SERVER_DATA)
    assert logged_failures.flush(RuntimeError)


@pytest_twisted.ensureDeferred
async def test_data_arrives_as_json_gives_it_back(discoveries: Discoveries) -> None:
    recorder = Recorder()
    await discoveries.observer.watch(SERVERS, recorder)
    await discoveries.owner.register(SERVERS, "s1", {"tags": ("a", "b"), "ratio": 0.5, "x": None})
    await recorder.wait_for_data("s1", {"tags": ["a", "b"], "ratio": 0.5, "x": None})


@pytest.mark.parametrize(
    ("kind", "node_id", "data", "message"),
    [
        ("server", "s1", {}, "unknown node kind 'server'"),
        (SERVERS, "", {}, "node id must be a non-empty string"),
        (SERVERS, "a/b", {}, "must not contain '/'"),
        (SERVERS, "..", {}, "must not be '..'"),
        (SERVERS, "tab\there", {}, "control characters"),
        (SERVERS, "x" * 256, {}, "at most 255 characters"),
        (SERVERS, "s1", ["not", "a", "mapping"], "must be a mapping"),
        (SERVERS, "s1", {1: "x"}, "keys must be strings"),
        (SERVERS, "s1", {"when": object()}, "JSON-serialisable"),
        (SERVERS, "s1", {"ratio": float("nan")}, "JSON-serialisable"),
        (SERVERS, "s1", {"blob": "x" * 70_000}, "the limit is 65536"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_registrations_are_refused_and_nothing_is_registered(
    discoveries: Discoveries, kind: str, node_id: str, data: object, message: str
) -> None:
    recorder = Recorder()
    await discoveries.observer.watch(SERVERS, recorder)
    with pytest.raises(ValueError, match=message):
        discoveries.owner.register(kind, node_id, data)  # type: ignore[arg-type]
    await discoveries.owner.register(SERVERS, "marker", {})
    await recorder.wait_for_data("marker", {})
    assert set(recorder.latest) == {"marker"}


@pytest_twisted.ensureDeferred
async def test_bad_update_data_is_refused_and_the_node_keeps_its_data(
    discoveries: Discoveries,
) -> None:
    recorder = Recorder()
    await discoveries.observer.watch(SERVERS, recorder)
    registration = await discoveries.owner.register(SERVERS, "s1", load(1))
    with pytest.raises(ValueError, match="JSON-serialisable"):
        registration.update({"connections": {1, 2}})
    registration.update(load(2))
    await recorder.wait_for_data("s1", load(2))
    assert recorder.data_seen("s1") == [None, load(1), load(2)]


@pytest_twisted.ensureDeferred
async def test_a_second_registration_of_one_id_is_refused(discoveries: Discoveries) -> None:
    await discoveries.owner.register(SERVERS, "s1", SERVER_DATA)
    with pytest.raises(ValueError, match="already registered by this process"):
        discoveries.owner.register(SERVERS, "s1", SERVER_DATA)
    # The same id under another kind is another node.
    await discoveries.owner.register(DELIVERY, "s1", {"rpc": "127.0.0.1:7201"})


@pytest_twisted.ensureDeferred
async def test_watching_an_unknown_kind_is_refused(discoveries: Discoveries) -> None:
    with pytest.raises(ValueError, match="unknown node kind"):
        discoveries.observer.watch("clients", Recorder())
    with pytest.raises(ValueError, match="unknown node kind"):
        discoveries.observer.live("clients")


@pytest_twisted.ensureDeferred
async def test_live_is_empty_before_a_watch(discoveries: Discoveries) -> None:
    await discoveries.owner.register(SERVERS, "s1", SERVER_DATA)
    assert dict(discoveries.observer.live(SERVERS)) == {}


@pytest_twisted.ensureDeferred
async def test_a_closed_discovery_refuses_calls(discoveries: Discoveries) -> None:
    registration = await discoveries.owner.register(SERVERS, "s1", SERVER_DATA)
    await discoveries.owner.close()
    await discoveries.owner.close()  # twice: harmless

    with pytest.raises(DiscoveryClosed):
        await discoveries.owner.register(SERVERS, "s2", SERVER_DATA)
    with pytest.raises(DiscoveryClosed):
        await discoveries.owner.watch(SERVERS, Recorder())
    with pytest.raises(DiscoveryClosed):
        await discoveries.owner.start()
    registration.update(load(3))  # after close: ignored
    await registration.unregister()


@pytest_twisted.ensureDeferred
async def test_watches_of_one_kind_share_the_live_set(discoveries: Discoveries) -> None:
    first, second = Recorder(), Recorder()
    await discoveries.observer.watch(SERVERS, first)
    await discoveries.owner.register(SERVERS, "s1", SERVER_DATA)
    await first.wait_for_data("s1", SERVER_DATA)
    await discoveries.observer.watch(SERVERS, second)
    assert second.sets == [first.latest]
