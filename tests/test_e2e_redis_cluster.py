"""Every daemon on a Redis Cluster, and a master that crashes under load.

``pigeon-server``, ``pigeon-reglog``, ``pigeon-delivery`` and
``pigeon-notification`` run as ``twistd -n`` subprocesses with ``--redis
redis+cluster://...`` (3 masters, 3 replicas; the queue in 8 shards). SDK
clients connect; the application sends notifications one by one, each with
its Idempotency-Key, retrying a refused request (503 while the cluster fails
over) with the same key, as the API tells it to. A master is SIGKILLed in the
middle of the flow; its replica is promoted. Every notification that was
accepted reaches every client's callback exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from test_e2e_cluster import BACKOFF, Device, Fleet
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

from support.cluster import Cluster
from support.openapi import CheckedClient, OpenAPIDocument
from support.servers import RedisCluster
from support.waiting import wait_for

# Starts daemons or many processes: tox runs it in fewer environments.
pytestmark = pytest.mark.slow

DOCUMENT = OpenAPIDocument.load(Path(__file__).parent.parent / "docs/openapi/notification.json")
CLIENTS = 60
MESSAGES = 40
#: The message after which a master is killed.
KILL_AFTER = 10


@pytest_twisted.async_yield_fixture
async def cluster(
    tmp_path: Path, redis_cluster_url: str, zookeeper_hosts: str
) -> AsyncIterator[Cluster]:
    from twisted.internet import reactor

    built = Cluster(reactor, tmp_path, redis_cluster_url, zookeeper_hosts)
    try:
        yield built
    finally:
        await built.close()


@pytest.mark.timeout(240)
@pytest_twisted.ensureDeferred
async def test_a_master_crash_under_load_loses_and_duplicates_nothing(
    cluster: Cluster, redis_cluster: RedisCluster
) -> None:
    from twisted.internet import reactor

    from pigeonpush.sdk import PushClient

    delivery = cluster.delivery()
    notification = cluster.notification()
    reglog = cluster.reglog()
    server = cluster.server("push-a", capacity=CLIENTS + 20)
    http = CheckedClient(reactor, notification.url("http"), DOCUMENT)
    auth = {"Authorization": f"Bearer {cluster.api_key}"}
    devices: list[Device] = []
    killed = None
    refused = 0
    try:
        with cluster.logs_on_failure():
            await cluster.wait_healthy(delivery, "metrics")
            await cluster.wait_healthy(notification)
            await cluster.wait_server_ready(server, delivery)
            await cluster.wait_reglog_servers(reglog, 1)
            for n in range(CLIENTS):
                device = Device()
                device.client = PushClient(
                    reactor, reglog.url("http"), device.on_message,
                    client_id=f"device-{n:03d}", backoff=BACKOFF,
                )  # fmt: skip
                device.client.on_event(device.events.append)
                devices.append(device)
                device.client.start()
            fleet = Fleet(devices)
            online = gatherResults([d.client.when_authenticated() for d in devices])
            online.addTimeout(60, reactor)
            await online
            everyone = fleet.client_ids

            async def send(n: int) -> str:
                """POST one notification, again with its key until accepted."""
                nonlocal refused
                body = {"to": everyone, "title": "failover", "text": f"message {n}"}
                headers = {**auth, "Idempotency-Key": f"failover-{n}"}
                deadline = reactor.seconds() + 60
                while True:
                    try:
                        answer = await http.post("/v1/notifications", body, headers=headers)
                    except Exception:  # the daemon is up; a transport error is retried
                        answer = None
                    if answer is not None and answer.status == 202:
                        return str(answer.json["messageId"])
                    assert answer is None or answer.status == 503, answer.json
                    refused += 1
                    assert reactor.seconds() < deadline, f"message {n} never accepted"
                    await deferLater(reactor, 0.1, lambda: None)

            sent: list[str] = []
            for n in range(MESSAGES):
                sent.append(await send(n))
                if n == KILL_AFTER:
                    killed = redis_cluster.master_nodes()[0]
                    killed.kill()
                await deferLater(reactor, 0.05, lambda: None)
            assert len(set(sent)) == MESSAGES
            await fleet.wait_received(sent, timeout=120, what="every message at every client")
            fleet.check_no_duplicates()
            fleet.check_none_gave_up()
            assert all(sorted(set(d.received)) == sorted(sent) for d in devices)
            # The replica took over: the cluster is whole without the dead node.
            assert killed is not None and not killed.running
            redis_cluster.wait_ok()
            assert len(redis_cluster.master_nodes()) == 3

            async def queue_empty() -> bool:
                answer = await http.get("/health")
                return answer.status == 200 and answer.json["queueLag"] == 0

            # An entry handed to a read on the killed master's connection (its
            # answer lost with the node) stays pending until delivery reclaims
            # it, 30 s after (ConsumeLoop's claim_idle); its clients had it
            # already through their pulls, and the reclaim pushes it to nobody
            # that ACKed it.
            await wait_for(queue_empty, timeout=90, what="the queue to drain")
    finally:
        await Fleet(devices).stop()
        await http.close()
        if killed is not None:
            redis_cluster.restart(killed)
