"""Frames straight to the socket (pigeonpush.server.sendnow), over real
loopback TCP: at once when the transport holds nothing, behind what it
holds otherwise, and the rest of what the socket does not take buffered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from pigeonpush.server.sendnow import write_frames, write_now
from support.waiting import wait_for


class _Held(Protocol):
    """The server side: only holds its transport."""


class _Reader(Protocol):
    received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


@attrs.define
class _Pair:
    server: Any  # the server's tcp.Server transport
    client: _Reader
    reactor: Any


@pytest_twisted.async_yield_fixture
async def pair() -> AsyncIterator[_Pair]:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString

    servers: list[_Held] = []

    def build() -> _Held:
        servers.append(_Held())
        return servers[-1]

    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        Factory.forProtocol(build)
    )
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    client = await endpoint.connect(Factory.forProtocol(_Reader))
    await wait_for(lambda: servers, what="the server side of the connection")
    try:
        yield _Pair(servers[0].transport, client, reactor)
    finally:
        assert client.transport is not None
        client.transport.loseConnection()
        await port.stopListening()


def _holds_nothing(transport: Any) -> bool:
    return not transport.dataBuffer and not transport._tempDataLen


@pytest_twisted.ensureDeferred
async def test_an_idle_transport_sends_at_once_without_watching_for_writability(
    pair: _Pair,
) -> None:
    write_now(pair.server, b"one frame")
    write_frames(pair.server, [b" and", b" a burst"])

    # Sent already: nothing buffered, no writability to wait for.
    assert _holds_nothing(pair.server)
    assert pair.server not in pair.reactor.getWriters()
    await wait_for(lambda: pair.client.received == b"one frame and a burst", what="the data")


@pytest_twisted.ensureDeferred
async def test_data_goes_behind_what_the_transport_holds(pair: _Pair) -> None:
    pair.server.write(b"first, buffered; ")

    write_now(pair.server, b"second; ")
    write_frames(pair.server, [b"third", b" and fourth"])

    await wait_for(
        lambda: pair.client.received == b"first, buffered; second; third and fourth",
        what="the data in order",
    )


@pytest_twisted.ensureDeferred
async def test_what_the_socket_does_not_take_is_buffered_and_follows(pair: _Pair) -> None:
    big = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than the socket takes at once
    pair.client.transport.pauseProducing()  # type: ignore[union-attr]

    write_now(pair.server, big)
    write_now(pair.server, b"end")

    assert not _holds_nothing(pair.server)  # the rest waits in the transport
    pair.client.transport.resumeProducing()  # type: ignore[union-attr]
    await wait_for(
        lambda: len(pair.client.received) == len(big) + 3, timeout=30, what="all the data"
    )
    assert pair.client.received == big + b"end"


def test_other_transports_are_written_as_usual() -> None:
    transport = StringTransport()
    write_now(transport, b"a")
    write_frames(transport, [b"b", b"c"])
    assert transport.value() == b"abc"
