"""The SDK against the real daemons: ``twistd -n pigeon-server``, ``pigeon-reglog``,
``pigeon-delivery`` and ``pigeon-notification`` as subprocesses on real Redis
and ZooKeeper; the test process is the device (a ``PushClient``) and the
application server (the notification API)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from pigeonpush.sdk import (
    Authenticated,
    ClientEvent,
    ClientState,
    Disconnected,
    Message,
    PushClient,
    full_jitter,
)
from pigeonpush.store import Store, open_store
from support.cluster import CLEAN_EXITS, Cluster, Daemon
from support.openapi import CheckedClient, OpenAPIDocument
from support.waiting import wait_for

# Starts daemons or many processes: tox runs it in fewer environments.
pytestmark = pytest.mark.slow

DOCUMENT = OpenAPIDocument.load(Path(__file__).parent.parent / "docs/openapi/notification.json")
CLIENT_ID = "sdk-device-1"
FAST = full_jitter(initial=0.1, maximum=0.5)


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path, redis_url: str, zookeeper_hosts: str) -> AsyncIterator[Cluster]:
    from twisted.internet import reactor

    built = Cluster(reactor, tmp_path, redis_url, zookeeper_hosts)
    try:
        yield built
    finally:
        await built.close()


class Application:
    """The application server: sends through the notification API."""

    def __init__(self, reactor: Any, notification: Daemon, key: str) -> None:
        self.http = CheckedClient(reactor, notification.url("http"), DOCUMENT)
        self.auth = {"Authorization": f"Bearer {key}"}

    async def send(self, text: str, extras: dict[str, str] | None = None) -> str:
        body: dict[str, Any] = {"to": [CLIENT_ID], "title": "sdk", "text": text}
        if extras is not None:
            body["extras"] = extras
        answer = await self.http.post("/v1/notifications", body, headers=self.auth)
        assert answer.status == 202, answer.json
        return str(answer.json["messageId"])

    async def receipt(self, message_id: str) -> Any:
        answer = await self.http.get(f"/v1/notifications/{message_id}", headers=self.auth)
        assert answer.status == 200, answer.json
        return answer.json


async def acked(store: Store, message_id: str) -> None:
    """Until ``message_id`` has left the device's WAIT_ACK set in Redis."""

    async def gone() -> bool:
        return message_id not in await store.pending_ids(CLIENT_ID)

    await wait_for(gone, timeout=15, interval=0.05, what=f"{message_id} to leave WAIT_ACK")


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_receive_ack_and_reconnect_by_itself_after_a_server_restart(
    cluster: Cluster, redis_url: str
) -> None:
    from twisted.internet import reactor

    delivery = cluster.delivery()
    notification = cluster.notification()
    reglog = cluster.reglog(heartbeat=2)
    server = cluster.server("push-1", heartbeat=2)
    app = Application(reactor, notification, cluster.api_key)
    store = open_store(redis_url, reactor)
    received: list[Message] = []
    events: list[ClientEvent] = []
    client = PushClient(
        reactor, reglog.url("http"), received.append, client_id=CLIENT_ID, backoff=FAST
    )
    client.on_event(events.append)
    try:
        with cluster.logs_on_failure():
            await cluster.wait_healthy(delivery, "metrics")
            await cluster.wait_healthy(notification)
            await cluster.wait_server_ready(server, delivery)
            await cluster.wait_reglog_servers(reglog, 1)

            # Connect through reglog, receive, ACK.
            client.start()
            online = client.when_authenticated()
            online.addTimeout(20, reactor)
            first_session = await online
            assert first_session.server == server.address("client")
            assert first_session.heartbeat == 2  # the server's AUTH_OK value
            first = await app.send("hello", extras={"kind": "greeting"})
            await wait_for(lambda: received, timeout=15, what="the first message")
            message = received[0]
            assert (message.message_id, message.title, message.text) == (first, "sdk", "hello")
            assert dict(message.extras) == {"kind": "greeting"}
            await acked(store, first)
            receipt = await app.receipt(first)
            assert (receipt["acked"], receipt["pending"]) == (1, [])

            # SIGKILL the server: the client notices and keeps trying by itself.
            mark = len(events)
            server.kill()
            assert await server.wait_exit(10) == -9
            await wait_for(
                lambda: any(isinstance(e, Disconnected) for e in events[mark:]),
                timeout=15,
                what="the client to notice the crash",
            )
            assert client.state is not ClientState.STOPPED
            # Sent while no server runs: it waits in WAIT_ACK.
            while_down = await app.send("while you were away")
            assert await store.pending_ids(CLIENT_ID) == [while_down]

            # The same server again, same ports: the client is back without any call.
            restarted = cluster.restart(server, "push-1-restarted")
            back: Deferred[Authenticated] = client.when_authenticated()
            back.addTimeout(30, reactor)
            second_session = await back
            assert second_session.server == server.address("client")
            await cluster.wait_server_ready(restarted, delivery)
            await wait_for(
                lambda: len(received) >= 2, timeout=15, what="the message sent while down"
            )
            after = await app.send("welcome back")
            await wait_for(lambda: len(received) >= 3, timeout=15, what="a new message")
            assert [m.message_id for m in received] == [first, while_down, after]
            assert [m.text for m in received] == ["hello", "while you were away", "welcome back"]
            await acked(store, while_down)
            await acked(store, after)
            assert await store.pending_ids(CLIENT_ID) == []
            assert client.gave_up is None

            await client.stop()
            assert client.state is ClientState.STOPPED
            codes = await cluster.stop()
            assert codes.pop("push-1") == -9, codes
            assert all(code in CLEAN_EXITS for code in codes.values()), codes
            for daemon in cluster.started:
                assert "Traceback" not in daemon.log(), daemon.report()
    finally:
        await client.stop()
        await app.http.close()
        await store.close()
