"""The load generator's WebSocket client: the RFC 6455 pieces on a
StringTransport, then a bench ``PigeonClient`` over it against the push
server's real WebSocket listener (autobahn, a hub on a memory store)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.server.hub import PushHub
from pigeonpush.server.settings import ServerSettings
from pigeonpush.server.websocket import WebSocketFactory
from pigeonpush.store.memory import MemoryStore
from pigeonpush_bench.clients import PigeonClient
from pigeonpush_bench.wsclient import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    WebSocketClient,
    accept_key,
    client_frame,
    mask,
)
from support.waiting import wait_for


def test_the_accept_key_of_rfc_6455s_example() -> None:
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_masking_is_its_own_inverse() -> None:
    key = b"\x01\x02\x03\x04"
    assert mask(b"", key) == b""
    assert mask(b"\x00\x00\x00\x00\x00", key) == b"\x01\x02\x03\x04\x01"
    assert mask(mask(b"hello world", key), key) == b"hello world"


@pytest.mark.parametrize(("size", "head"), [(5, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)])
def test_client_frames_are_final_masked_and_sized(size: int, head: int) -> None:
    key = b"abcd"
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = client_frame(BINARY, payload, key)
    assert frame[0] == 0x80 | BINARY
    assert frame[1] & 0x80
    assert frame[head : head + 4] == key
    assert mask(frame[head + 4 :], key) == payload
    assert len(frame) == head + 4 + size


def server_frame(opcode: int, payload: bytes, final: bool = True) -> bytes:
    assert len(payload) < 126
    return bytes((0x80 * final | opcode, len(payload))) + payload


def read_client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, unmasked payload) of each (short) frame the client wrote."""
    frames = []
    while data:
        length = data[1] & 0x7F
        assert length < 126 and data[1] & 0x80
        key, payload = data[2:6], data[6 : 6 + length]
        frames.append((data[0] & 0x0F, mask(payload, key)))
        data = data[6 + length :]
    return frames


class Inner(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost = False
        self.reason = "closed"

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class Socket(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def opened() -> tuple[WebSocketClient, Inner, Socket]:
    inner = Inner()
    client = WebSocketClient(inner, "127.0.0.1", 9000)
    socket = Socket()
    client.makeConnection(socket)
    request = socket.value()
    assert request.startswith(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n")
    assert b"Sec-WebSocket-Protocol: pigeonpush.v1\r\n" in request
    key = request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
    assert len(base64.b64decode(key)) == 16
    socket.clear()
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n"
        b"Sec-WebSocket-Protocol: pigeonpush.v1\r\n\r\n"
    )
    # The answer and a first frame in pieces.
    data = answer + server_frame(BINARY, b"\x05ab")
    for piece in (data[:10], data[10:-3], data[-3:]):
        client.dataReceived(piece)
    assert inner.transport is client
    return client, inner, socket


def test_after_the_handshake_messages_become_length_prefixed_frames() -> None:
    client, inner, socket = opened()
    assert inner.received == [b"\x00\x00\x00\x03\x05ab"]
    client.dataReceived(server_frame(BINARY, b"\x07", final=False) + server_frame(0, b"xy"))
    assert inner.received[1:] == [b"\x00\x00\x00\x03\x07xy"]
    client.write(b"\x00\x00\x00\x01\x04" + b"\x00\x00\x00\x02\x09z")
    assert read_client_frames(socket.value()) == [(BINARY, b"\x04"), (BINARY, b"\x09z")]


def test_a_ping_gets_its_pong_and_a_close_its_close() -> None:
    client, inner, socket = opened()
    client.dataReceived(server_frame(PING, b"hi") + server_frame(PONG, b""))
    assert read_client_frames(socket.value()) == [(PONG, b"hi")]
    socket.clear()
    client.dataReceived(server_frame(CLOSE, b"\x03\xe8bye"))
    assert read_client_frames(socket.value()) == [(CLOSE, b"\x03\xe8")]
    assert socket.disconnecting
    client.connectionLost()
    assert inner.lost


def test_closing_sends_a_close_first_and_nothing_after() -> None:
    client, _, socket = opened()
    client.loseConnection()
    client.write(b"\x00\x00\x00\x01\x04")
    assert read_client_frames(socket.value()) == [(CLOSE, b"\x03\xe8")]
    assert socket.disconnecting


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "websocket_http_400"),
        (b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n", "websocket_bad_accept"),
        (b"junk\r\n\r\n", "websocket_http_none"),
    ],
)
def test_a_refused_or_wrong_handshake_aborts_and_says_why(answer: bytes, reason: str) -> None:
    inner = Inner()
    client = WebSocketClient(inner, "127.0.0.1", 9000)
    socket = Socket()
    client.makeConnection(socket)
    client.dataReceived(answer)
    assert socket.aborted and inner.reason == reason and inner.transport is None


def test_a_text_message_from_the_server_aborts() -> None:
    client, _, socket = opened()
    client.dataReceived(server_frame(1, b"text"))
    assert socket.aborted


# --- against the server ------------------------------------------------------------------


class Fleet:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def ready(self, client: Any, heartbeat: float | None) -> None:
        self.events.append(("ready", heartbeat))

    def refused(self, client: Any, reason: str) -> None:
        self.events.append(("refused", reason))

    def lost(self, client: Any, reason: str) -> None:
        self.events.append(("lost", reason))

    def pushed(self, client: Any, key: str, text: str, accepted_ms: int | None) -> None:
        self.events.append(("pushed", key, text))

    def framed(self) -> None:
        self.events.append(("framed",))


@attrs.define
class Server:
    hub: PushHub
    store: MemoryStore
    port: Any


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    store = MemoryStore(reactor)
    settings = ServerSettings(heartbeat=20).check()
    hub = PushHub(store, reactor, settings, server_address="127.0.0.1:7101")
    factory = WebSocketFactory(hub, settings, reactor, reactor=reactor)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    yield Server(hub, store, port)
    await port.stopListening()
    await wait_for(lambda: not hub.all_sessions, timeout=10, what="every session ends")
    hub.stop_timers()
    await hub.acks.flush()


@pytest_twisted.ensureDeferred
async def test_a_bench_client_over_websocket_against_the_server(server: Server) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    await server.store.issue_token("ws-1", "tok", 300)
    fleet = Fleet()
    inner = PigeonClient(fleet, 0, "ws-1", "tok", reactor)  # type: ignore[arg-type]
    port = server.port.getHost().port
    websocket = WebSocketClient(inner, "127.0.0.1", port)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), websocket)
    await wait_for(lambda: fleet.events, timeout=10, what="AUTH_OK")
    assert fleet.events == [("ready", 20.0)]

    statuses = await server.hub.push([PushItem("ws-1", "m1", "bench", "1.0|x", {})])
    assert statuses == [PushStatus.WRITTEN]
    await wait_for(lambda: len(fleet.events) == 2, timeout=10, what="the PUSH")
    assert fleet.events[1] == ("pushed", "m1", "1.0|x")
    session = server.hub.sessions["ws-1"]
    await wait_for(lambda: not session.in_flight, timeout=10, what="the ACK at the server")

    inner.ping()  # the server answers PONG (nothing to see) and keeps the session
    inner.close()
    await wait_for(lambda: fleet.events[-1][0] == "lost", timeout=10, what="the close")
    assert fleet.events[-1] == ("lost", "closed")
    await wait_for(lambda: not server.hub.all_sessions, timeout=10, what="the session ends")


def test_the_fleet_routes_websocket_clients_through_reglog() -> None:
    from pigeonpush_bench.loadgen import Fleet, Recorder

    clock = Clock()
    with pytest.raises(ValueError, match="pigeon-ws needs reglog"):
        Fleet(clock, Recorder(clock), {"protocol": "pigeon-ws", "count": 1})
