"""AmpPool against a real AMP peer on loopback: reuse, reconnects, timeouts, closing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted.python.failure import Failure

from pigeonpush.hostport import split_address
from pigeonpush.rpcpool import AmpPool, RpcUnavailable
from support.servers import free_port
from support.waiting import wait_for


class Echo(amp.Command):
    arguments = [(b"value", amp.Unicode())]
    response = [(b"value", amp.Unicode())]


class Stall(amp.Command):
    """Never answered by the peer (until it is told to)."""

    arguments: list[tuple[bytes, amp.Argument]] = []
    response: list[tuple[bytes, amp.Argument]] = []


class Boom(amp.Command):
    arguments: list[tuple[bytes, amp.Argument]] = []
    response: list[tuple[bytes, amp.Argument]] = []
    errors = {KeyError: b"NO_SUCH_KEY"}


class PeerProtocol(amp.AMP):
    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self.peer = peer

    def connectionMade(self) -> None:
        super().connectionMade()
        self.peer.connections.append(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.peer.lost += 1

    @Echo.responder
    def echo(self, value: str) -> dict[str, Any]:
        return {"value": value}

    @Stall.responder
    def stall(self) -> Deferred[dict[str, Any]]:
        waiting: Deferred[dict[str, Any]] = Deferred()
        self.peer.stalled.append(waiting)
        return waiting

    @Boom.responder
    def boom(self) -> dict[str, Any]:
        raise KeyError("missing")


class Peer(Factory):
    """A listening AMP server that counts its connections."""

    def __init__(self) -> None:
        self.connections: list[PeerProtocol] = []
        self.lost = 0
        self.stalled: list[Deferred[dict[str, Any]]] = []
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> PeerProtocol:
        return PeerProtocol(self)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    @property
    def open_connections(self) -> int:
        return len(self.connections) - self.lost

    async def listen(self, port: int = 0) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString

        endpoint = serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1")
        self.port = await endpoint.listen(self)

    async def stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        for protocol in self.connections:
            if protocol.transport is not None and protocol.transport.connected:
                protocol.transport.abortConnection()
        await wait_for(
            lambda: self.open_connections == 0, timeout=5, what="peer connections closed"
        )


@pytest_twisted.async_yield_fixture
async def peer() -> AsyncIterator[Peer]:
    server = Peer()
    await server.listen()
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def pool() -> AsyncIterator[AmpPool]:
    from twisted.internet import reactor

    pool = AmpPool(reactor, connect_timeout=2.0, call_timeout=0.3)
    yield pool
    await pool.close()


@pytest_twisted.ensureDeferred
async def test_calls_reuse_one_connection(pool: AmpPool, peer: Peer) -> None:
    for word in ("one", "two", "three"):
        answer = await pool.call(peer.address, Echo, value=word)
        assert answer["value"] == word
    assert len(peer.connections) == 1
    assert pool.connected_addresses() == [peer.address]


@pytest_twisted.ensureDeferred
async def test_concurrent_calls_share_one_connect(pool: AmpPool, peer: Peer) -> None:
    calls = [pool.call(peer.address, Echo, value=str(n)) for n in range(20)]
    results = await DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)
    assert [answer["value"] for _ok, answer in results] == [str(n) for n in range(20)]
    assert len(peer.connections) == 1


@pytest_twisted.ensureDeferred
async def test_concurrent_callers_all_fail_when_the_connect_fails(pool: AmpPool) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    calls = [ensureDeferred(_error_of(pool.call(address, Echo, value="x"))) for _ in range(3)]
    errors = await DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)
    for _ok, error in errors:
        assert isinstance(error, RpcUnavailable)
        assert "cannot connect" in str(error)


@pytest_twisted.ensureDeferred
async def test_reconnects_after_the_connection_is_lost(pool: AmpPool, peer: Peer) -> None:
    await pool.call(peer.address, Echo, value="first")
    peer.connections[0].transport.loseConnection()
    await wait_for(lambda: not pool.connected_addresses(), timeout=5, what="pool forgets")

    answer = await pool.call(peer.address, Echo, value="again")
    assert answer["value"] == "again"
    assert len(peer.connections) == 2


@pytest_twisted.ensureDeferred
async def test_a_call_to_a_restarted_peer_works(pool: AmpPool, peer: Peer) -> None:
    await pool.call(peer.address, Echo, value="first")
    port = peer.port.getHost().port
    await peer.stop()
    await wait_for(lambda: not pool.connected_addresses(), timeout=5, what="pool forgets")
    with pytest.raises(RpcUnavailable):
        await pool.call(f"127.0.0.1:{port}", Echo, value="down")

    await peer.listen(port)
    answer = await pool.call(f"127.0.0.1:{port}", Echo, value="back")
    assert answer["value"] == "back"


@pytest_twisted.ensureDeferred
async def test_timeout_fails_with_rpc_unavailable_and_drops_the_connection(
    pool: AmpPool, peer: Peer
) -> None:
    await pool.call(peer.address, Echo, value="warm up")

    with pytest.raises(RpcUnavailable, match="did not answer Stall in time"):
        await pool.call(peer.address, Stall)

    await wait_for(lambda: peer.lost == 1, timeout=5, what="peer sees the connection dropped")
    assert pool.connected_addresses() == []
    # The next call makes a new connection.
    answer = await pool.call(peer.address, Echo, value="fresh")
    assert answer["value"] == "fresh"
    assert len(peer.connections) == 2


@pytest_twisted.ensureDeferred
async def test_a_call_in_flight_fails_when_the_peer_closes(pool: AmpPool, peer: Peer) -> None:
    from twisted.internet import reactor

    slow_pool = AmpPool(reactor, call_timeout=10.0)
    try:
        call = slow_pool.call(peer.address, Stall)
        await wait_for(lambda: peer.stalled, timeout=5, what="the call reaches the peer")
        peer.connections[0].transport.loseConnection()
        with pytest.raises(RpcUnavailable, match="lost"):
            await call
    finally:
        await slow_pool.close()


@pytest_twisted.ensureDeferred
async def test_a_remote_error_is_passed_through(pool: AmpPool, peer: Peer) -> None:
    with pytest.raises(KeyError):
        await pool.call(peer.address, Boom)
    # An application error does not cost the connection.
    assert pool.connected_addresses() == [peer.address]


@pytest_twisted.ensureDeferred
async def test_unreachable_and_malformed_addresses(pool: AmpPool) -> None:
    with pytest.raises(RpcUnavailable, match="cannot connect"):
        await pool.call(f"127.0.0.1:{free_port()}", Echo, value="x")
    for bad in ("no-port", "host:", ":7101", "host:99999", "host:abc"):
        with pytest.raises(RpcUnavailable, match=r"host:port|valid port"):
            await pool.call(bad, Echo, value="x")


@pytest_twisted.ensureDeferred
async def test_drop_closes_the_connection(pool: AmpPool, peer: Peer) -> None:
    await pool.call(peer.address, Echo, value="x")
    pool.drop(peer.address)
    await wait_for(lambda: peer.lost == 1, timeout=5, what="peer sees the close")
    assert pool.connected_addresses() == []
    pool.drop(peer.address)  # nothing to drop: no error


@pytest_twisted.ensureDeferred
async def test_closed_pool_closes_connections_and_refuses_calls(peer: Peer) -> None:
    from twisted.internet import reactor

    pool = AmpPool(reactor)
    await pool.call(peer.address, Echo, value="x")
    await pool.close()
    await wait_for(lambda: peer.lost == 1, timeout=5, what="the peer sees the close")
    with pytest.raises(RpcUnavailable, match="closed"):
        await pool.call(peer.address, Echo, value="after")
    assert len(peer.connections) == 1


@pytest_twisted.ensureDeferred
async def test_close_gives_up_a_connection_attempt(peer: Peer) -> None:
    from twisted.internet import reactor

    pool = AmpPool(reactor)
    call = pool.call(peer.address, Echo, value="x")  # connecting, not connected yet
    await pool.close()
    with pytest.raises(RpcUnavailable, match="closed"):
        await call
    assert pool.connected_addresses() == []


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:7101", ("127.0.0.1", 7101)),
        ("delivery-1.internal:1", ("delivery-1.internal", 1)),
        ("[::1]:7201", ("::1", 7201)),
    ],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["", "7101", "host:", ":7101", "host:0", "host:65536", "h:1x"])
def test_split_address_refuses_malformed(address: str) -> None:
    with pytest.raises(ValueError, match=repr(address).replace("[", r"\[")):
        split_address(address)


async def _error_of(call: Deferred[Any]) -> BaseException:
    try:
        await call
    except Exception as e:
        return e
    raise AssertionError("the call succeeded")
