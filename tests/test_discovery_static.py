"""The static backend on a Clock: fixed nodes, when callbacks run, rate limit, close."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from pigeonpush.discovery.interface import DELIVERY, SERVERS, DiscoveryClosed, Node
from pigeonpush.discovery.static import StaticDiscovery
from support.discoveries import Recorder

T = TypeVar("T")
FIXED = {
    SERVERS: [
        Node(SERVERS, "fixed1", {"client": "10.0.0.1:7100", "rpc": "10.0.0.1:7101"}),
        Node(SERVERS, "fixed2", {"client": "10.0.0.2:7100", "rpc": "10.0.0.2:7101"}),
    ],
    DELIVERY: [Node(DELIVERY, "d1", {"rpc": "10.0.0.3:7201"})],
}


def watched(discovery: StaticDiscovery, clock: Clock, kind: str = SERVERS) -> Recorder:
    recorder = Recorder()
    watching = discovery.watch(kind, recorder)
    clock.advance(0)
    assert watching.called
    return recorder


def test_fixed_nodes_are_live_from_the_first_set() -> None:
    clock = Clock()
    discovery = StaticDiscovery(FIXED, clock=clock)
    recorder = watched(discovery, clock)
    assert recorder.sets == [{node.node_id: node for node in FIXED[SERVERS]}]
    assert set(watched(discovery, clock, DELIVERY).latest) == {"d1"}
    assert set(discovery.fixed(SERVERS)) == {"fixed1", "fixed2"}


def test_registered_nodes_join_the_fixed_ones() -> None:
    clock = Clock()
    discovery = StaticDiscovery(FIXED, clock=clock)
    recorder = watched(discovery, clock)
    registered = discovery.register(SERVERS, "local", {"rpc": "127.0.0.1:7101"})
    assert registered.called
    clock.advance(0)
    assert set(recorder.latest) == {"fixed1", "fixed2", "local"}
    assert recorder.latest["local"] == Node(SERVERS, "local", {"rpc": "127.0.0.1:7101"})


def test_callbacks_run_from_the_loop_never_inside_a_call() -> None:
    clock = Clock()
    discovery = StaticDiscovery(clock=clock)
    recorder = Recorder()
    watching = discovery.watch(SERVERS, recorder)
    assert recorder.sets == [] and not watching.called
    clock.advance(0)
    assert recorder.sets == [{}] and watching.called

    discovery.register(SERVERS, "s1", {})
    assert len(recorder.sets) == 1
    clock.advance(0)
    assert len(recorder.sets) == 2


def test_changes_in_one_turn_make_one_set() -> None:
    clock = Clock()
    discovery = StaticDiscovery(clock=clock)
    recorder = watched(discovery, clock)
    discovery.register(SERVERS, "s1", {})
    discovery.register(SERVERS, "s2", {})
    clock.advance(0)
    assert [set(live) for live in recorder.sets] == [set(), {"s1", "s2"}]


def test_updates_are_written_at_most_once_per_interval() -> None:
    clock = Clock()
    discovery = StaticDiscovery(clock=clock, min_update_interval=1.0)
    recorder = watched(discovery, clock)
    registration = result_of(discovery.register(SERVERS, "s1", {"n": 0}))
    clock.advance(0)

    clock.advance(0.1)
    registration.update({"n": 1})
    clock.advance(0.5)
    registration.update({"n": 2})
    clock.advance(0)
    assert recorder.data_seen("s1") == [None, {"n": 0}]
    clock.advance(0.4)  # one interval after the registration
    clock.advance(0)
    assert recorder.data_seen("s1") == [None, {"n": 0}, {"n": 2}]


def test_a_watch_callback_may_change_the_registry() -> None:
    clock = Clock()
    discovery = StaticDiscovery(clock=clock)
    seen: list[set[str]] = []

    def register_a_follower(live: Mapping[str, Node]) -> None:
        seen.append(set(live))
        if "leader" in live and "follower" not in live:
            discovery.register(SERVERS, "follower", {})

    discovery.watch(SERVERS, register_a_follower)
    clock.advance(0)
    discovery.register(SERVERS, "leader", {})
    clock.advance(0)
    clock.advance(0)
    assert seen == [set(), {"leader"}, {"leader", "follower"}]


def test_a_fixed_node_id_cannot_be_registered() -> None:
    discovery = StaticDiscovery(FIXED, clock=Clock())
    with pytest.raises(ValueError, match="in the fixed list"):
        discovery.register(SERVERS, "fixed1", {})
    # The same id is free under another kind.
    assert discovery.register(DELIVERY, "fixed1", {}).called


def test_close_fails_watches_still_waiting_and_stops_callbacks() -> None:
    clock = Clock()
    discovery = StaticDiscovery(clock=clock)
    primed = watched(discovery, clock)
    waiting = discovery.watch(SERVERS, Recorder())
    discovery.register(SERVERS, "s1", {})

    assert discovery.close().called
    clock.advance(0)

    failure_of(waiting).trap(DiscoveryClosed)
    assert primed.sets == [{}]
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ({"clients": []}, "unknown node kind"),
        ({SERVERS: [Node(DELIVERY, "d1", {})]}, "of kind 'delivery' listed as servers"),
        ({SERVERS: [Node(SERVERS, "a", {}), Node(SERVERS, "a", {})]}, "listed twice"),
        ({SERVERS: [Node(SERVERS, "a/b", {})]}, "must not contain '/'"),
        ({SERVERS: [Node(SERVERS, "a", {"x": object()})]}, "JSON-serialisable"),
    ],
)
def test_bad_fixed_nodes_are_refused(nodes: Mapping[str, Sequence[Node]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StaticDiscovery(nodes, clock=Clock())


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="min_update_interval"):
        StaticDiscovery(clock=Clock(), min_update_interval=-1)


def result_of(deferred: Deferred[T]) -> T:
    """The result of a Deferred that has fired."""
    results: list[T | Failure] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    assert not isinstance(result, Failure), result
    return result


def failure_of(deferred: Deferred[object]) -> Failure:
    """The failure of a Deferred that has failed."""
    results: list[object] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    assert isinstance(results[0], Failure), results[0]
    return results[0]
