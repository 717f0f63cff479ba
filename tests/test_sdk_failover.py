"""SDK clients after a SIGKILLed push server, against the real daemons.

Two ``pigeon-server``s, ``pigeon-reglog``, ``pigeon-delivery`` and
``pigeon-notification`` run as ``twistd -n`` subprocesses on a 3 s ZooKeeper
session timeout; 80 ``PushClient``s with the SDK's default settings run in the
test's reactor. Server A is SIGKILLed: its clients must all be authenticated
again (on B) within 10 s, reglog must drop A once its ZooKeeper node expires,
and a notification sent afterwards must reach every client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from pigeonpush.sdk import Authenticated, ClientEvent, ClientState, GaveUp, Message, PushClient
from support.cluster import Cluster, Daemon
from support.openapi import CheckedClient, OpenAPIDocument
from support.waiting import wait_for

#: Real daemons or processes: run where slow tests run (docs/development.rst).
pytestmark = pytest.mark.slow

DOCS = Path(__file__).parent.parent / "docs" / "openapi"
DOCUMENT = OpenAPIDocument.load(DOCS / "notification.json")
REGLOG_DOCUMENT = OpenAPIDocument.load(DOCS / "reglog.json")
CLIENTS = 80
#: The daemons' ZooKeeper session timeout: a killed server's node lasts about this long.
ZOOKEEPER_TIMEOUT = ["--zookeeper-timeout", "3"]
#: The target: every client of a killed server back within this many seconds.
BACK_WITHIN = 10.0


@attrs.define(eq=False)
class Device:
    """One SDK client with the default reconnect policy, and what it saw, timed."""

    client: PushClient = attrs.field(init=False)
    received: list[str] = attrs.Factory(list)
    events: list[tuple[float, ClientEvent]] = attrs.Factory(list)

    def on_message(self, message: Message) -> None:
        self.received.append(message.message_id)

    def authenticated_after(self, moment: float) -> float | None:
        """When the first session after ``moment`` was authenticated, if one was."""
        for when, event in self.events:
            if when > moment and isinstance(event, Authenticated):
                return when
        return None


def new_devices(reactor: Any, reglog: Daemon) -> list[Device]:
    devices = []
    for n in range(CLIENTS):
        device = Device()
        device.client = PushClient(
            reactor, reglog.url("http"), device.on_message, client_id=f"failover-{n:03d}"
        )
        device.client.on_event(
            lambda event, device=device: device.events.append((reactor.seconds(), event))
        )
        devices.append(device)
    return devices


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path, redis_url: str, zookeeper_hosts: str) -> AsyncIterator[Cluster]:
    from twisted.internet import reactor

    built = Cluster(reactor, tmp_path, redis_url, zookeeper_hosts)
    try:
        yield built
    finally:
        await built.close()


@pytest.mark.timeout(180)
@pytest_twisted.ensureDeferred
async def test_every_client_of_a_killed_server_is_back_within_ten_seconds(
    cluster: Cluster,
) -> None:
    from twisted.internet import reactor

    delivery = cluster.delivery(extra=ZOOKEEPER_TIMEOUT)
    notification = cluster.notification()
    reglog = cluster.reglog(extra=ZOOKEEPER_TIMEOUT)
    a = cluster.server("push-a", extra=ZOOKEEPER_TIMEOUT)
    b = cluster.server("push-b", extra=ZOOKEEPER_TIMEOUT)
    api = CheckedClient(reactor, notification.url("http"), DOCUMENT)
    routes = CheckedClient(reactor, reglog.url("http"), REGLOG_DOCUMENT)
    devices: list[Device] = []
    try:
        with cluster.logs_on_failure():
            await cluster.wait_healthy(notification)
            for server in (a, b):
                await cluster.wait_server_ready(server, delivery)
            await cluster.wait_reglog_servers(reglog, 2)

            devices = new_devices(reactor, reglog)
            for device in devices:
                device.client.start()
            online = gatherResults([d.client.when_authenticated() for d in devices])
            online.addTimeout(30, reactor)
            await online
            on_a = [d for d in devices if d.client.server == a.address("client")]
            # reglog spreads clients in proportion to free room: about half each
            assert CLIENTS // 4 <= len(on_a) <= CLIENTS * 3 // 4, len(on_a)

            killed_at = reactor.seconds()
            a.kill()

            def all_back() -> bool:
                return all(d.authenticated_after(killed_at) is not None for d in on_a)

            await wait_for(all_back, timeout=BACK_WITHIN + 20, interval=0.05, what="A's clients")
            times = [d.authenticated_after(killed_at) for d in on_a]
            back = sorted(when - killed_at for when in times if when is not None)
            assert back[-1] <= BACK_WITHIN, (
                f"clients of the killed server back after {back[len(back) // 2]:.2f} s "
                f"(median), {back[-1]:.2f} s (last)"
            )
            assert all(d.client.server == b.address("client") for d in on_a)

            # reglog forgets A once its ZooKeeper session expires (3 s)
            await cluster.wait_reglog_servers(reglog, 1, timeout=10)
            for n in range(20):
                answer = await routes.post("/v1/route", {"clientId": f"probe-{n}"})
                assert answer.json["server"] == b.address("client"), answer.json
            await wait_for(
                lambda: all(d.client.state is ClientState.ONLINE for d in devices),
                timeout=10,
                what="every client online",
            )

            everyone = [d.client.client_id for d in devices]
            answer = await api.post(
                "/v1/notifications",
                {"to": everyone, "title": "after", "text": "the crash"},
                headers={"Authorization": f"Bearer {cluster.api_key}"},
            )
            assert answer.status == 202, answer.json
            message_id = answer.json["messageId"]
            await wait_for(
                lambda: all(message_id in d.received for d in devices),
                timeout=30,
                what="the notification to reach every client",
            )
            gave_up = [e for d in devices for _, e in d.events if isinstance(e, GaveUp)]
            assert gave_up == []
    finally:
        stopping = gatherResults([d.client.stop() for d in devices])
        stopping.addTimeout(20, reactor)
        await stopping
        await api.close()
        await routes.close()
