"""AmpPullSource against delivery doubles over loopback AMP: round robin, failover."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted

from pigeonpush.discovery.interface import Node
from pigeonpush.rpc import PushItem
from pigeonpush.rpcpool import AmpPool, RpcUnavailable
from pigeonpush.server.pull import AmpPullSource
from support.delivery_double import DeliveryDouble
from support.servers import free_port
from support.waiting import wait_for


def node(node_id: str, rpc: object) -> Node:
    return Node("delivery", node_id, {"rpc": rpc})


def item(n: int) -> PushItem:
    return PushItem("alice", f"m{n:03d}", f"title {n}", "text")


@pytest_twisted.async_yield_fixture
async def doubles() -> AsyncIterator[list[DeliveryDouble]]:
    started = [DeliveryDouble(), DeliveryDouble()]
    for double in started:
        await double.start()
    yield started
    for double in started:
        await double.stop()


@pytest_twisted.async_yield_fixture
async def source() -> AsyncIterator[AmpPullSource]:
    from twisted.internet import reactor

    pool = AmpPool(reactor, connect_timeout=2.0, call_timeout=2.0)
    yield AmpPullSource(pool)
    await pool.close()


@pytest_twisted.ensureDeferred
async def test_pull_returns_pending_messages_oldest_first(
    source: AmpPullSource, doubles: list[DeliveryDouble]
) -> None:
    double = doubles[0]
    double.messages.plant(item(3), item(1), item(2), item(4))
    source.nodes_changed({"d1": node("d1", double.address)})

    items, more = await source.pull("alice", 2, ["m001"])

    assert [i.message_id for i in items] == ["m002", "m003"]
    assert items[0] == item(2)
    assert more is True
    [call] = double.messages.calls
    assert (call.client_id, call.limit, call.in_flight) == ("alice", 2, ["m001"])


@pytest_twisted.ensureDeferred
async def test_pulls_go_round_robin(source: AmpPullSource, doubles: list[DeliveryDouble]) -> None:
    source.nodes_changed({f"d{n}": node(f"d{n}", d.address) for n, d in enumerate(doubles)})
    for _ in range(4):
        await source.pull("alice", 5, [])
    assert [len(d.messages.calls) for d in doubles] == [2, 2]


@pytest_twisted.ensureDeferred
async def test_a_pull_fails_over_to_the_next_node(
    source: AmpPullSource, doubles: list[DeliveryDouble]
) -> None:
    down = f"127.0.0.1:{free_port()}"
    doubles[0].messages.plant(item(1))
    source.nodes_changed({"down": node("down", down), "up": node("up", doubles[0].address)})

    for _ in range(2):  # whichever comes first in the rotation
        items, more = await source.pull("alice", 5, [])
        assert (items, more) == ([item(1)], False)


@pytest_twisted.ensureDeferred
async def test_no_node_or_no_answer_is_rpc_unavailable(source: AmpPullSource) -> None:
    with pytest.raises(RpcUnavailable, match="no delivery node is known"):
        await source.pull("alice", 5, [])
    source.nodes_changed({"down": node("down", f"127.0.0.1:{free_port()}")})
    with pytest.raises(RpcUnavailable, match="no delivery node answered"):
        await source.pull("alice", 5, [])


def test_nodes_without_a_usable_address_are_ignored() -> None:
    from twisted.internet.task import Clock

    source = AmpPullSource(AmpPool(Clock()))
    source.nodes_changed(
        {
            "ok": node("ok", "10.0.0.1:7201"),
            "none": node("none", None),
            "number": node("number", 7201),
            "bad": node("bad", "no-port"),
        }
    )
    assert source.addresses == ["10.0.0.1:7201"]


@pytest_twisted.ensureDeferred
async def test_a_node_that_leaves_loses_its_connection(
    source: AmpPullSource, doubles: list[DeliveryDouble]
) -> None:
    double = doubles[0]
    source.nodes_changed({"d1": node("d1", double.address)})
    await source.pull("alice", 5, [])
    assert len(double.connections) == 1

    source.nodes_changed({})

    await wait_for(lambda: not double.connections, timeout=5, what="the connection closes")
    assert source.addresses == []
