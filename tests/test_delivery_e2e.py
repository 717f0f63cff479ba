"""End to end with real processes: ``twistd -n pigeon-notification``,
``pigeon-delivery`` and ``pigeon-server`` on real Redis and ZooKeeper; this test
is the application server (HTTP) and the devices (raw wire clients). Every test
runs twice: on one Redis and on a Redis Cluster (3 masters, 3 replicas)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.error import ConnectError
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from pigeonpush.store import Store, open_store
from pigeonpush.wire.frames import Ack, Auth, AuthFail, AuthOk, Frame, Kick, KickReason, Ping, Push
from pigeonpush.wire.protocol import FrameProtocol
from support.openapi import CheckedClient, OpenAPIDocument
from support.servers import free_port
from support.waiting import wait_for

# Starts daemons or many processes: tox runs it in fewer environments.
pytestmark = pytest.mark.slow

DOCUMENT = OpenAPIDocument.load(Path(__file__).parent.parent / "docs/openapi/notification.json")
KEY = "e2e-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Device(FrameProtocol):
    """A raw wire client: AUTH, then every PUSH into a queue; ACK on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.authenticated: Deferred[AuthOk] = Deferred()
        self.pushes: DeferredQueue[Push] = DeferredQueue()
        self.frames: list[Frame] = []
        self.closed: Deferred[None] = Deferred()

    def frameReceived(self, frame: Frame) -> None:
        self.frames.append(frame)
        if isinstance(frame, AuthOk):
            self.authenticated.callback(frame)
        elif isinstance(frame, Push):
            self.pushes.put(frame)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.closed.callback(None)

    async def next_push(self, reactor: Any, timeout: float = 15) -> Push:
        waiting = self.pushes.get()
        waiting.addTimeout(timeout, reactor)
        return await waiting


@attrs.define
class Cluster:
    reactor: Any
    tmp: Path
    redis_url: str
    zookeeper: str
    store: Store
    processes: dict[str, subprocess.Popen[bytes]] = attrs.Factory(dict)
    devices: list[Device] = attrs.Factory(list)
    client_port: int = attrs.field(factory=free_port)
    api_port: int = attrs.field(factory=free_port)
    api: CheckedClient | None = None

    def spawn(self, name: str, *args: str) -> None:
        twistd = str(Path(sys.executable).parent / "twistd")
        self.processes[name] = subprocess.Popen(
            [twistd, "-n", "--pidfile=", f"--logfile={self.tmp / name}.log", *args],
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, f"{name} exited:\n{self.log(name)}"

    async def start(self) -> None:
        server_rpc, delivery_rpc = free_port(), free_port()
        common = ("--redis", self.redis_url, "--zookeeper", self.zookeeper, "--metrics", "none")
        self.spawn(
            "server", "pigeon-server", *common,
            "--listen", f"tcp:{self.client_port}:interface=127.0.0.1",
            "--rpc", f"tcp:{server_rpc}:interface=127.0.0.1", "--node-id", "server-1",
        )  # fmt: skip
        self.spawn(
            "delivery", "pigeon-delivery", *common,
            "--rpc", f"tcp:{delivery_rpc}:interface=127.0.0.1", "--node-id", "delivery-1",
            "--block", "0.2",
        )  # fmt: skip
        self.spawn(
            "notification", "pigeon-notification", "--redis", self.redis_url,
            "--listen", f"tcp:{self.api_port}:interface=127.0.0.1", "--api-key", KEY,
        )  # fmt: skip
        self.api = CheckedClient(self.reactor, f"http://127.0.0.1:{self.api_port}", DOCUMENT)

        async def api_up() -> bool:
            self.check_alive()
            assert self.api is not None
            try:
                return (await self.api.get("/health")).status == 200
            except ConnectError:
                return False

        await wait_for(api_up, timeout=30, interval=0.2, what="the notification API")

        def server_knows_delivery() -> bool:
            # A device's first pull comes right after AUTH_OK: the server must
            # know the delivery node by then (it logs its pull targets).
            self.check_alive()
            return f"Delivery nodes for pulls: 127.0.0.1:{delivery_rpc}" in self.log("server")

        await wait_for(
            server_knows_delivery, timeout=30, interval=0.2, what="the server to find delivery"
        )

    async def connect(self, client_id: str) -> Device:
        """A device that authenticates with a token planted as reglog would."""
        await self.store.issue_token(client_id, "token-" + client_id, 60)
        device = await self.attempt(client_id, "token-" + client_id)
        device.authenticated.addTimeout(10, self.reactor)
        await device.authenticated
        return device

    async def attempt(self, client_id: str, token: str) -> Device:
        """A device that has sent AUTH with ``token`` (whatever the answer)."""
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        device = Device()
        await connectProtocol(
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.client_port), device
        )
        self.devices.append(device)
        device.sendFrame(Auth(client_id, token))
        return device

    async def send(self, to: list[str], text: str, ttl: int | None = None, **more: Any) -> str:
        assert self.api is not None
        body: dict[str, Any] = {"to": to, "title": "e2e", "text": text, **more}
        if ttl is not None:
            body["ttl"] = ttl
        answer = await self.api.post("/v1/notifications", body, headers=AUTH)
        assert answer.status == 202, answer.json
        return str(answer.json["messageId"])

    async def receipt(self, message_id: str) -> Any:
        assert self.api is not None
        return await self.api.get(f"/v1/notifications/{message_id}", headers=AUTH)

    async def stop(self) -> None:
        for device in self.devices:
            if device.transport is not None:
                device.transport.abortConnection()
        if self.api is not None:
            await self.api.close()
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        await self.store.close()


@pytest_twisted.async_yield_fixture(params=["redis", "redis-cluster"])
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, zookeeper_hosts: str
) -> AsyncIterator[Cluster]:
    """The daemons on one Redis, then on the session's Redis Cluster."""
    from twisted.internet import reactor

    redis_url = str(request.getfixturevalue(request.param.replace("-", "_") + "_url"))
    built = Cluster(reactor, tmp_path, redis_url, zookeeper_hosts, open_store(redis_url, reactor))
    try:
        await built.start()
        yield built
    finally:
        await built.stop()


@pytest_twisted.ensureDeferred
async def test_a_notification_reaches_an_online_device_which_acks_it(cluster: Cluster) -> None:
    from twisted.internet import reactor

    device = await cluster.connect("alice")
    message_id = await cluster.send(["alice", "bob"], "live")
    push = await device.next_push(reactor)
    assert (push.message_id, push.title, push.text) == (message_id, "e2e", "live")
    receipt = await cluster.receipt(message_id)
    assert (receipt.json["pending"], receipt.json["acked"]) == (["alice", "bob"], 0)
    device.sendFrame(Ack(message_id))

    async def acked() -> bool:
        answer = await cluster.receipt(message_id)
        return bool(answer.json["pending"] == ["bob"] and answer.json["acked"] == 1)

    await wait_for(acked, timeout=10, interval=0.1, what="the ACK to show in the receipt")
    assert await cluster.store.pending_ids("alice") == []


@pytest_twisted.ensureDeferred
async def test_an_offline_device_gets_its_messages_on_connect_oldest_first_never_expired(
    cluster: Cluster,
) -> None:
    from twisted.internet import reactor

    first = await cluster.send(["carol"], "one")
    doomed = await cluster.send(["carol"], "short-lived", ttl=1)
    second = await cluster.send(["carol"], "two")
    third = await cluster.send(["carol"], "three")

    async def expired() -> bool:
        return bool((await cluster.receipt(doomed)).json["expired"] == ["carol"])

    await wait_for(expired, timeout=10, interval=0.1, what="the short message to expire")
    assert (await cluster.receipt(doomed)).json["pending"] == []
    device = await cluster.connect("carol")
    pushes = [await device.next_push(reactor) for _ in range(3)]
    assert [p.message_id for p in pushes] == [first, second, third]
    assert [p.text for p in pushes] == ["one", "two", "three"]
    for push in pushes:
        device.sendFrame(Ack(push.message_id))
    device.sendFrame(Ping())

    async def all_acked() -> bool:
        return await cluster.store.pending_ids("carol") == []

    await wait_for(all_acked, timeout=10, interval=0.1, what="the ACKs")
    assert not [f for f in device.frames if isinstance(f, Push) and f.message_id == doomed]


@pytest_twisted.ensureDeferred
async def test_a_kick_through_the_api_disconnects_the_device_and_revokes_its_token(
    cluster: Cluster,
) -> None:
    device = await cluster.connect("kim")
    assert cluster.api is not None

    answer = await cluster.api.request("DELETE", "/v1/devices/kim/session", headers=AUTH)

    assert (answer.status, answer.json) == (200, {"clientId": "kim", "disconnected": True})
    await device.closed.addTimeout(10, cluster.reactor)
    kicks = [frame for frame in device.frames if isinstance(frame, Kick)]
    assert [kick.reason for kick in kicks] == [KickReason.POLICY]
    # The old token no longer authenticates.
    again = await cluster.attempt("kim", "token-kim")
    await again.closed.addTimeout(10, cluster.reactor)
    assert [type(frame) for frame in again.frames] == [AuthFail]
    # Nobody is connected as kim now: a second kick closes nothing.
    answer = await cluster.api.request("DELETE", "/v1/devices/kim/session", headers=AUTH)
    assert answer.json == {"clientId": "kim", "disconnected": False}


@pytest_twisted.ensureDeferred
async def test_a_scheduled_notification_arrives_on_time_and_a_cancelled_one_never(
    cluster: Cluster,
) -> None:
    from twisted.internet import reactor

    assert cluster.api is not None
    device = await cluster.connect("sam")
    cancelled = await cluster.send(["sam"], "never", delay=1)
    answer = await cluster.api.request("DELETE", f"/v1/notifications/{cancelled}", headers=AUTH)
    assert answer.status == 200
    before = reactor.seconds()
    scheduled = await cluster.send(["sam"], "later", delay=2)
    after = reactor.seconds()
    assert (await cluster.receipt(scheduled)).json["scheduled"] == ["sam"]
    push = await device.next_push(reactor)
    arrived = reactor.seconds()
    assert (push.message_id, push.text) == (scheduled, "later")
    # Not before its time, and within a second of it.
    assert before + 2 <= arrived <= after + 2 + 1.0
    device.sendFrame(Ack(scheduled))

    async def acked() -> bool:
        return bool((await cluster.receipt(scheduled)).json["ackedBy"] == ["sam"])

    await wait_for(acked, timeout=10, interval=0.1, what="the ACK of the scheduled message")
    receipt = (await cluster.receipt(cancelled)).json
    assert (receipt["cancelled"], receipt["pending"]) == (["sam"], [])
    assert [f.message_id for f in device.frames if isinstance(f, Push)] == [scheduled]
    late = await cluster.api.request("DELETE", f"/v1/notifications/{scheduled}", headers=AUTH)
    assert (late.status, late.json["error"]) == (409, "already_sent")


@pytest_twisted.ensureDeferred
async def test_an_offline_device_gets_only_the_newest_of_a_collapse_key(cluster: Cluster) -> None:
    from twisted.internet import reactor

    stale = await cluster.send(["olive"], "1-0", collapseKey="score")
    newest = await cluster.send(["olive"], "2-0", collapseKey="score")
    other = await cluster.send(["olive"], "news")
    device = await cluster.connect("olive")
    pushes = [await device.next_push(reactor) for _ in range(2)]
    assert [(p.message_id, p.text) for p in pushes] == [(newest, "2-0"), (other, "news")]
    for push in pushes:
        device.sendFrame(Ack(push.message_id))
    device.sendFrame(Ping())

    async def all_acked() -> bool:
        return await cluster.store.pending_ids("olive") == []

    await wait_for(all_acked, timeout=10, interval=0.1, what="the ACKs")
    assert stale not in [f.message_id for f in device.frames if isinstance(f, Push)]
    receipt = (await cluster.receipt(stale)).json
    assert (receipt["replaced"], receipt["pending"]) == (["olive"], [])


async def post(cluster: Cluster, path: str, body: Any) -> Any:
    assert cluster.api is not None
    answer = await cluster.api.post(path, body, headers=AUTH)
    assert answer.status in (200, 202), answer.json
    return answer.json


@pytest_twisted.ensureDeferred
async def test_topic_and_broadcast_reach_online_and_later_devices_once(cluster: Cluster) -> None:
    from twisted.internet import reactor

    subscribed = await post(cluster, "/v1/topics/scores/subscribers", {"add": ["tom", "tia"]})
    assert subscribed["added"] == 2
    tom = await cluster.connect("tom")
    topic = await post(cluster, "/v1/notifications", {"topic": "scores", "title": "t", "text": "1"})
    everyone = await post(
        cluster, "/v1/notifications", {"broadcast": True, "title": "b", "text": "all"}
    )
    assert topic["subscribers"] == 2
    live = [await tom.next_push(reactor) for _ in range(2)]
    assert {(p.message_id, p.topic) for p in live} == {
        (topic["messageId"], "scores"),
        (everyone["messageId"], "*"),
    }
    for push in live:
        tom.sendFrame(Ack(push.message_id))

    # Offline when they were sent: caught up from the logs on connect.
    tia = await cluster.connect("tia")
    caught_up = [await tia.next_push(reactor) for _ in range(2)]
    assert {p.message_id for p in caught_up} == {topic["messageId"], everyone["messageId"]}
    # Not subscribed to the topic: only the broadcast.
    ned = await cluster.connect("ned")
    assert (await ned.next_push(reactor)).message_id == everyone["messageId"]
    for push in caught_up:
        tia.sendFrame(Ack(push.message_id))

    async def counted() -> bool:
        assert cluster.api is not None
        answer = await cluster.api.get(f"/v1/notifications/{topic['messageId']}", headers=AUTH)
        return bool(answer.json["acked"] == 2 and answer.json["pending"] == 0)

    await wait_for(counted, timeout=10, interval=0.1, what="the topic receipt's counts")

    async def positions_moved() -> bool:
        return await cluster.store.catch_up("tom", 10) == []

    await wait_for(positions_moved, timeout=10, interval=0.1, what="tom's positions to move")
    # Reconnecting brings nothing again: the ACKs moved the positions.
    tom.transport.loseConnection()
    await tom.closed.addTimeout(10, reactor)
    # (A fresh token: tokens are single-use.)
    await cluster.store.issue_token("tom", "second-token-tom", 60)
    again = await cluster.attempt("tom", "second-token-tom")
    await again.authenticated.addTimeout(10, reactor)
    again.sendFrame(Ping())
    later = await post(cluster, "/v1/notifications", {"topic": "scores", "title": "t", "text": "2"})
    assert (await again.next_push(reactor)).message_id == later["messageId"]
    assert not [f for f in ned.frames if isinstance(f, Push) and f.topic == "scores"]
