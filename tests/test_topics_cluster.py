"""A broadcast over the whole cluster as real processes (two pig-servers,
reglog, delivery, notification, real Redis and ZooKeeper), with one server
SIGKILLed while broadcasts are being sent: every broadcast reaches every
device's callback exactly once, the ones on the killed server included (they
reconnect to the other and catch up from their positions). On one Redis and
on a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from test_e2e_cluster import BACKOFF, DOCUMENT, Api, Device, Fleet
from twisted.internet.defer import gatherResults

from pigeonpush.sdk import PushClient
from support.cluster import Cluster, Daemon
from support.openapi import CheckedClient
from support.waiting import wait_for

# Starts daemons or many processes: tox runs it in fewer environments.
pytestmark = pytest.mark.slow

CLIENTS = 120
HEARTBEAT = 5.0
ROUNDS = 8


@pytest_twisted.async_yield_fixture(params=["redis", "redis-cluster"])
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, zookeeper_hosts: str
) -> AsyncIterator[Cluster]:
    """The processes of test_e2e_cluster on one Redis, then on the session's
    Redis Cluster."""
    from twisted.internet import reactor

    redis_url = str(request.getfixturevalue(request.param.replace("-", "_") + "_url"))
    built = Cluster(reactor, tmp_path, redis_url, zookeeper_hosts)
    try:
        yield built
    finally:
        await built.close()


async def broadcast(api: Api, text: str) -> str:
    body = {"broadcast": True, "title": "all", "text": text}
    answer = await api.http.post("/v1/notifications", body, headers=api.auth)
    assert answer.status == 202, answer.json
    assert answer.json["broadcast"] is True
    return str(answer.json["messageId"])


@pytest.mark.timeout(180)
@pytest_twisted.ensureDeferred
async def test_a_server_killed_during_broadcasts_loses_and_duplicates_nothing(
    cluster: Cluster,
) -> None:
    from twisted.internet import reactor

    delivery = cluster.delivery()
    notification = cluster.notification()
    reglog = cluster.reglog(heartbeat=HEARTBEAT)

    def start_server(name: str) -> Daemon:
        return cluster.server(name, heartbeat=HEARTBEAT, capacity=CLIENTS + 20)

    a, b = start_server("push-a"), start_server("push-b")
    api = Api(CheckedClient(reactor, notification.url("http"), DOCUMENT), cluster.api_key)
    devices = []
    for n in range(CLIENTS):
        device = Device()
        device.client = PushClient(
            reactor,
            reglog.url("http"),
            device.on_message,
            client_id=f"device-{n:03d}",
            backoff=BACKOFF,
        )
        device.client.on_event(device.events.append)
        devices.append(device)
    fleet = Fleet(devices)
    try:
        with cluster.logs_on_failure():
            await cluster.wait_healthy(delivery, "metrics")
            await cluster.wait_healthy(notification)
            for server in (a, b):
                await cluster.wait_server_ready(server, delivery)
            await cluster.wait_reglog_servers(reglog, 2)
            for device in devices:
                device.client.start()
            online = gatherResults([d.client.when_authenticated() for d in devices])
            online.addTimeout(60, reactor)
            await online
            on_a = fleet.on(a)
            stayed = [d for d in devices if d not in on_a]
            assert on_a and stayed

            sent: list[str] = []
            for round_number in range(ROUNDS):
                message_id = await broadcast(api, f"round {round_number}")
                sent.append(message_id)
                if round_number == 2:
                    a.kill()
                    await a.wait_exit(10)
                await wait_for(
                    lambda message_id=message_id: fleet.missing([message_id], stayed) == 0,
                    timeout=30,
                    interval=0.05,
                    what=f"broadcast {round_number} to reach the devices on B",
                )
            await fleet.wait_received(sent, timeout=90, what="every broadcast")
            fleet.check_no_duplicates()
            fleet.check_none_gave_up()
            # The ones that moved got them in order (each topic's log order).
            for device in on_a:
                assert [m for m in device.received if m in sent] == sent
    finally:
        await fleet.stop()
        await api.http.close()
