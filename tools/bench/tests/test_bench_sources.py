"""Load generators connect from their own loopback address, the port left to
``connect``, and each generator of a run has an address of its own."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from pigeonpush_bench.cluster import connect_jobs
from pigeonpush_bench.sources import IP_BIND_ADDRESS_NO_PORT, PortLateReactor, source_address


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _Peers(Factory):
    def __init__(self) -> None:
        self.seen: defer.Deferred[tuple[str, int]] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> Protocol:
        if not self.seen.called:
            self.seen.callback((addr.host, addr.port))
        return Protocol()


@pytest_twisted.ensureDeferred
async def test_a_connection_comes_from_the_source_address_with_the_port_left_late() -> None:
    reactor = _reactor()
    peers = _Peers()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(peers)
    try:
        endpoint = TCP4ClientEndpoint(
            PortLateReactor(reactor),
            "127.0.0.1",
            port.getHost().port,
            timeout=5,
            bindAddress=(source_address(3), 0),
        )
        client = await connectProtocol(endpoint, Protocol())
        host, peer_port = await peers.seen
        sock: socket.socket = client.transport.getHandle()  # type: ignore[attr-defined]

        assert host == "127.0.0.13"
        assert peer_port != 0
        assert sock.getsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT) == 1
        client.transport.loseConnection()  # type: ignore[attr-defined]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_from_a_source_fails_like_any_other() -> None:
    from twisted.internet.error import ConnectionRefusedError

    reactor = _reactor()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    unused = free.getsockname()[1]
    free.close()
    endpoint = TCP4ClientEndpoint(
        PortLateReactor(reactor), "127.0.0.1", unused, timeout=5, bindAddress=("127.0.0.10", 0)
    )
    with pytest.raises(ConnectionRefusedError):
        await connectProtocol(endpoint, Protocol())


def test_each_generator_of_a_run_has_its_own_source() -> None:
    assert source_address(0) == "127.0.0.10"
    assert len({source_address(k) for k in range(200)}) == 200


def test_a_run_hands_each_generator_its_source() -> None:
    targets = [{"server": "127.0.0.1:7001"}, {"server": "127.0.0.1:7002"}]
    jobs = connect_jobs(10, 2, 4, targets, {"protocol": "framing"})

    assert [(member, args["source"]) for member, args in jobs] == [
        (0, "127.0.0.14"),
        (0, "127.0.0.14"),
        (1, "127.0.0.15"),
        (1, "127.0.0.15"),
    ]
    assert [(args["start"], args["count"], args["server"]) for _, args in jobs] == [
        (0, 3, "127.0.0.1:7001"),
        (3, 2, "127.0.0.1:7002"),
        (5, 3, "127.0.0.1:7001"),
        (8, 2, "127.0.0.1:7002"),
    ]
    assert all(args["protocol"] == "framing" for _, args in jobs)
