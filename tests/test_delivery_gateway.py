"""The AMP PushGateway against a server double on a real loopback port."""

from __future__ import annotations

import pytest
import pytest_twisted

from pigeonpush.delivery.gateway import AmpGateways
from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.rpcpool import AmpPool, RpcUnavailable
from support.server_double import ServerDouble


@pytest_twisted.ensureDeferred
async def test_a_large_batch_goes_in_several_push_calls_and_statuses_keep_order() -> None:
    from twisted.internet import reactor

    double = ServerDouble(online=[f"c{n}" for n in range(0, 40, 2)])
    address = await double.listen(reactor)
    pool = AmpPool(reactor, call_timeout=5)
    try:
        items = [PushItem(f"c{n}", f"m{n:03d}", "t", "x" * 5000) for n in range(40)]
        statuses = await AmpGateways(pool)(address).push(items)
        assert statuses == [
            PushStatus.WRITTEN if n % 2 == 0 else PushStatus.OFFLINE for n in range(40)
        ]
        assert len(double.batches) > 1  # 200 kB cannot travel as one AMP value
        assert [i.message_id for i in double.items()] == [i.message_id for i in items]
        assert len(pool.connected_addresses()) == 1  # one reusable connection
    finally:
        await pool.close()
        await double.stop()


@pytest_twisted.ensureDeferred
async def test_an_empty_batch_makes_no_call() -> None:
    from twisted.internet import reactor

    pool = AmpPool(reactor)
    assert await AmpGateways(pool)("127.0.0.1:1").push([]) == []
    assert pool.connected_addresses() == []


@pytest_twisted.ensureDeferred
async def test_a_server_that_does_not_answer_in_time_is_unavailable() -> None:
    from twisted.internet import reactor

    double = ServerDouble(online=["a"])
    double.hold()
    address = await double.listen(reactor)
    pool = AmpPool(reactor, call_timeout=0.3)
    try:
        with pytest.raises(RpcUnavailable, match="in time"):
            await AmpGateways(pool)(address).push([PushItem("a", "m1", "t", "x")])
        assert len(double.batches) == 1
    finally:
        await pool.close()
        await double.stop()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_server_is_unavailable() -> None:
    from twisted.internet import reactor

    from support.servers import free_port

    pool = AmpPool(reactor, connect_timeout=2, call_timeout=2)
    try:
        with pytest.raises(RpcUnavailable):
            await AmpGateways(pool)(f"127.0.0.1:{free_port()}").push([PushItem("a", "m1")])
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_kick() -> None:
    from twisted.internet import reactor

    double = ServerDouble(online=["a"])
    address = await double.listen(reactor)
    pool = AmpPool(reactor)
    try:
        gateway = AmpGateways(pool)(address)
        assert await gateway.kick("a", 3) is True
        assert await gateway.kick("b", 3) is False
        assert double.kicks == [("a", 3), ("b", 3)]
    finally:
        await pool.close()
        await double.stop()


def test_one_gateway_per_address() -> None:
    from twisted.internet.task import Clock

    gateways = AmpGateways(AmpPool(Clock()))
    assert gateways("h:1") is gateways("h:1")
    assert gateways("h:1") is not gateways("h:2")
