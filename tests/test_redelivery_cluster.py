"""Stranded and failing messages with the real daemons (``twistd -n``) on real
Redis and ZooKeeper; the test process is the device (a ``PushClient``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted

from pigeonpush.ids import MessageIdGenerator
from pigeonpush.sdk import Message, PushClient, RetryLater, full_jitter
from pigeonpush.store import open_store
from pigeonpush.store.model import Message as StoredMessage
from pigeonpush.store.model import Notification
from support.cluster import Cluster
from support.logcheck import FailureCollector
from support.waiting import wait_for

#: Real daemons or processes: run where slow tests run (docs/development.rst).
pytestmark = pytest.mark.slow

CLIENT_ID = "redelivery-device"
FAST = full_jitter(initial=0.1, maximum=0.5)


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path, redis_url: str, zookeeper_hosts: str) -> AsyncIterator[Cluster]:
    from twisted.internet import reactor

    built = Cluster(reactor, tmp_path, redis_url, zookeeper_hosts)
    try:
        yield built
    finally:
        await built.close()


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_a_message_stranded_by_a_failed_pull_arrives_once_delivery_appears(
    cluster: Cluster, redis_url: str
) -> None:
    """A server that knows no delivery worker yet accepts the device; its
    pull fails. The pending message (no queue entry left: only a pull can
    bring it) arrives as soon as a worker registers, long before the
    device's first PING (heartbeat 30 s)."""
    from twisted.internet import reactor

    store = open_store(redis_url, reactor)
    reglog = cluster.reglog(heartbeat=30)
    server = cluster.server("push-1", heartbeat=30, idle_timeout=90)
    received: list[Message] = []
    client = PushClient(
        reactor, reglog.url("http"), received.append, client_id=CLIENT_ID, backoff=FAST
    )
    try:
        with cluster.logs_on_failure():
            await cluster.wait_server_ready(server)
            await cluster.wait_reglog_servers(reglog, 1)
            now = reactor.seconds()
            message_id = MessageIdGenerator(reactor)()
            stored = StoredMessage(message_id, "stranded", "hello", {}, now, now + 600)
            await store.accept([Notification(stored, (CLIENT_ID,))])
            # As if a delivery worker had taken it and its Push had failed.
            entries = await store.consume("earlier-worker", 10, 0)
            await store.acknowledge([entry.entry_id for entry in entries])

            client.start()
            online = client.when_authenticated()
            online.addTimeout(20, reactor)
            await online
            await wait_for(
                lambda: "Pulling pending messages for" in server.log(),
                timeout=10,
                what="the first pull to fail",
            )
            assert received == []

            cluster.delivery()
            started = time.monotonic()
            await wait_for(lambda: received, timeout=25, what="the stranded message")
            assert received[0].message_id == message_id
            assert time.monotonic() - started < 15  # the PING pull would come at 30 s
    finally:
        await client.stop()
        await store.close()


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_a_failed_callback_is_nacked_retried_and_given_up_after_max_attempts(
    cluster: Cluster, redis_url: str, logged_failures: FailureCollector
) -> None:
    from twisted.internet import reactor

    store = open_store(redis_url, reactor)
    delivery = cluster.delivery()
    reglog = cluster.reglog()
    server = cluster.server("push-1", extra=["--max-attempts", "3"])
    attempts: list[str] = []

    def on_message(message: Message) -> None:
        attempts.append(message.title)
        if message.title == "broken":
            raise RetryLater(1.0, "cannot show it now")
        if attempts.count("flaky") == 1:
            raise RuntimeError("the database is down")  # NACK, the server's backoff

    client = PushClient(reactor, reglog.url("http"), on_message, client_id=CLIENT_ID, backoff=FAST)
    try:
        with cluster.logs_on_failure():
            await cluster.wait_healthy(delivery, "metrics")
            await cluster.wait_server_ready(server, delivery)
            await cluster.wait_reglog_servers(reglog, 1)
            client.start()
            online = client.when_authenticated()
            online.addTimeout(20, reactor)
            await online
            now = reactor.seconds()
            ids = MessageIdGenerator(reactor)
            notes = [
                Notification(StoredMessage(ids(), title, "", {}, now, now + 600), (CLIENT_ID,))
                for title in ("flaky", "broken")
            ]
            await store.accept(notes)

            async def settled() -> bool:
                return await store.pending_ids(CLIENT_ID) == []

            await wait_for(settled, timeout=30, interval=0.1, what="both messages to settle")
            # flaky: NACKed once, then handled; broken: NACKed 3 times, dropped.
            assert attempts.count("flaky") == 2
            assert attempts.count("broken") == 3
            assert "Giving up on 1 messages" in server.log()
            assert len(logged_failures.flush(RuntimeError)) == 1
    finally:
        await client.stop()
        await store.close()
