"""AmpPullSource against delivery doubles and a real delivery responder over
loopback AMP: round robin, failover, PullMany and its fallback to Pull."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted

from pigeonpush.delivery.pull import PendingMessages
from pigeonpush.delivery.rpc_server import PullServerFactory
from pigeonpush.discovery.interface import Node
from pigeonpush.ids import MessageIdGenerator
from pigeonpush.rpc import PullRequest, PushItem
from pigeonpush.rpcpool import AmpPool, RpcUnavailable
from pigeonpush.server.pull import AmpPullSource
from pigeonpush.store.memory import MemoryStore
from pigeonpush.store.model import Message, Notification
from support.delivery_double import DeliveryDouble
from support.servers import free_port
from support.waiting import wait_for

_ids: list[MessageIdGenerator] = []


def new_id() -> str:
    """Ids that sort in the order they were made (one generator for the module)."""
    if not _ids:
        from twisted.internet import reactor

        _ids.append(MessageIdGenerator(reactor))
    return _ids[0]()


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


# -- PullMany ------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def delivery() -> AsyncIterator[tuple[str, MemoryStore]]:
    """A real delivery responder (PullMany and Pull) over the memory store."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    store = MemoryStore(reactor)
    factory = PullServerFactory(PendingMessages(store, reactor))
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    yield f"127.0.0.1:{port.getHost().port}", store
    await port.stopListening()


def accept(store: MemoryStore, *recipients: str, text: str = "x") -> str:
    from twisted.internet import reactor

    now = reactor.seconds()
    message = Message(new_id(), "t", text, {}, now, now + 600)
    store.accept([Notification(message, recipients)])
    return message.message_id


@pytest_twisted.ensureDeferred
async def test_pull_many_answers_every_client_in_one_call(
    source: AmpPullSource, delivery: tuple[str, MemoryStore]
) -> None:
    address, store = delivery
    first = accept(store, "alice", "bob")
    second = accept(store, "bob")
    source.nodes_changed({"d1": node("d1", address)})

    answers = await source.pull_many(
        [PullRequest("alice", 5), PullRequest("bob", 1), PullRequest("carol", 5)]
    )

    assert [[i.message_id for i in items] for items, _ in answers] == [[first], [first], []]
    assert [more for _, more in answers] == [False, True, False]
    answers = await source.pull_many([PullRequest("bob", 5, (first,))])
    assert [[i.message_id for i in items] for items, _ in answers] == [[second]]


@pytest_twisted.ensureDeferred
async def test_pull_many_splits_requests_over_the_amp_value_limit(
    source: AmpPullSource, delivery: tuple[str, MemoryStore]
) -> None:
    address, store = delivery
    wanted = accept(store, "client-0399")
    source.nodes_changed({"d1": node("d1", address)})
    # 400 requests of ~2.2 kB each: several PullMany calls.
    requests = [
        PullRequest(f"client-{n:04d}", 100, tuple(f"{n:04d}-{k:026d}" for k in range(70)))
        for n in range(400)
    ]

    answers = await source.pull_many(requests)

    assert len(answers) == 400
    assert [i.message_id for i in answers[399][0]] == [wanted]
    assert all(items == [] for items, _ in answers[:399])


@pytest_twisted.ensureDeferred
async def test_pull_many_uses_pull_on_a_node_without_pull_many(
    source: AmpPullSource, doubles: list[DeliveryDouble]
) -> None:
    double = doubles[0]
    double.messages.plant(item(1), item(2))
    source.nodes_changed({"d1": node("d1", double.address)})

    for _ in range(2):
        answers = await source.pull_many([PullRequest("alice", 1), PullRequest("bob", 5)])
        assert answers == [([item(1)], True), ([], False)]

    assert [call.client_id for call in double.messages.calls] == ["alice", "bob"] * 2


@pytest_twisted.ensureDeferred
async def test_pull_many_fails_over_and_is_rpc_unavailable_when_nobody_answers(
    source: AmpPullSource, delivery: tuple[str, MemoryStore]
) -> None:
    address, store = delivery
    wanted = accept(store, "alice")
    down = f"127.0.0.1:{free_port()}"
    with pytest.raises(RpcUnavailable, match="no delivery node is known"):
        await source.pull_many([PullRequest("alice", 5)])
    source.nodes_changed({"down": node("down", down), "up": node("up", address)})
    for _ in range(2):
        [(items, _)] = await source.pull_many([PullRequest("alice", 5)])
        assert [i.message_id for i in items] == [wanted]
    source.nodes_changed({"down": node("down", down)})
    with pytest.raises(RpcUnavailable, match="no delivery node answered"):
        await source.pull_many([PullRequest("alice", 5)])
