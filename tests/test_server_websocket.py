"""The WebSocket transport over real loopback sockets: a hub on a memory
store, its ``WebSocketFactory`` listening, autobahn clients (and raw HTTP for
refused handshakes). The same behaviours as on TCP: AUTH, PUSH/ACK, NACK,
KICK, oversize and text messages, the subprotocol and the Origin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.server.hub import PushHub
from pigeonpush.server.settings import ServerSettings
from pigeonpush.server.websocket import (
    NO_BROWSERS,
    SUBPROTOCOL,
    OriginPolicy,
    WebSocketFactory,
    check_origin,
)
from pigeonpush.store.memory import MemoryStore
from pigeonpush.wire.codec import decode, encode
from pigeonpush.wire.frames import (
    PING,
    PONG,
    Ack,
    Auth,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    Kick,
    KickReason,
    Nack,
    Push,
)
from support.waiting import wait_for

SERVER = "127.0.0.1:7101"


class Device(WebSocketClientProtocol):  # type: ignore[misc]
    """A device over WebSocket: records frames, text messages and the close."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.opened: Deferred[None] = Deferred()
        self.closed = False
        self.close_code: int | None = None
        self.clean = False
        #: what happened, for a failure's message
        self.events: list[str] = []

    def onOpen(self) -> None:
        self.events.append("open")
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.events.append(f"message binary={isBinary} {payload[:40]!r}")
        assert isBinary
        self.frames.append(decode(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.events.append(f"close clean={wasClean} code={code} reason={reason!r}")
        self.closed = True
        self.close_code = code
        self.clean = wasClean
        if not self.opened.called:
            self.opened.errback(Failure(ConnectionError(f"closed: {code} {reason}")))

    def send(self, frame: Frame) -> None:
        self.sendMessage(encode(frame)[4:], isBinary=True)

    async def next_frame(self) -> Frame:
        try:
            await wait_for(lambda: self.frames, timeout=10, what="a frame from the server")
        except TimeoutError as e:
            raise AssertionError(f"{e}; the device saw: {self.events}") from None
        return self.frames.pop(0)

    async def wait_closed(self) -> None:
        await wait_for(lambda: self.closed, timeout=10, what="the server closes")


class RawHttp(Protocol):
    """Reads a refused handshake's answer."""

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


@attrs.define
class Running:
    hub: PushHub
    store: MemoryStore
    port: Any
    devices: list[Device] = attrs.field(factory=list)

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    async def connect(
        self, *, protocols: list[str] | None = None, origin: str | None = None
    ) -> Device:
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint

        factory = WebSocketClientFactory(
            f"ws://127.0.0.1:{self.port_number}/",
            protocols=[SUBPROTOCOL] if protocols is None else protocols,
            origin=origin,
        )
        factory.protocol = Device
        device: Device = await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port_number).connect(
            factory
        )
        self.devices.append(device)
        await device.opened
        return device

    async def login(self, client_id: str) -> Device:
        token = f"token-of-{client_id}"
        await self.store.issue_token(client_id, token, 300)
        device = await self.connect()
        device.send(Auth(client_id, token))
        assert isinstance(await device.next_frame(), AuthOk)
        return device

    async def handshake(self, headers: dict[str, str]) -> bytes:
        """A raw upgrade request; the server's answer (up to the headers' end)."""
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        raw = RawHttp()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port_number), raw)
        lines = [
            "GET / HTTP/1.1",
            f"Host: 127.0.0.1:{self.port_number}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        assert raw.transport is not None
        raw.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await wait_for(lambda: b"\r\n\r\n" in raw.data, timeout=10, what="a handshake answer")
        raw.transport.loseConnection()
        return raw.data


async def start(origins: OriginPolicy = NO_BROWSERS, **settings: Any) -> Running:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    store = MemoryStore(reactor)
    server_settings = ServerSettings(**settings).check()
    hub = PushHub(store, reactor, server_settings, server_address=SERVER)
    factory = WebSocketFactory(hub, server_settings, reactor, origins=origins, reactor=reactor)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return Running(hub, store, port)


@pytest_twisted.async_yield_fixture
async def running() -> AsyncIterator[Running]:
    server = await start(max_frame=2048, ack_window=4, heartbeat=20)
    yield server
    for device in server.devices:
        if not device.closed and device.transport is not None:
            device.transport.abortConnection()
    await wait_for(lambda: not server.hub.all_sessions, timeout=10, what="every session ends")
    await server.port.stopListening()
    server.hub.stop_timers()
    await server.hub.acks.flush()


@pytest_twisted.ensureDeferred
async def test_auth_push_ack_and_ping_go_through_the_hub(running: Running) -> None:
    device = await running.login("alice")
    assert running.hub.sessions["alice"].channel.peer.startswith("127.0.0.1:")

    statuses = await running.hub.push([PushItem("alice", "m1", "Hi", "there", {"k": "v"})])

    assert statuses == [PushStatus.WRITTEN]
    push = await device.next_frame()
    assert push == Push("m1", "Hi", "there", {"k": "v"})
    assert "m1" in (running.hub.sessions["alice"].in_flight or {})
    device.send(Ack("m1"))
    await wait_for(
        lambda: not running.hub.sessions["alice"].in_flight, timeout=10, what="the ACK lands"
    )
    device.send(PING)
    assert await device.next_frame() == PONG


@pytest_twisted.ensureDeferred
async def test_a_nack_leaves_the_window_and_waits(running: Running) -> None:
    device = await running.login("bob")
    await running.hub.push([PushItem("bob", "m1", "t", "x")])
    await device.next_frame()

    device.send(Nack("m1", 30.0))

    session = running.hub.sessions["bob"]
    await wait_for(lambda: session.waiting, timeout=10, what="the NACK lands")
    assert "m1" in (session.waiting or {}) and not session.in_flight


@pytest_twisted.ensureDeferred
async def test_kick_is_the_last_frame_then_a_normal_close(running: Running) -> None:
    device = await running.login("carol")

    assert await running.hub.kick("carol", KickReason.POLICY)

    kick = await device.next_frame()
    assert isinstance(kick, Kick) and kick.reason == KickReason.POLICY
    await device.wait_closed()
    assert device.close_code == 1000
    await wait_for(lambda: "carol" not in running.hub.sessions, timeout=10, what="unbound")


@pytest_twisted.ensureDeferred
async def test_a_client_slow_to_answer_the_close_still_gets_the_kick_and_a_clean_close(
    running: Running,
) -> None:
    """A client that reads the KICK and the close a second and a half late (a
    slow network, a busy browser tab): the server waits for its answer rather
    than resetting the connection under the frames it just wrote."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    device = await running.login("casey")
    assert device.transport is not None
    device.transport.pauseProducing()  # the client reads nothing for a while

    assert await running.hub.kick("casey", KickReason.POLICY)
    await deferLater(reactor, 1.5, lambda: None)
    # The server still waits for the client's answer to its close.
    assert [s.client_id for s in running.hub.all_sessions] == ["casey"]
    device.transport.resumeProducing()

    kick = await device.next_frame()
    assert isinstance(kick, Kick) and kick.reason == KickReason.POLICY
    await device.wait_closed()
    assert device.close_code == 1000
    assert device.clean  # the server waited for the answer: no reset


@pytest_twisted.ensureDeferred
async def test_a_second_login_replaces_the_first(running: Running) -> None:
    first = await running.login("dave")
    await running.login("dave")

    kick = await first.next_frame()
    assert isinstance(kick, Kick) and kick.reason == KickReason.REPLACED
    await first.wait_closed()


@pytest_twisted.ensureDeferred
async def test_a_message_over_the_frame_limit_gets_error_too_large(running: Running) -> None:
    device = await running.login("erin")

    device.sendMessage(b"\x06" + b"x" * 4096, isBinary=True)

    error = await device.next_frame()
    assert isinstance(error, Error) and error.code == ErrorCode.TOO_LARGE
    await device.wait_closed()


@pytest_twisted.ensureDeferred
async def test_a_text_message_gets_error_malformed(running: Running) -> None:
    device = await running.connect()

    device.sendMessage(b'{"auth": true}', isBinary=False)

    error = await device.next_frame()
    assert isinstance(error, Error) and error.code == ErrorCode.MALFORMED
    await device.wait_closed()


@pytest_twisted.ensureDeferred
async def test_a_frame_out_of_turn_gets_error_unexpected(running: Running) -> None:
    device = await running.connect()

    device.send(Ack("m1"))

    error = await device.next_frame()
    assert isinstance(error, Error) and error.code == ErrorCode.UNEXPECTED
    await device.wait_closed()


@pytest_twisted.ensureDeferred
async def test_the_auth_timeout_applies() -> None:
    server = await start(auth_timeout=1.0)
    try:
        device = await server.connect()
        error = await device.next_frame()
        assert isinstance(error, Error) and error.code == ErrorCode.TIMEOUT
        await device.wait_closed()
    finally:
        await server.port.stopListening()
        server.hub.stop_timers()


@pytest_twisted.ensureDeferred
async def test_a_handshake_without_the_subprotocol_is_refused(running: Running) -> None:
    answer = await running.handshake({"Sec-WebSocket-Protocol": "chat"})
    assert answer.startswith(b"HTTP/1.1 400")
    answer = await running.handshake({})
    assert answer.startswith(b"HTTP/1.1 400")
    assert not running.hub.all_sessions


@pytest_twisted.ensureDeferred
async def test_a_browser_origin_is_refused_by_default(running: Running) -> None:
    answer = await running.handshake(
        {"Sec-WebSocket-Protocol": SUBPROTOCOL, "Origin": "https://evil.example"}
    )
    assert answer.startswith(b"HTTP/1.1 403")
    answer = await running.handshake({"Sec-WebSocket-Protocol": SUBPROTOCOL})
    assert answer.startswith(b"HTTP/1.1 101")


@pytest_twisted.ensureDeferred
async def test_an_allowed_origin_connects_and_another_is_refused() -> None:
    server = await start(OriginPolicy.of(["https://app.example"]))
    try:
        device = await server.connect(origin="https://app.example")
        assert not device.closed
        device.transport.abortConnection()
        answer = await server.handshake(
            {"Sec-WebSocket-Protocol": SUBPROTOCOL, "Origin": "https://app.example:8443"}
        )
        assert answer.startswith(b"HTTP/1.1 403")
        await wait_for(lambda: not server.hub.all_sessions, timeout=10, what="sessions end")
    finally:
        await server.port.stopListening()
        server.hub.stop_timers()


def test_origin_policy() -> None:
    assert OriginPolicy().allows(None)
    assert not OriginPolicy().allows("http://127.0.0.1:8200")
    loopback = OriginPolicy(loopback=True)
    for origin in ("http://127.0.0.1:8200", "http://localhost", "http://[::1]:80"):
        assert loopback.allows(origin), origin
    assert not loopback.allows("http://127.0.0.1.evil.example")
    assert OriginPolicy.of(["*"]).allows("https://anything.example")
    assert OriginPolicy.of(["https://App.Example/"]).allows("https://app.example")


@pytest.mark.parametrize("bad", ["app.example", "ftp://app.example", "https://a.example/path", ""])
def test_a_bad_origin_option_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="--websocket-origin"):
        check_origin("--websocket-origin", bad)


@pytest_twisted.ensureDeferred
async def test_a_full_socket_pauses_pushes_until_it_drains(running: Running) -> None:
    device = await running.login("frank")
    session = running.hub.sessions["frank"]
    socket = session.channel.transport._socket()  # type: ignore[attr-defined]
    assert socket.producer is session.channel  # registered with the socket, as on TCP

    socket.producer.pauseProducing()  # what the socket does when its buffer is full

    assert session.write_paused
    assert await running.hub.push([PushItem("frank", "m1", "t", "x")]) == [PushStatus.WINDOW_FULL]
    socket.producer.resumeProducing()
    assert not session.write_paused
    assert await running.hub.push([PushItem("frank", "m1", "t", "x")]) == [PushStatus.WRITTEN]
    assert isinstance(await device.next_frame(), Push)


@pytest_twisted.ensureDeferred
async def test_drain_kicks_websocket_sessions(running: Running) -> None:
    device = await running.login("grace")

    await running.hub.drain(0.1)

    kick = await device.next_frame()
    assert isinstance(kick, Kick) and kick.reason == KickReason.SHUTTING_DOWN
    await device.wait_closed()


@pytest_twisted.ensureDeferred
async def test_a_client_over_the_frame_rate_is_paused_then_rate_limited() -> None:
    server = await start(frame_rate=2, frame_burst=2, frame_abuse_time=0.5)
    try:
        device = await server.login("henry")
        session = server.hub.sessions["henry"]
        for _ in range(20):
            device.send(PING)
        await wait_for(
            lambda: any(isinstance(f, Error) for f in device.frames),
            timeout=10,
            what="ERROR RATE_LIMITED",
        )
        errors = [f for f in device.frames if isinstance(f, Error)]
        assert errors[0].code == ErrorCode.RATE_LIMITED
        # throttled, not answered at once: fewer PONGs than PINGs came back
        assert device.frames.count(PONG) < 20
        await device.wait_closed()
        await wait_for(lambda: session.channel.closing, timeout=10, what="closed")  # type: ignore[attr-defined]
    finally:
        await server.port.stopListening()
        server.hub.stop_timers()


@pytest_twisted.ensureDeferred
async def test_wss_serves_the_same_sessions_over_tls(tmp_path: Any) -> None:
    """An ``ssl:`` endpoint gives ``wss:``: a client verifying the server's
    certificate authenticates and is pushed to."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString, wrapClientTLS

    from pigeonpush.tls import ClientTLS
    from support.certs import CertificateAuthority

    authority = CertificateAuthority.create(tmp_path / "ca")
    certificate = authority.issue(tmp_path / "server")
    store = MemoryStore(reactor)
    settings = ServerSettings().check()
    hub = PushHub(store, reactor, settings, server_address=SERVER)
    factory = WebSocketFactory(hub, settings, reactor, reactor=reactor)
    port = await serverFromString(reactor, certificate.endpoint(0)).listen(factory)
    try:
        number = port.getHost().port
        client_factory = WebSocketClientFactory(
            f"wss://127.0.0.1:{number}/", protocols=[SUBPROTOCOL]
        )
        client_factory.protocol = Device
        tls = ClientTLS.from_options(str(authority.ca_file)).creator("127.0.0.1")
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", number))
        device: Device = await endpoint.connect(client_factory)
        await device.opened
        await store.issue_token("iris", "t", 300)
        device.send(Auth("iris", "t"))
        assert isinstance(await device.next_frame(), AuthOk)
        assert await hub.push([PushItem("iris", "m1", "secure", "x")]) == [PushStatus.WRITTEN]
        assert await device.next_frame() == Push("m1", "secure", "x", {})
        device.transport.abortConnection()
        await wait_for(lambda: not hub.all_sessions, timeout=10, what="the session ends")
    finally:
        await port.stopListening()
        hub.stop_timers()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", ErrorCode.MALFORMED),
        (b"\x7f", ErrorCode.UNKNOWN_TYPE),
        (b"\x01\x00", ErrorCode.MALFORMED),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_binary_messages_get_the_error_tcp_gives(
    running: Running, payload: bytes, code: ErrorCode
) -> None:
    device = await running.connect()

    device.sendMessage(payload, isBinary=True)

    error = await device.next_frame()
    assert isinstance(error, Error) and error.code == code
    await device.wait_closed()


@pytest_twisted.ensureDeferred
async def test_refused_origins_are_logged_within_the_throttle(running: Running) -> None:
    from twisted.logger import capturedLogs

    from pigeonpush.server.settings import LOG_BURST

    with capturedLogs() as events:
        for _ in range(LOG_BURST + 3):
            answer = await running.handshake(
                {"Sec-WebSocket-Protocol": SUBPROTOCOL, "Origin": "https://evil.example"}
            )
            assert answer.startswith(b"HTTP/1.1 403")
    refusals = [e for e in events if "Refusing a WebSocket" in e.get("log_format", "")]
    assert len(refusals) == LOG_BURST
    assert refusals[0]["origin"] == "https://evil.example"
