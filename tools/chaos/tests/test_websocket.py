# mypy: disallow-untyped-decorators=False
"""The chaos clients' WebSocket transport: the SDK's PushClient through
``WebSocketEndpoint`` against a real WebSocket listener of the server (a hub
on a memory store, in this process), the route lookup on a Clock, the
framing, and which clients connect over WebSocket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectError
from twisted.internet.task import Clock, deferLater
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent
from zope.interface import implementer

from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.sdk import Authenticated, ClientEvent, Disconnected, Message, PushClient
from pigeonpush.sdk.route import Route
from pigeonpush.server.hub import PushHub
from pigeonpush.server.protocol import ServerProtocolFactory
from pigeonpush.server.settings import ServerSettings
from pigeonpush.server.uplink import UplinkReceiver
from pigeonpush.server.websocket import WebSocketFactory
from pigeonpush.store.memory import MemoryStore
from pigeonpush_chaos.websocket import FrameTransport, WebSocketEndpoint, WebSocketRoutes
from pigeonpush_chaos.websocket import websocket_route as parse_websocket_route
from pigeonpush_chaos.worker import TCP, WEBSOCKET, transport_of

# --- which clients, the route ----------------------------------------------------------


def test_a_share_of_the_clients_spread_over_the_numbers_use_websocket() -> None:
    assert [transport_of(i, 0.2) for i in range(10)] == [TCP] * 4 + [WEBSOCKET] + [TCP] * 4 + [
        WEBSOCKET
    ]
    assert sum(transport_of(i, 0.25) == WEBSOCKET for i in range(300)) == 75
    assert {transport_of(i, 0.0) for i in range(50)} == {TCP}
    assert {transport_of(i, 1.0) for i in range(50)} == {WEBSOCKET}
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="share"):
            transport_of(0, bad)


def test_a_websocket_route_answer_is_a_route_to_the_websocket_address() -> None:
    route = parse_websocket_route(
        {"token": "t", "server": "127.0.0.1:9000", "transport": "ws", "heartbeat": 5}
    )
    assert (route.server, route.address, route.heartbeat) == ("127.0.0.1:9000", "127.0.0.1:9000", 5)
    for body in (
        {"token": "t", "server": "127.0.0.1:9000", "transport": "tcp"},
        {"token": "t", "server": "127.0.0.1:9000", "transport": "wss"},
        {"token": "", "server": "127.0.0.1:9000", "transport": "ws"},
        ["not", "an", "object"],
    ):
        with pytest.raises(ValueError):
            parse_websocket_route(body)


@attrs.define
class Response:
    code: int
    body: bytes
    headers: Headers = attrs.field(factory=Headers)
    length: object = UNKNOWN_LENGTH

    def deliverBody(self, protocol: Any) -> None:
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone

        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


@implementer(IAgent)
@attrs.define
class ScriptedAgent:
    """An IAgent answering each request from a script (an exception or a Response)."""

    script: list[Any]
    bodies: list[Any] = attrs.field(factory=list)

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Any:
        sink: list[bytes] = []

        class Consumer:
            def write(self, data: bytes) -> None:
                sink.append(data)

        if body is not None:
            body.startProducing(Consumer())
        self.bodies.append((method, uri, json.loads(b"".join(sink))))
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return succeed(answer)


def test_the_route_lookup_asks_for_websocket_and_retries_until_answered() -> None:
    clock = Clock()
    answer = {"token": "t", "server": "127.0.0.1:9000", "transport": "ws", "heartbeat": 5}
    agent = ScriptedAgent(
        [
            ConnectError(string="refused"),
            Response(503, b'{"error": "no_server"}'),
            Response(200, b'{"token": "t", "server": "127.0.0.1:1", "transport": "tcp"}'),
            Response(200, json.dumps(answer).encode()),
        ]
    )
    routes = WebSocketRoutes(
        clock, agent, "http://reglog:8100/", "dev-1", lambda n: float(n), lambda: ["10.0.0.1:1"]
    )
    got: list[Route] = []
    routes().addCallback(got.append)
    for _ in range(3):
        assert not got
        clock.advance(5)
    assert [r.server for r in got] == ["127.0.0.1:9000"]
    assert len(agent.bodies) == 4
    method, uri, body = agent.bodies[0]
    assert (method, uri) == (b"POST", b"http://reglog:8100/v1/route")
    assert body == {"clientId": "dev-1", "transport": "websocket", "avoid": ["10.0.0.1:1"]}


def test_a_cancelled_lookup_stops_retrying() -> None:
    clock = Clock()
    agent = ScriptedAgent([Response(503, b"{}")] * 5)
    routes = WebSocketRoutes(clock, agent, "http://reglog:8100", "dev-1", lambda n: 1.0)
    looking = routes()
    looking.addErrback(lambda _: None)
    looking.cancel()
    clock.advance(10)
    assert len(agent.bodies) == 1


# --- the framing -----------------------------------------------------------------------


@attrs.define
class FakeWebSocket:
    state: int = 3  # WebSocketProtocol.STATE_OPEN
    sent: list[bytes] = attrs.field(factory=list)
    closed: list[int] = attrs.field(factory=list)

    def sendMessage(self, payload: bytes, isBinary: bool) -> None:
        assert isBinary
        self.sent.append(payload)

    def sendClose(self, code: int) -> None:
        self.closed.append(code)


def test_each_length_prefixed_frame_becomes_one_binary_message() -> None:
    websocket = FakeWebSocket()
    transport = FrameTransport(websocket)  # type: ignore[arg-type]
    transport.write(b"\x00\x00\x00\x01\x04" + b"\x00\x00\x00\x02\x09x" + b"\x00\x00")
    assert websocket.sent == [b"\x04", b"\x09x"]
    transport.write(b"\x00\x03ab")
    assert websocket.sent[2:] == []
    transport.writeSequence([b"c"])
    assert websocket.sent[2:] == [b"abc"]
    transport.loseConnection()
    assert websocket.closed == [1000] and transport.disconnecting
    websocket.state = 4  # closing: nothing more is sent
    transport.write(b"\x00\x00\x00\x01\x04")
    assert len(websocket.sent) == 3


# --- against the server's WebSocket listener ---------------------------------------------


async def eventually(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    from twisted.internet import reactor

    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


@attrs.define
class Server:
    hub: PushHub
    store: MemoryStore
    websocket: Any
    tcp: Any

    def address(self, port: Any) -> str:
        return f"127.0.0.1:{port.getHost().port}"


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    store = MemoryStore(reactor)
    settings = ServerSettings(heartbeat=20).check()
    hub = PushHub(store, reactor, settings, server_address="127.0.0.1:7101")
    hub.uplinks = UplinkReceiver(store, reactor)
    listen = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    websocket = await listen.listen(WebSocketFactory(hub, settings, reactor, reactor=reactor))
    tcp = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        ServerProtocolFactory(hub, settings, reactor)
    )
    running = Server(hub, store, websocket, tcp)
    yield running
    await websocket.stopListening()
    await tcp.stopListening()
    await eventually(lambda: not hub.all_sessions, "every session ends")
    hub.stop_timers()
    await hub.acks.flush()


def client_over_websocket(
    server: Server, messages: list[Message], events: list[ClientEvent]
) -> PushClient:
    from twisted.internet import reactor

    tokens = iter(f"token-{n}" for n in range(100))

    def route() -> Deferred[Route]:
        token = next(tokens)
        issued = server.store.issue_token("dev-1", token, 300)
        return issued.addCallback(lambda _: Route(token, server.address(server.websocket)))

    def endpoint(address: str) -> WebSocketEndpoint:
        host, _, port = address.rpartition(":")
        return WebSocketEndpoint(reactor, host, int(port), timeout=5)

    client = PushClient(
        reactor,
        "http://unused",
        messages.append,
        client_id="dev-1",
        heartbeat=20,
        backoff=lambda n: 0.05,
        endpoint_factory=endpoint,
        route_source=route,
    )
    client.on_event(events.append)
    return client


@pytest_twisted.ensureDeferred
async def test_the_sdk_over_websocket_authenticates_receives_acks_and_sends_uplinks(
    server: Server,
) -> None:
    messages: list[Message] = []
    events: list[ClientEvent] = []
    client = client_over_websocket(server, messages, events)
    client.start()
    try:
        await client.when_authenticated()
        session = server.hub.sessions["dev-1"]
        assert session.channel.peer.startswith("127.0.0.1:")

        statuses = await server.hub.push([PushItem("dev-1", "m1", "Hi", "there", {})])
        assert statuses == [PushStatus.WRITTEN]
        await eventually(lambda: messages, "the message at the callback")
        assert [m.message_id for m in messages] == ["m1"]
        await eventually(lambda: not session.in_flight, "the ACK at the server")

        stored = await client.send_uplink({"n": "1"}, uplink_id="u1")
        assert stored == "u1"

        # The server goes away under the client (as kill -9 does): it comes back.
        session.channel.abort()
        await eventually(
            lambda: sum(isinstance(e, Authenticated) for e in events) == 2, "a second AUTH_OK"
        )
        assert any(isinstance(e, Disconnected) for e in events)
    finally:
        await client.stop()


@pytest_twisted.ensureDeferred
async def test_a_refused_handshake_is_a_failed_connection_attempt(server: Server) -> None:
    from twisted.internet import reactor

    from pigeonpush.sdk.protocol import SessionFactory

    # The TCP listener speaks frames, not HTTP: the handshake cannot succeed.
    port = server.tcp.getHost().port
    endpoint = WebSocketEndpoint(reactor, "127.0.0.1", port, timeout=5)
    with pytest.raises(ConnectError, match="handshake"):
        await endpoint.connect(SessionFactory(lambda: None))  # type: ignore[arg-type,return-value]


@pytest_twisted.ensureDeferred
async def test_a_connection_attempt_can_be_cancelled(server: Server) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import CancelledError

    from pigeonpush.sdk.protocol import SessionFactory

    endpoint = WebSocketEndpoint(reactor, "127.0.0.1", server.websocket.getHost().port)
    connecting = endpoint.connect(SessionFactory(lambda: None))  # type: ignore[arg-type,return-value]
    connecting.cancel()
    with pytest.raises(CancelledError):
        await connecting
