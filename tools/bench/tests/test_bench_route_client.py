"""The load generator's reglog client: keep-alive, a bounded pool, and a named
failure for every way a route request can go wrong."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

from pigeonpush_bench.processes import free_port
from pigeonpush_bench.route_client import RouteClient, RouteFailed

OK_BODY = b'{"token":"t-1","server":"127.0.0.1:7000"}'


def answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


@attrs.define
class Canned:
    """A server that answers every complete request with ``reply(request)``."""

    reply: Callable[[bytes], bytes | None]
    connections: int = 0
    requests: list[bytes] = attrs.field(factory=list)


class _CannedProtocol(Protocol):
    def __init__(self, canned: Canned) -> None:
        self.canned = canned
        self.buffer = b""

    def connectionMade(self) -> None:
        self.canned.connections += 1

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(rest) < length:
                return
            request, self.buffer = head + b"\r\n\r\n" + rest[:length], rest[length:]
            self.canned.requests.append(request)
            reply = self.canned.reply(request)
            if reply is not None:
                assert self.transport is not None
                self.transport.write(reply)


@pytest_twisted.async_yield_fixture
async def serve() -> AsyncIterator[Callable[[Canned], str]]:
    from twisted.internet import reactor

    ports = []

    def start(canned: Canned) -> str:
        port_number = free_port()
        factory = Factory.forProtocol(lambda: _CannedProtocol(canned))
        ports.append(
            serverFromString(reactor, f"tcp:{port_number}:interface=127.0.0.1").listen(factory)
        )
        return f"http://127.0.0.1:{port_number}"

    yield start
    for listening in ports:
        port = await listening
        await port.stopListening()


def _client(url: str, connections: int = 2, timeout: float = 10.0) -> RouteClient:
    from twisted.internet import reactor

    return RouteClient(reactor, url, connections, timeout)


@pytest_twisted.ensureDeferred
async def test_requests_share_a_bounded_pool_of_keep_alive_connections(
    serve: Callable[[Canned], str],
) -> None:
    canned = Canned(lambda _: answer(200, OK_BODY))
    url = serve(canned)
    client = _client(url, connections=2)
    try:
        routes = await gatherResults([ensureDeferred(client.route(f"c{n}")) for n in range(10)])
    finally:
        client.close()
    assert routes == [("t-1", "127.0.0.1:7000")] * 10
    assert canned.connections == 2
    assert len(canned.requests) == 10
    first = canned.requests[0]
    assert first.startswith(b"POST /v1/route HTTP/1.1\r\n")
    assert first.endswith(b'{"clientId":"c0"}')


@pytest_twisted.ensureDeferred
async def test_a_websocket_route_is_asked_for_by_name(serve: Callable[[Canned], str]) -> None:
    canned = Canned(lambda _: answer(200, OK_BODY))
    client = _client(serve(canned))
    try:
        assert await client.route("c0", websocket=True) == ("t-1", "127.0.0.1:7000")
    finally:
        client.close()
    assert canned.requests[0].endswith(b'{"clientId":"c0","transport":"websocket"}')


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (answer(503, b'{"error":"unavailable"}'), "route_http_503"),
        (answer(200, b"not json"), "route_bad_answer"),
        (answer(200, b'{"token":"t"}'), "route_bad_answer"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            "route_bad_answer",
        ),
        (b"SMTP ready\r\n\r\n", "route_bad_answer"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_answer_is_a_named_failure(
    serve: Callable[[Canned], str], reply: bytes, error: str
) -> None:
    client = _client(serve(Canned(lambda _: reply)))
    try:
        with pytest.raises(RouteFailed, match=f"^{error}$"):
            await client.route("c1")
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_by_the_server_is_replaced(
    serve: Callable[[Canned], str],
) -> None:
    canned = Canned(lambda _: answer(200, OK_BODY, b"Connection: close\r\n"))
    client = _client(serve(canned), connections=1)
    try:
        assert await client.route("c1") == ("t-1", "127.0.0.1:7000")
        assert await client.route("c2") == ("t-1", "127.0.0.1:7000")
    finally:
        client.close()
    assert canned.connections == 2


@pytest_twisted.ensureDeferred
async def test_no_answer_within_the_timeout_fails_and_frees_the_slot(
    serve: Callable[[Canned], str],
) -> None:
    replies = iter([None, answer(200, OK_BODY)])
    canned = Canned(lambda _: next(replies))
    client = _client(serve(canned), connections=1, timeout=0.3)
    try:
        with pytest.raises(RouteFailed, match=r"^route_CancelledError$"):
            await client.route("c1")
        assert await client.route("c2") == ("t-1", "127.0.0.1:7000")
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_reglog_is_a_connect_failure() -> None:
    client = _client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RouteFailed, match=r"^route_ConnectionRefusedError$"):
        await client.route("c1")


def test_only_http_urls_with_a_port_are_taken() -> None:
    for url in ("https://127.0.0.1:1", "http://127.0.0.1", "127.0.0.1:80"):
        with pytest.raises(ValueError, match="must be an http://host:port URL"):
            _client(url)
