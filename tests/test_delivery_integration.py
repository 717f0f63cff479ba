"""Delivery against real Redis and real loopback AMP, with push server doubles.

The workers run in this process (``DeliveryWorker`` over a ``RedisStore``, AMP
through ``AmpPool``); notifications go through the notification API's core;
the push servers are ``ServerDouble``s answering ``Push`` over AMP.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import pytest_twisted

from pigeonpush.delivery import metrics
from pigeonpush.delivery.gateway import AmpGateways
from pigeonpush.delivery.rpc_server import PullServerFactory
from pigeonpush.delivery.service import DeliveryWorker
from pigeonpush.notification.core import Notifications, Submission
from pigeonpush.notification.validate import Limits
from pigeonpush.rpc import Pull, PushItem, decode_batch
from pigeonpush.rpcpool import AmpPool
from pigeonpush.store import Store, open_store
from pigeonpush.store.model import Accepted, RecipientState
from support.server_double import ServerDouble
from support.servers import RedisServer
from support.waiting import wait_for


@attrs.define
class Worker:
    service: DeliveryWorker
    pool: AmpPool

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()
        await self.pool.close()


@attrs.define
class World:
    reactor: Any
    store: Store
    notifications: Notifications
    workers: list[Worker] = attrs.Factory(list)
    doubles: list[ServerDouble] = attrs.Factory(list)
    cleanups: list[Any] = attrs.Factory(list)

    def start_worker(self, consumer: str, claim_idle: float = 30.0) -> Worker:
        pool = AmpPool(self.reactor, connect_timeout=2, call_timeout=2)
        service = DeliveryWorker(
            self.store,
            AmpGateways(pool),
            self.reactor,
            consumer=consumer,
            batch=10,
            block=0.2,
            claim_idle=claim_idle,
        )
        service.startService()
        worker = Worker(service, pool)
        self.workers.append(worker)
        return worker

    async def server(self, online: Sequence[str] = ()) -> tuple[ServerDouble, str]:
        double = ServerDouble(online)
        self.doubles.append(double)
        address = await double.listen(self.reactor)
        for client in online:
            await self.bind(client, address)
        return double, address

    async def bind(self, client: str, address: str) -> None:
        """The client's session on the server at ``address``, as a server binds it."""
        await self.store.issue_token(client, "token-" + client, 60)
        assert await self.store.bind_session(client, "token-" + client, address, 60)

    async def send(self, to: Sequence[str], ttl: int = 600, text: str = "x") -> str:
        (accepted,) = await self.notifications.submit(
            [Submission({"to": list(to), "title": "t", "text": text, "ttl": ttl})]
        )
        assert isinstance(accepted, Accepted)
        return accepted.message_id

    async def drained(self) -> bool:
        return await self.store.queue_lag() == 0

    async def pull_server(self, worker: Worker) -> str:
        """Serve ``worker``'s Pull on a loopback port, as tap does."""
        from twisted.internet.endpoints import TCP4ServerEndpoint

        port = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(
            PullServerFactory(worker.service.pull_source)
        )
        self.cleanups.append(port.stopListening)
        return f"127.0.0.1:{port.getHost().port}"


@pytest_twisted.async_yield_fixture
async def world(redis_url: str) -> AsyncIterator[World]:
    from twisted.internet import reactor

    store = open_store(redis_url, reactor)
    built = World(reactor, store, Notifications(store, reactor, Limits()))
    try:
        yield built
    finally:
        for worker in built.workers:
            await worker.stop()
        for double in built.doubles:
            await double.stop()
        for cleanup in built.cleanups:
            await cleanup()
        await store.close()


async def pull(pool: AmpPool, address: str, client: str, in_flight: Sequence[str] = ()) -> Any:
    answer = await pool.call(address, Pull, clientId=client, limit=10, inFlight=list(in_flight))
    return [item.message_id for item in decode_batch(answer["batch"])], answer["more"]


@pytest_twisted.ensureDeferred
async def test_a_notification_reaches_an_online_client_and_the_receipt_shows_the_ack(
    world: World,
) -> None:
    double, _ = await world.server(online=["alice", "bob"])
    world.start_worker("w1")
    message_id = await world.send(["alice", "bob"], text="hello")
    await wait_for(lambda: len(double.written) == 2, timeout=10, what="both pushes")
    assert double.written == [("alice", message_id), ("bob", message_id)]
    assert double.items()[0] == PushItem("alice", message_id, "t", "hello")
    await wait_for(world.drained, timeout=10, what="the queue entry to be acknowledged")
    # The devices ACK (the push server removes the id from WAIT_ACK).
    receipt = await world.notifications.receipt(message_id)
    assert receipt is not None and receipt.pending == ("alice", "bob")
    await world.store.ack([("alice", message_id)])
    receipt = await world.notifications.receipt(message_id)
    assert receipt is not None
    assert (receipt.pending, receipt.acked) == (("bob",), 1)


@pytest_twisted.ensureDeferred
async def test_an_offline_client_gets_its_messages_by_pull_oldest_first(world: World) -> None:
    worker = world.start_worker("w1")
    ids = [await world.send(["carol"], text=f"n{n}") for n in range(3)]
    await wait_for(world.drained, timeout=10, what="the entries to be handled")
    assert await world.store.pending_ids("carol") == ids  # offline: still pending
    address = await world.pull_server(worker)
    pool = AmpPool(world.reactor)
    try:
        assert await pull(pool, address, "carol") == (ids, False)
        assert await pull(pool, address, "carol", in_flight=ids[:2]) == (ids[2:], False)
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_an_expired_message_is_never_delivered(world: World) -> None:
    worker = world.start_worker("w1")
    short = await world.send(["dave"], ttl=1)
    long = await world.send(["dave"], ttl=600)
    await wait_for(world.drained, timeout=10, what="the entries to be handled")

    async def expired() -> bool:
        return await world.store.bodies([short]) == [None]

    await wait_for(expired, timeout=5, interval=0.1, what="the short message to expire")
    # dave connects now: only the live message comes, and the dead id is cleaned.
    address = await world.pull_server(worker)
    pool = AmpPool(world.reactor)
    try:
        assert await pull(pool, address, "dave") == ([long], False)
        assert await world.store.pending_ids("dave") == [long]
        receipt = await world.notifications.receipt(short)
        assert receipt is not None and receipt.states == (RecipientState.EXPIRED,)
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_offline_and_window_full_recipients_stay_pending(world: World) -> None:
    double, address = await world.server(online=["erin", "frank"])
    double.online.discard("erin")  # its ROUTE is stale
    double.window_full.add("frank")
    await world.bind("gina", address)  # online nowhere: the server says offline
    world.start_worker("w1")
    message_id = await world.send(["erin", "frank", "gina", "hank"])
    await wait_for(world.drained, timeout=10, what="the entry to be handled")
    assert len(double.batches) == 1  # one Push for the three routed recipients
    receipt = await world.notifications.receipt(message_id)
    assert receipt is not None
    assert receipt.pending == ("erin", "frank", "gina", "hank")


@pytest_twisted.ensureDeferred
async def test_a_server_that_does_not_answer_leaves_messages_pending(world: World) -> None:
    double, _ = await world.server(online=["ivan"])
    double.hold()
    world.start_worker("w1")
    message_id = await world.send(["ivan"])
    # The call times out (2 s): the batch is done, the message waits for a pull.
    await wait_for(world.drained, timeout=10, what="the entry to be handled")
    assert await world.store.pending_ids("ivan") == [message_id]


@pytest_twisted.ensureDeferred
async def test_two_workers_split_a_queue_without_double_pushes(world: World) -> None:
    clients = [f"c{n}" for n in range(20)]
    double, _ = await world.server(online=clients)
    first = world.start_worker("w1")
    second = world.start_worker("w2")
    expected = set()
    for n in range(10):
        answers = await world.notifications.submit(
            [
                Submission({"to": clients[i : i + 2], "title": "t", "text": f"{n}/{i}"})
                for i in range(0, 20, 2)
            ]
        )
        for i, answer in zip(range(0, 20, 2), answers, strict=True):
            assert isinstance(answer, Accepted)
            expected |= {(clients[i], answer.message_id), (clients[i + 1], answer.message_id)}
    await wait_for(world.drained, timeout=20, what="all entries to be handled")
    pushed = Counter(double.written)
    assert set(pushed) == expected
    assert max(pushed.values()) == 1  # no crash, so no duplicate
    assert first.service.loop.handled > 0 and second.service.loop.handled > 0
    assert first.service.loop.handled + second.service.loop.handled == 100


@pytest_twisted.ensureDeferred
async def test_per_client_order_within_the_live_path(world: World) -> None:
    double, _ = await world.server(online=["kim"])
    world.start_worker("w1")
    ids = []
    for n in range(30):
        ids.append(await world.send(["kim"], text=str(n)))
    await wait_for(lambda: len(double.written) == 30, timeout=10, what="30 pushes")
    assert [message_id for _, message_id in double.written] == ids


@pytest_twisted.ensureDeferred
async def test_a_worker_survives_a_redis_outage(tmp_path: Any) -> None:
    """Redis goes away: every queue step fails and is retried with backoff;
    once Redis is back the worker carries on by itself."""
    from twisted.internet import reactor

    redis = RedisServer(tmp_path / "redis")
    redis.start()
    store = open_store(redis.url, reactor)
    world = World(reactor, store, Notifications(store, reactor, Limits()))
    try:
        double, address = await world.server(online=["lee"])
        world.start_worker("w1")
        first = await world.send(["lee"])
        await wait_for(lambda: double.written, timeout=10, what="the first push")
        errors_before = metrics.BATCH_ERRORS._value.get()
        redis.stop()
        await wait_for(
            lambda: metrics.BATCH_ERRORS._value.get() > errors_before + 1,
            timeout=15,
            what="the worker to see Redis fail and retry",
        )
        redis.start()  # empty: the outage took the data (no persistence in tests)
        await world.bind("lee", address)
        second = await world.send(["lee"])
        await wait_for(lambda: len(double.written) == 2, timeout=20, what="the second push")
        assert double.written == [("lee", first), ("lee", second)]
    finally:
        for worker in world.workers:
            await worker.stop()
        for double in world.doubles:
            await double.stop()
        await store.close()
        redis.stop()
