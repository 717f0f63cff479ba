"""The push server against real Redis and ZooKeeper, over real sockets.

The server runs in this process, built by the plugin's own ``makeService``;
devices are raw clients speaking the wire protocol; delivery is a double that
registers in ZooKeeper and answers ``Pull`` over AMP, while the test calls the
server's ``Push`` through an ``AmpPool`` as delivery does.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from pigeonpush.discovery.interface import SERVERS, Node
from pigeonpush.discovery.zookeeper import ZooKeeperDiscovery
from pigeonpush.rpc import Kick, Push, PushItem, PushStatus, encode_batches
from pigeonpush.rpcpool import AmpPool
from pigeonpush.server.protocol import ServerProtocol
from pigeonpush.server.service import PushServerService
from pigeonpush.server.tap import Options, makeService
from pigeonpush.store import Store, open_store
from pigeonpush.store.model import Message, Notification
from pigeonpush.wire.codec import decode, encode
from pigeonpush.wire.frames import (
    PING,
    PONG,
    Ack,
    Auth,
    AuthFail,
    AuthFailCode,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    KickReason,
)
from pigeonpush.wire.frames import Kick as KickFrame
from pigeonpush.wire.frames import Push as PushFrame
from support.delivery_double import DeliveryDouble
from support.waiting import wait_for


class RawClient(Protocol):
    """A device at the byte level: sends what it is told, records the frames."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.buffer = b""
        self.closed: Deferred[None] = Deferred()
        self.is_closed = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 4:
            (length,) = struct.unpack_from("!I", self.buffer)
            if len(self.buffer) < 4 + length:
                return
            self.frames.append(decode(self.buffer[4 : 4 + length]))
            self.buffer = self.buffer[4 + length :]

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.is_closed = True
        self.closed.callback(None)

    def send(self, frame: Frame) -> None:
        assert self.transport is not None
        self.transport.write(encode(frame))

    def send_bytes(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def next_frame(self, timeout: float = 10.0) -> Frame:
        await wait_for(lambda: self.frames, timeout=timeout, what="a frame from the server")
        return self.frames.pop(0)

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await wait_for(lambda: self.is_closed, timeout=timeout, what="the server closes")

    def close(self) -> None:
        if not self.is_closed and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


@attrs.define
class Running:
    server: PushServerService
    top: Any
    store: Store
    pool: AmpPool
    clients: list[RawClient] = attrs.field(factory=list)
    stopped: bool = False

    @property
    def client_port(self) -> int:
        assert self.server.client_port is not None
        return int(self.server.client_port.getHost().port)  # type: ignore[attr-defined]

    @property
    def rpc_address(self) -> str:
        assert self.server.rpc_advertise is not None
        return self.server.rpc_advertise

    async def connect(self) -> RawClient:
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        client = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.client_port), client)
        self.clients.append(client)
        return client

    async def login(self, client_id: str) -> RawClient:
        token = f"token-of-{client_id}"
        await self.store.issue_token(client_id, token, 600)
        client = await self.connect()
        client.send(Auth(client_id, token))
        assert isinstance(await client.next_frame(), AuthOk)
        return client

    async def push(self, *items: PushItem) -> list[PushStatus]:
        [(_, batch)] = list(encode_batches(items))
        answer = await self.pool.call(self.rpc_address, Push, batch=batch)
        return [PushStatus(b) for b in answer["results"]]

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.top.stopService()


@pytest_twisted.async_yield_fixture
async def running(redis_url: str, zookeeper_hosts: str) -> AsyncIterator[Running]:
    from twisted.internet import reactor

    options = Options()
    options.parseOptions(
        [
            "--listen=tcp:0:interface=127.0.0.1",
            "--rpc=tcp:0:interface=127.0.0.1",
            "--metrics=tcp:0:interface=127.0.0.1",
            f"--redis={redis_url}",
            f"--zookeeper={zookeeper_hosts}",
            "--drain-period=1",
            "--heartbeat=5",
            "--idle-timeout=20",
        ]
    )
    top = makeService(options, reactor)
    [server, _metrics, _freeze] = list(top)
    assert isinstance(server, PushServerService)
    store = open_store(redis_url, reactor)
    pool = AmpPool(reactor, call_timeout=5.0)
    top.startService()
    await server.when_ready()
    state = Running(server, top, store, pool)
    try:
        yield state
    finally:
        for client in state.clients:
            client.close()
        await state.stop()
        await pool.close()
        await store.close()


@pytest_twisted.async_yield_fixture
async def observer(zookeeper_hosts: str) -> AsyncIterator[ZooKeeperDiscovery]:
    """A second ZooKeeper session, as reglog or delivery would have."""
    from twisted.internet import reactor

    discovery = ZooKeeperDiscovery(zookeeper_hosts, reactor, session_timeout=4.0)
    yield discovery
    await discovery.close()


async def accept(store: Store, message_id: str, *recipients: str) -> None:
    from twisted.internet import reactor

    now = reactor.seconds()
    message = Message(message_id, f"title of {message_id}", "text", {"k": "v"}, now, now + 600)
    await store.accept([Notification(message, recipients)])


# --- the main path ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_auth_push_over_amp_and_ack_empties_wait_ack(running: Running) -> None:
    client = await running.login("alice")
    assert await running.store.route("alice") == running.rpc_address
    proto = running.server.hub.sessions["alice"].channel
    assert isinstance(proto, ServerProtocol)
    assert proto.transport.getTcpNoDelay()  # type: ignore[attr-defined]

    await accept(running.store, "01HZZZZZZZZZZZZZZZZZZZZZZ1", "alice")
    statuses = await running.push(PushItem("alice", "01HZZZZZZZZZZZZZZZZZZZZZZ1", has_body=False))

    assert statuses == [PushStatus.WRITTEN]
    push = await client.next_frame()
    assert push == PushFrame(
        "01HZZZZZZZZZZZZZZZZZZZZZZ1", "title of 01HZZZZZZZZZZZZZZZZZZZZZZ1", "text", {"k": "v"}
    )
    assert await running.store.pending_ids("alice") == ["01HZZZZZZZZZZZZZZZZZZZZZZ1"]

    client.send(Ack("01HZZZZZZZZZZZZZZZZZZZZZZ1"))

    async def acked() -> bool:
        return await running.store.pending_ids("alice") == []

    await wait_for(acked, timeout=10, what="the id leaves WAIT_ACK")
    client.send(PING)
    assert await client.next_frame() == PONG


@pytest_twisted.ensureDeferred
async def test_wrong_token_gets_auth_fail_and_a_close(running: Running) -> None:
    await running.store.issue_token("alice", "the-right-one", 600)
    client = await running.connect()

    client.send(Auth("alice", "a-wrong-one"))

    frame = await client.next_frame()
    assert isinstance(frame, AuthFail) and frame.code is AuthFailCode.BAD_TOKEN
    await client.wait_closed()
    assert await running.store.route("alice") is None
    assert await running.store.token("alice") == "the-right-one"


@pytest_twisted.ensureDeferred
async def test_garbage_and_an_oversize_prefix_close_only_that_connection(
    running: Running,
) -> None:
    good = await running.login("good")
    garbage = await running.connect()
    oversize = await running.connect()

    garbage.send_bytes(b"\x00\x00\x00\x05\xee\xff\x00\x01\x02")
    oversize.send_bytes(struct.pack("!I", 0x7FFFFFFF) + b"\x06")

    error = await garbage.next_frame()
    assert isinstance(error, Error) and error.code is ErrorCode.UNKNOWN_TYPE
    error = await oversize.next_frame()
    assert isinstance(error, Error) and error.code is ErrorCode.TOO_LARGE
    await garbage.wait_closed()
    await oversize.wait_closed()
    good.send(PING)
    assert await good.next_frame() == PONG
    assert not good.is_closed


@pytest_twisted.ensureDeferred
async def test_offline_and_kick_over_amp(running: Running) -> None:
    await running.store.issue_token("gone", "t", 600)
    await running.store.bind_session("gone", "t", running.rpc_address, 600)

    assert await running.push(PushItem("gone", "m1", "t", "x")) == [PushStatus.OFFLINE]
    assert await running.store.route("gone") is None  # the stale route was dropped

    client = await running.login("alice")
    answer = await running.pool.call(
        running.rpc_address, Kick, clientId="alice", reason=int(KickReason.POLICY)
    )
    assert answer == {"kicked": True}
    frame = await client.next_frame()
    assert isinstance(frame, KickFrame) and frame.reason is KickReason.POLICY
    await client.wait_closed()

    async def cleaned() -> bool:
        return await running.store.route("alice") is None

    await wait_for(cleaned, timeout=10, what="the session's cleanup")


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_is_cleaned_up(running: Running) -> None:
    client = await running.login("alice")
    client.close()

    async def cleaned() -> bool:
        return (
            await running.store.route("alice") is None
            and await running.store.token("alice") is None
        )

    await wait_for(cleaned, timeout=10, what="AUTH and ROUTE deleted")
    assert running.server.hub.sessions == {}


@pytest_twisted.ensureDeferred
async def test_a_second_login_replaces_the_first_over_sockets(running: Running) -> None:
    first = await running.login("alice")
    second = await running.login("alice")
    frame = await first.next_frame()
    assert isinstance(frame, KickFrame) and frame.reason is KickReason.REPLACED
    await first.wait_closed()
    second.send(PING)
    assert await second.next_frame() == PONG
    assert await running.store.route("alice") == running.rpc_address


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_is_bounded_by_the_transport(running: Running) -> None:
    """A client that does not read: once its socket is full, pushes are refused."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", running.client_port))
    try:
        await running.store.issue_token("slow", "t", 600)
        raw.sendall(encode(Auth("slow", "t")))
        await wait_for(lambda: "slow" in running.server.hub.sessions, timeout=10, what="auth")
        session = running.server.hub.sessions["slow"]
        proto = session.channel
        assert isinstance(proto, ServerProtocol)
        hub = running.server.hub
        big = "x" * 7000
        statuses: list[PushStatus] = []
        for n in range(2000):
            # ack_window is 32: free the window as if ACKs came, to reach the socket limit.
            assert session.in_flight is not None
            session.in_flight.clear()
            [status] = await hub.push([PushItem("slow", f"m{n:05d}", "t", big)])
            statuses.append(status)
            if status is PushStatus.WINDOW_FULL:
                break
            await deferLater(reactor, 0, lambda: None)  # let the reactor write
        assert statuses[-1] is PushStatus.WINDOW_FULL
        assert session.write_paused
        assert proto.transport not in reactor.getReaders()  # nor is it read any more
        assert len(statuses) < 2000
    finally:
        raw.close()


# --- pulls from a delivery registered in ZooKeeper ---------------------------------


@pytest_twisted.ensureDeferred
async def test_pending_messages_are_pulled_after_auth(
    running: Running, zookeeper_hosts: str
) -> None:
    from twisted.internet import reactor

    discovery = ZooKeeperDiscovery(zookeeper_hosts, reactor, session_timeout=4.0)
    double = DeliveryDouble()
    try:
        double.messages.plant(
            PushItem("alice", "m2", "second", "x"), PushItem("alice", "m1", "first", "x")
        )
        await double.start(discovery)
        source = running.server.pull_source
        assert source is not None
        await wait_for(lambda: source.addresses, timeout=10, what="the delivery node is seen")

        client = await running.login("alice")

        assert await client.next_frame() == PushFrame("m1", "first", "x")
        assert await client.next_frame() == PushFrame("m2", "second", "x")
        [call] = double.messages.calls
        assert (call.client_id, call.limit, call.in_flight) == ("alice", 32, [])
    finally:
        await double.stop()
        await discovery.close()


# --- registration and the drained stop ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_registers_and_publishes_its_load(
    running: Running, observer: ZooKeeperDiscovery
) -> None:
    seen: list[dict[str, Node]] = []
    await observer.watch(SERVERS, lambda nodes: seen.append(dict(nodes)))
    node_id = f"127.0.0.1:{running.client_port}"

    def data() -> Any:
        node = seen[-1].get(node_id) if seen else None
        return None if node is None else dict(node.data)

    await wait_for(lambda: data() is not None, timeout=10, what="the server's node")
    assert data() == {
        "client": node_id,
        "rpc": running.rpc_address,
        "connections": 0,
        "capacity": 19000,
    }
    await running.login("alice")
    await wait_for(
        lambda: (data() or {}).get("connections") == 1, timeout=10, what="the load update"
    )


@pytest_twisted.ensureDeferred
async def test_a_drained_stop_moves_clients_off(
    running: Running, observer: ZooKeeperDiscovery
) -> None:
    seen: list[dict[str, Node]] = []
    await observer.watch(SERVERS, lambda nodes: seen.append(dict(nodes)))
    client_port = running.client_port
    node_id = f"127.0.0.1:{client_port}"
    await wait_for(lambda: seen and node_id in seen[-1], timeout=10, what="registered")
    clients = [await running.login(f"c{n}") for n in range(6)]

    # The period reaches the hub, which spreads the kicks over it (measured on
    # a Clock: test_server_hub's test_drain_kicks_clients_spread_over_the_period).
    assert running.server.hub.settings.drain_period == 1.0
    stopping = ensureDeferred(running.stop())
    kicks = [await client.next_frame() for client in clients]
    for client in clients:
        await client.wait_closed()
    await stopping

    assert all(
        isinstance(kick, KickFrame) and kick.reason is KickReason.SHUTTING_DOWN for kick in kicks
    )
    await wait_for(lambda: node_id not in seen[-1], timeout=10, what="left ZooKeeper")
    for n in range(6):
        assert await running.store.route(f"c{n}") is None
    assert running.server.phase == "stopped"
    # Nothing listens any more.
    late = socket.socket()
    try:
        assert late.connect_ex(("127.0.0.1", client_port)) != 0
    finally:
        late.close()


@pytest_twisted.ensureDeferred
async def test_health_and_metrics_are_served(running: Running) -> None:
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    await running.login("alice")
    [_server, metrics_service, _freeze] = list(running.top)
    assert metrics_service.port is not None
    port = metrics_service.port.getHost().port
    pool = HTTPConnectionPool(reactor, persistent=False)
    http = HTTPClient(Agent(reactor, pool=pool))
    base = f"http://127.0.0.1:{port}"
    try:
        response = await http.get(f"{base}/health")
        assert response.code == 200
        health = await response.json()
        assert health["status"] == "serving"
        assert health["connections"] == 1
        response = await http.get(f"{base}/metrics")
        text = await response.text()
        assert "pigeonpush_server_connections 1.0" in text
        assert 'pigeonpush_server_auth_total{result="ok"}' in text
        response = await http.get(f"{base}/nope")
        assert response.code == 404
        assert (await response.json())["error"] == "not_found"
    finally:
        await pool.closeCachedConnections()
