"""pigeonpush.http against hostile clients: pipelining without reading, header
trickle, too many connections. Timing on a Clock; one real socket for each."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientCreator, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Request

from pigeonpush.http import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT,
    BoundedChannel,
    JsonResource,
    JsonResponse,
    JsonSite,
    JsonTree,
)
from pigeonpush.metrics import MetricsResource
from pigeonpush.services import listen_or_fail
from support.reactors import MemoryReactorClock
from support.waiting import wait_for

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)
#: Bytes of each answer in the pipelining test: a few kernel buffers' worth
#: of answers is a few hundred of them.
ANSWER_BYTES = 8192


@attrs.define
class Counter:
    handled: int = 0

    async def answer(self, request: Request) -> JsonResponse:
        self.handled += 1
        return JsonResponse({"n": self.handled, "pad": "x" * ANSWER_BYTES})


def tree(counter: Counter) -> JsonTree:
    root = JsonTree()
    root.putChild(b"health", JsonResource({b"GET": counter.answer}))
    root.putChild(b"metrics", MetricsResource())
    return root


def connect(site: JsonSite) -> tuple[BoundedChannel, StringTransport]:
    channel = site.buildProtocol(ADDRESS)
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
POST = (
    b"POST /route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 18\r\n\r\n{"clientId": "c1"}'
)


# -- the request deadline, on a Clock ----------------------------------------------------


def test_a_trickled_request_gets_408_and_is_closed_at_its_deadline() -> None:
    """One byte a second resets the idle timeout every time; the deadline
    counts from the request's first byte whatever comes after."""
    reactor = MemoryReactorClock()
    site = JsonSite(tree(Counter()), reactor=reactor, request_timeout=10)
    channel, transport = connect(site)
    for byte in GET[:-1][:9]:
        channel.dataReceived(bytes([byte]))
        reactor.advance(1)
    assert not transport.disconnecting
    reactor.advance(1)  # 10 s after the first byte
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"Connection: close" in head
    assert body == (
        b'{"error":"request_timeout","message":"the request did not arrive whole within '
        b'10 seconds"}'
    )
    assert transport.disconnecting
    # Nothing more is parsed; the idle timeout and its abort call are cleared on close.
    channel.dataReceived(GET)
    channel.connectionLost(Failure(ConnectionError()))
    assert reactor.getDelayedCalls() == [] or all(
        not call.active() for call in reactor.getDelayedCalls()
    )


def test_a_slow_body_counts_against_the_same_deadline() -> None:
    reactor = MemoryReactorClock()
    site = JsonSite(tree(Counter()), reactor=reactor, request_timeout=5)
    channel, transport = connect(site)
    channel.dataReceived(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    for _ in range(4):
        reactor.advance(1)
        channel.dataReceived(b"x")
    reactor.advance(1)
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_requests_in_time_and_idle_keep_alive_are_not_cut() -> None:
    """The deadline runs only while a request arrives: between requests the
    idle timeout (60 s) rules."""
    reactor = MemoryReactorClock()
    counter = Counter()
    site = JsonSite(tree(counter), reactor=reactor, request_timeout=10)
    channel, transport = connect(site)
    for _ in range(3):
        channel.dataReceived(GET[:10])
        reactor.advance(9)
        channel.dataReceived(GET[10:])
        reactor.advance(30)  # idle, within the 60 s idle timeout
    assert counter.handled == 3
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3
    assert b" 408 " not in transport.value()
    assert not transport.disconnecting


class CountingTransport(StringTransport):
    """Counts how often the channel asks for the connection's addresses."""

    asked = 0

    def getHost(self) -> Any:
        self.asked += 1
        return super().getHost()

    def getPeer(self) -> Any:
        self.asked += 1
        return super().getPeer()


def test_the_addresses_are_asked_of_the_transport_once_per_connection() -> None:
    reactor = MemoryReactorClock()
    seen: list[tuple[Any, Any]] = []

    async def addresses(request: Request) -> JsonResponse:
        seen.append((request.getHost(), request.getClientAddress()))
        return JsonResponse({})

    root = JsonTree()
    root.putChild(b"health", JsonResource({b"GET": addresses}))
    site = JsonSite(root, reactor=reactor)
    channel = site.buildProtocol(ADDRESS)
    assert channel is not None
    transport = CountingTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 80), peerAddress=ADDRESS
    )
    channel.makeConnection(transport)
    channel.dataReceived(GET * 3)
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3
    assert seen == [(IPv4Address("TCP", "127.0.0.1", 80), ADDRESS)] * 3
    assert transport.asked == 2


def test_pipelined_requests_each_get_their_own_deadline() -> None:
    reactor = MemoryReactorClock()
    counter = Counter()
    site = JsonSite(tree(counter), reactor=reactor, request_timeout=10)
    channel, transport = connect(site)
    channel.dataReceived(GET * 3 + GET[:5])
    assert counter.handled == 3
    reactor.advance(9)
    assert not transport.disconnecting
    reactor.advance(1)
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3
    assert b"HTTP/1.1 408 " in transport.value()


def test_defaults_and_bad_limits() -> None:
    site = JsonSite(tree(Counter()), reactor=MemoryReactorClock())
    assert (site.request_timeout, site.max_connections) == (
        DEFAULT_REQUEST_TIMEOUT,
        DEFAULT_MAX_CONNECTIONS,
    )
    with pytest.raises(ValueError, match="request_timeout"):
        JsonSite(tree(Counter()), request_timeout=0)
    with pytest.raises(ValueError, match="max_connections"):
        JsonSite(tree(Counter()), max_connections=0)


# -- the connection cap, on a Clock -----------------------------------------------------


def test_connections_over_the_cap_are_refused_until_one_closes() -> None:
    reactor = MemoryReactorClock()
    site = JsonSite(tree(Counter()), reactor=reactor, max_connections=2)
    first, _ = connect(site)
    connect(site)
    assert site.buildProtocol(ADDRESS) is None  # the port closes the socket at once
    assert (site.connections, site.refused) == (2, 1)
    first.connectionLost(Failure(ConnectionError()))
    assert site.connections == 1
    assert site.buildProtocol(ADDRESS) is not None


class _Port:
    """Stands for a listening port: whether the reactor reads (accepts) on it."""

    connected = True

    def __init__(self) -> None:
        self.reading = True

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False


def test_at_the_cap_a_known_port_stops_accepting_until_one_closes() -> None:
    site = JsonSite(tree(Counter()), reactor=MemoryReactorClock(), max_connections=2)
    port = _Port()
    site.listening_on(port)
    first, _ = connect(site)
    assert port.reading
    connect(site)
    assert not port.reading and site.paused == 1  # the next ones wait in the backlog
    # One more of the accept burst in hand is served, not reset.
    third, _ = connect(site)
    assert (site.connections, site.refused) == (3, 0)
    first.connectionLost(Failure(ConnectionError()))
    assert not port.reading  # still at the cap
    third.connectionLost(Failure(ConnectionError()))
    assert port.reading and site.connections == 1


def test_a_port_told_at_the_cap_stops_accepting_at_once() -> None:
    site = JsonSite(tree(Counter()), reactor=MemoryReactorClock(), max_connections=1)
    connect(site)
    port = _Port()
    site.listening_on(port)
    assert not port.reading


# -- pipelining without reading, over a real socket -------------------------------------


class _Pipeliner(Protocol):
    """Writes every request at once and does not read until told to."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = 0
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # stop reading
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


@attrs.define
class Listening:
    site: JsonSite
    counter: Counter
    port: Any

    @property
    def number(self) -> int:
        return int(self.port.getHost().port)


@pytest_twisted.async_yield_fixture
async def listening() -> AsyncIterator[Any]:
    from twisted.internet import reactor

    started: list[Listening] = []

    def listen(**kwargs: Any) -> Listening:
        counter = Counter()
        site = JsonSite(tree(counter), reactor=reactor, **kwargs)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        started.append(Listening(site, counter, port))
        return started[-1]

    yield listen
    for one in started:
        await one.port.stopListening()


def _small_window_socket(port: int) -> socket.socket:
    """A connected client socket with a small receive buffer (set before the
    handshake, so the window stays small): the kernel buffers few answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
    return sock


@pytest_twisted.ensureDeferred
async def test_a_client_that_pipelines_and_never_reads_is_not_read_either(listening: Any) -> None:
    """Twisted alone answered every request into memory (~600 bytes each on
    the real APIs; 8 KB each here): the server must stop reading once the
    answers back up, and serve them all once the client reads."""
    from twisted.internet import reactor

    requests = 4000
    server = listening()
    sock = _small_window_socket(server.number)
    client = _Pipeliner(GET * requests)
    await wait_for(
        lambda: sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and _connected(sock),
        timeout=5,
        what="the client socket to connect",
    )
    transport = reactor.adoptStreamConnection(
        sock.fileno(), socket.AF_INET, Factory.forProtocol(lambda: client)
    )
    del transport
    sock.close()  # adopted: Twisted holds its own duplicate

    # The server answers until the kernel's buffers are full, then stops:
    # the count stays put over several polls.
    last: list[int] = []

    def settled() -> bool:
        last.append(server.counter.handled)
        return len(last) > 10 and last[-1] == last[-11] and last[-1] > 0

    await wait_for(settled, timeout=20, interval=0.05, what="the server to stop answering")
    stalled_at = server.counter.handled
    assert stalled_at < requests // 4, stalled_at
    (channel_transport,) = _server_transports(server.site)
    assert channel_transport.dataBuffer is not None
    buffered = len(channel_transport.dataBuffer) + sum(
        len(chunk) for chunk in channel_transport._tempDataBuffer
    )
    assert buffered < 512 * 1024, buffered

    assert client.transport is not None
    client.transport.resumeProducing()  # read now
    await wait_for(
        lambda: server.counter.handled == requests,
        timeout=20,
        what="every pipelined request to be answered",
    )
    client.transport.loseConnection()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_answered_on_a_later_turn_are_read_as_they_are_served() -> None:
    """An answer that waits for the store (a later reactor turn) made Twisted
    read 64 KB more for each request it took out of its buffer: a pipelining
    client had the server buffer everything it sent. The buffered requests
    stay within Twisted's own eager-read size and one read."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    requests = 8_000
    handled = 0
    most_buffered = 0

    async def later(request: Request) -> JsonResponse:
        nonlocal handled, most_buffered
        await deferLater(reactor, 0, lambda: None)
        most_buffered = max(most_buffered, sum(map(len, request.channel._dataBuffer)))
        handled += 1
        return JsonResponse({"n": handled})

    root = JsonTree()
    root.putChild(b"route", JsonResource({b"POST": later}))
    site = JsonSite(root, reactor=reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    # With a body: Twisted's own eager-read check is on the path of a GET's
    # leftover bytes, not on that of the bytes after a body.
    client = _Quiet(POST * requests)
    try:
        await ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port.getHost().port)
        await wait_for(
            lambda: handled == requests, timeout=30, what="every pipelined request answered"
        )
        assert most_buffered < 128 * 1024, most_buffered
        assert client.received.count(b"HTTP/1.1 200 OK") == requests
    finally:
        if client.transport is not None:
            client.transport.loseConnection()
        await port.stopListening()


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _server_transports(site: JsonSite) -> list[Any]:
    import gc

    return [
        channel.transport
        for channel in gc.get_objects()
        if isinstance(channel, BoundedChannel)
        and getattr(channel, "site", None) is site
        and channel.transport is not None
        and channel.transport.connected
    ]


# -- the connection cap and the deadline over real sockets ------------------------------


class _Quiet(Protocol):
    """Connects, sends ``payload``, keeps what it gets, notes when it is closed."""

    def __init__(self, payload: bytes = b"") -> None:
        self.payload = payload
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


async def _open(port: int, payload: bytes = b"") -> _Quiet:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    protocol = _Quiet(payload)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    await endpoint.connect(Factory.forProtocol(lambda: protocol))
    return protocol


@pytest_twisted.ensureDeferred
async def test_over_the_cap_a_connection_is_closed_at_once_and_a_trickler_is_cut(
    listening: Any,
) -> None:
    from twisted.internet import reactor

    server = listening(max_connections=2, request_timeout=0.5)
    trickler = await _open(server.number, b"GET /hea")
    idle = await _open(server.number)
    await wait_for(lambda: server.site.connections == 2, timeout=5, what="two connections")

    refused = await _open(server.number, GET)
    await refused.closed.addTimeout(5, reactor)
    assert refused.received == b""
    assert server.site.refused == 1

    # The trickler's deadline frees its slot; then a request is served.
    await trickler.closed.addTimeout(5, reactor)
    assert trickler.received.startswith(b"HTTP/1.1 408 ")
    served = await _open(server.number, GET)
    await wait_for(lambda: b"200 OK" in served.received, timeout=5, what="an answer")
    assert server.counter.handled == 1
    for protocol in (idle, served):
        assert protocol.transport is not None
        protocol.transport.loseConnection()
        await protocol.closed


@pytest_twisted.ensureDeferred
async def test_through_listen_or_fail_a_connection_over_the_cap_waits_for_a_slot() -> None:
    """A daemon's listener (``listen_or_fail``): over the cap, a new connection
    is neither reset nor served until a slot frees; then it is answered."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    counter = Counter()
    site = JsonSite(tree(counter), reactor=reactor, max_connections=2, request_timeout=0.5)
    service = listen_or_fail(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), site)
    service.privilegedStartService()
    service.startService()
    try:
        port = await service.when_listening()
        number = port.getHost().port
        trickler = await _open(number, b"GET /hea")
        idle = await _open(number)
        await wait_for(lambda: site.connections == 2, timeout=5, what="two connections")
        waiting = await _open(number, GET)  # the kernel completes the handshake
        await wait_for(lambda: site.paused == 1, timeout=5, what="accepting paused")
        assert site.connections == 2 and not waiting.closed.called
        # The trickler's deadline frees a slot: the waiting one is accepted and served.
        await trickler.closed.addTimeout(5, reactor)
        await wait_for(lambda: b"200 OK" in waiting.received, timeout=5, what="an answer")
        assert site.refused == 0 and counter.handled == 1
        for protocol in (idle, waiting):
            assert protocol.transport is not None
            protocol.transport.loseConnection()
            await protocol.closed
    finally:
        await service.stopService()


# -- /metrics ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE"])
def test_other_methods_on_metrics_are_405_in_json_with_allow(method: bytes) -> None:
    reactor = MemoryReactorClock()
    site = JsonSite(tree(Counter()), reactor=reactor)
    channel, transport = connect(site)
    channel.dataReceived(method + b" /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ")
    assert b"Allow: GET, HEAD" in head
    assert b"Content-Type: application/json" in head
    assert body.startswith(b'{"error":"method_not_allowed"')
