"""The balancer's rule without ZooKeeper: a Clock and a seeded random source."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from twisted.internet.task import Clock

from pigeonpush.discovery.interface import SERVERS, Node
from pigeonpush.reglog.balancer import Balancer, PushServer, push_server_from_node


def node(node_id: str, connections: int, capacity: int, **extra: Any) -> Node:
    data = {
        "client": f"{node_id}.example:7100",
        "rpc": f"{node_id}.example:7101",
        "connections": connections,
        "capacity": capacity,
        **extra,
    }
    return Node(SERVERS, node_id, data)


def live(*nodes: Node) -> dict[str, Node]:
    return {n.node_id: n for n in nodes}


def balancer(seed: int = 7, pending_ttl: float = 10.0) -> tuple[Balancer, Clock]:
    clock = Clock()
    return Balancer(clock, random.Random(seed), pending_ttl=pending_ttl), clock


def burst(chooser: Balancer, count: int) -> Counter[str | None]:
    chosen: Counter[str | None] = Counter()
    for _ in range(count):
        server = chooser.choose()
        chosen[None if server is None else server.node_id] += 1
    return chosen


def test_no_servers_no_choice() -> None:
    chooser, _ = balancer()
    assert chooser.choose() is None
    chooser.update({})
    assert chooser.choose() is None
    assert chooser.free_capacity() == 0


def test_the_only_server_is_chosen_with_its_client_address() -> None:
    chooser, _ = balancer()
    chooser.update(live(node("a", 0, 10)))
    assert chooser.choose() == PushServer("a", "a.example:7100", 0, 10)


def test_a_burst_spreads_in_proportion_to_free_capacity() -> None:
    chooser, _ = balancer(seed=20240601)
    # Free capacity 600, 300 and 100 (capacities and loads differ).
    chooser.update(live(node("a", 400, 1000), node("b", 1700, 2000), node("c", 0, 100)))
    chosen = burst(chooser, 500)
    total = 1000
    for node_id, free in (("a", 600), ("b", 300), ("c", 100)):
        expected = 500 * free / total
        # Draws without replacement from the free slots: the spread is tight.
        assert abs(chosen[node_id] - expected) < 0.15 * expected + 5, chosen


def test_many_bursts_average_to_exact_proportions() -> None:
    chooser, clock = balancer(seed=1, pending_ttl=1.0)
    servers = live(node("a", 0, 300), node("b", 0, 200), node("c", 0, 100))
    totals: Counter[str | None] = Counter()
    for _ in range(40):
        chooser.update(servers)
        totals += burst(chooser, 60)
        clock.advance(2)  # the pending counts expire between bursts
    shares = {node_id: totals[node_id] / 2400 for node_id in "abc"}
    assert shares == pytest.approx({"a": 3 / 6, "b": 2 / 6, "c": 1 / 6}, abs=0.03)


def test_a_full_server_is_never_chosen() -> None:
    chooser, _ = balancer()
    chooser.update(live(node("full", 50, 50), node("over", 60, 50), node("free", 0, 1000)))
    assert set(burst(chooser, 200)) == {"free"}


def test_local_accounting_fills_servers_exactly_and_then_refuses() -> None:
    chooser, _ = balancer()
    chooser.update(live(node("a", 95, 100), node("b", 97, 100)))
    chosen = burst(chooser, 10)
    assert chosen == {"a": 5, "b": 3, None: 2}
    assert chooser.free_capacity() == 0
    assert chooser.pending("a") == 5


def test_an_update_from_a_server_replaces_its_pending_count() -> None:
    chooser, _ = balancer()
    servers = live(node("a", 0, 10), node("b", 0, 10))
    chooser.update(servers)
    burst(chooser, 20)
    assert chooser.choose() is None
    # b publishes that 4 of its 10 clients arrived; a says nothing new.
    chooser.update(live(servers["a"], node("b", 4, 10)))
    assert chooser.free("a") == 0
    assert chooser.free("b") == 6
    assert set(burst(chooser, 6)) == {"b"}


def test_an_unchanged_live_set_keeps_pending_counts() -> None:
    chooser, _ = balancer()
    servers = live(node("a", 0, 3))
    chooser.update(servers)
    burst(chooser, 3)
    chooser.update(dict(servers))
    assert chooser.choose() is None


def test_pending_counts_expire_without_news() -> None:
    chooser, clock = balancer(pending_ttl=10.0)
    chooser.update(live(node("a", 0, 2)))
    chooser.choose()
    clock.advance(5)
    chooser.choose()
    assert chooser.choose() is None
    clock.advance(5)  # the first client never connected
    assert chooser.pending("a") == 1
    assert chooser.choose() is not None
    assert chooser.choose() is None


def test_release_undoes_one_choice() -> None:
    chooser, _ = balancer()
    chooser.update(live(node("a", 0, 1)))
    server = chooser.choose()
    assert server is not None
    assert chooser.choose() is None
    chooser.release(server)
    assert chooser.choose() == server


def test_a_server_that_left_is_never_chosen_again() -> None:
    chooser, _ = balancer()
    chooser.update(live(node("a", 0, 100), node("b", 0, 100)))
    burst(chooser, 10)
    chooser.update(live(node("b", 0, 100)))
    assert set(burst(chooser, 50)) == {"b"}
    assert chooser.pending("a") == 0
    # Coming back, it starts afresh.
    chooser.update(live(node("a", 0, 100), node("b", 0, 100)))
    assert chooser.free("a") == 100


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"rpc": "h:1", "connections": 0, "capacity": 1}, "'client' must be"),
        ({"client": 7100, "connections": 0, "capacity": 1}, "'client' must be"),
        ({"client": "no-port", "connections": 0, "capacity": 1}, "'client' must be 'host:port'"),
        ({"client": "h:0", "connections": 0, "capacity": 1}, "'client' must be 'host:port'"),
        ({"client": "h:70000", "connections": 0, "capacity": 1}, "'client' must be"),
        ({"client": ":7100", "connections": 0, "capacity": 1}, "'client' must be"),
        ({"client": "h:1", "capacity": 1}, "'connections' must be an integer >= 0"),
        ({"client": "h:1", "connections": -1, "capacity": 1}, "'connections' must be"),
        ({"client": "h:1", "connections": 1.5, "capacity": 1}, "'connections' must be"),
        ({"client": "h:1", "connections": 0}, "'capacity' must be an integer >= 0"),
        ({"client": "h:1", "connections": 0, "capacity": True}, "'capacity' must be"),
        ({"client": "h:1", "connections": 0, "capacity": "10"}, "'capacity' must be"),
        ({"client": "h:1", "connections": 0, "capacity": 1, "websocket": 80}, "'websocket' must"),
        (
            {"client": "h:1", "connections": 0, "capacity": 1, "websocket": "h"},
            "'websocket' must be 'host:port' or 'tls:host:port'",
        ),
    ],
)
def test_node_data_that_is_unusable_is_refused(data: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        push_server_from_node(Node(SERVERS, "x", data))


def test_ipv6_client_addresses_are_usable() -> None:
    server = push_server_from_node(
        Node(SERVERS, "v6", {"client": "[::1]:7100", "connections": 0, "capacity": 1})
    )
    assert server.client == "[::1]:7100"


def test_a_server_with_unusable_data_is_ignored_with_one_warning() -> None:
    from twisted.logger import LogEvent, globalLogPublisher

    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        chooser, _ = balancer()
        broken = Node(SERVERS, "broken", {"client": "h:1", "connections": "many", "capacity": 5})
        chooser.update(live(broken, node("ok", 0, 5)))
        chooser.update(live(broken, node("ok", 1, 5)))  # unchanged: no second warning
        assert set(chooser.servers) == {"ok"}
        assert set(burst(chooser, 4)) == {"ok"}
        # Fixed data makes it usable.
        chooser.update(live(node("broken", 0, 5), node("ok", 1, 5)))
        assert set(chooser.servers) == {"broken", "ok"}
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if e.get("node_id") == "broken"]
    assert len(warnings) == 1
    assert warnings[0]["reason"] == "'connections' must be an integer >= 0"


def test_choice_uses_the_random_source() -> None:
    servers = live(*(node(f"s{i}", 0, 100) for i in range(5)))
    runs = []
    for seed in (1, 1, 2):
        chooser, _ = balancer(seed=seed)
        chooser.update(servers)
        runs.append([chooser.choose() for _ in range(30)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_avoided_servers_are_left_out_while_another_has_room() -> None:
    chooser, _ = balancer()
    chooser.update(live(node("a", 0, 1000), node("b", 0, 10), node("c", 0, 1000)))
    avoid = {"a.example:7100", "c.example:7100", "elsewhere.example:7100"}
    chosen = Counter()
    for _ in range(10):
        server = chooser.choose(avoid)
        chosen[None if server is None else server.node_id] += 1
    assert chosen == {"b": 10}
    # b is full now: with no other choice, an avoided server is better than none
    server = chooser.choose(avoid)
    assert server is not None and server.node_id in ("a", "c")


def test_when_every_server_is_avoided_the_draw_is_among_all() -> None:
    chooser, _ = balancer(seed=3)
    chooser.update(live(node("a", 0, 100), node("b", 0, 100)))
    chosen = Counter()
    for _ in range(100):
        server = chooser.choose({"a.example:7100", "b.example:7100"})
        assert server is not None
        chosen[server.node_id] += 1
    assert set(chosen) == {"a", "b"}


def test_avoiding_a_full_server_changes_nothing() -> None:
    chooser, _ = balancer()
    chooser.update(live(node("a", 10, 10), node("b", 0, 10)))
    server = chooser.choose({"b.example:7100"})
    assert server is not None and server.node_id == "b"
    chooser.update(live(node("a", 10, 10)))
    assert chooser.choose({"b.example:7100"}) is None


def test_websocket_requests_go_only_to_servers_with_a_websocket_listener() -> None:
    chooser, _ = balancer()
    chooser.update(
        live(
            node("a", 0, 100),
            node("b", 0, 100, websocket="b.example:7103"),
            node("c", 0, 100, websocket="tls:c.example:443"),
        )
    )
    assert chooser.servers["a"].websocket is None
    assert (chooser.servers["b"].websocket, chooser.servers["b"].websocket_transport) == (
        "b.example:7103",
        "ws",
    )
    assert (chooser.servers["c"].websocket, chooser.servers["c"].websocket_transport) == (
        "c.example:443",
        "wss",
    )
    chosen = Counter(
        server.node_id for server in (chooser.choose(websocket=True) for _ in range(50)) if server
    )
    assert set(chosen) == {"b", "c"}
    # avoid names WebSocket addresses for a WebSocket client
    for _ in range(20):
        server = chooser.choose(["b.example:7103"], websocket=True)
        assert server is not None and server.node_id == "c"


def test_a_websocket_request_without_such_a_server_gets_none() -> None:
    chooser, _ = balancer()
    chooser.update(live(node("a", 0, 100)))
    assert chooser.choose(websocket=True) is None
    assert chooser.choose() is not None
