"""PushServerService: start failures, periodic jobs (the memory store and
static discovery; the real backends are in test_server_integration.py)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from pigeonpush.discovery.static import StaticDiscovery
from pigeonpush.server.hub import PushHub
from pigeonpush.server.service import PushServerService
from pigeonpush.server.settings import ServerSettings
from pigeonpush.store.memory import MemoryStore
from support.logcheck import FailureCollector
from support.reactors import MemoryReactorClock
from support.server_harness import DeviceTransport, result_of
from support.servers import free_port
from support.waiting import wait_for


def make_service(
    reactor: Any, listen: str, rpc: str, **kwargs: Any
) -> tuple[PushServerService, MemoryStore]:
    store = MemoryStore(reactor)
    hub = PushHub(store, reactor, ServerSettings(drain_period=0, session_ttl=30))
    service = PushServerService(
        hub,
        reactor=reactor,
        client_endpoint=serverFromString(reactor, listen),
        rpc_endpoint=serverFromString(reactor, rpc),
        discovery=StaticDiscovery(clock=reactor),
        **kwargs,
    )
    return service, store


@pytest_twisted.ensureDeferred
async def test_a_port_in_use_fails_the_privileged_start_at_once() -> None:
    from twisted.internet import reactor

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    rpc_port = free_port()
    try:
        service, _store = make_service(
            reactor,
            f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1",
            f"tcp:{rpc_port}:interface=127.0.0.1",
        )
        with pytest.raises(CannotListenError):
            service.privilegedStartService()
        with pytest.raises(CannotListenError):
            await service.when_ready()
        await service.stopService()

        def rpc_closed() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", rpc_port)) != 0

        await wait_for(rpc_closed, timeout=5, what="the RPC port closed again")
    finally:
        busy.close()


@pytest_twisted.ensureDeferred
async def test_a_start_failure_is_reported_to_the_callback(
    logged_failures: FailureCollector,
) -> None:
    from twisted.internet import reactor

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    reported: list[Failure] = []
    try:
        service, _store = make_service(
            reactor,
            f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1",
            "tcp:0:interface=127.0.0.1",
            on_start_failure=reported.append,
        )
        service.startService()
        with pytest.raises(CannotListenError):
            await service.when_ready()
        assert [failure.type for failure in reported] == [CannotListenError]
        assert service.phase == "starting"
        await service.stopService()
        assert service.phase == "stopped"
    finally:
        busy.close()
    assert len(logged_failures.flush(CannotListenError)) == 1


def test_live_sessions_are_refreshed_every_third_of_the_ttl() -> None:
    from pigeonpush.wire.codec import ENCODED_PING, encode
    from pigeonpush.wire.frames import Auth

    reactor = MemoryReactorClock()
    service, store = make_service(reactor, "tcp:7400", "tcp:7401")
    service.startService()
    reactor.advance(0)
    result_of(store.issue_token("alice", "t", 300))
    device = reactor.tcpServers[1][1].buildProtocol(None)
    device.makeConnection(DeviceTransport())
    device.dataReceived(encode(Auth("alice", "t")))
    assert result_of(store.route("alice")) == "127.0.0.1:7401"

    for _ in range(10):  # 100 s: over three TTLs; the client keeps pinging
        reactor.advance(10)
        device.dataReceived(ENCODED_PING)
    assert result_of(store.route("alice")) == "127.0.0.1:7401"
    assert result_of(store.token("alice")) == "t"


def test_the_load_is_published_only_when_it_changed() -> None:
    from pigeonpush.discovery import SERVERS

    reactor = MemoryReactorClock()
    service, _store = make_service(reactor, "tcp:7400", "tcp:7401")
    service.startService()
    reactor.advance(0)
    seen: list[Any] = []
    service.discovery.watch(SERVERS, seen.append)
    reactor.advance(0)
    count = len(seen)
    for _ in range(5):
        reactor.advance(1.0)
    assert len(seen) == count  # nothing changed: nothing written


def test_a_delivery_node_appearing_retries_the_failed_pulls_at_once() -> None:
    """A restarted server accepts devices before it knows a delivery node: the
    pull on AUTH_OK fails, and the node's arrival in discovery retries it."""
    from pigeonpush.discovery import DELIVERY
    from pigeonpush.rpcpool import AmpPool
    from pigeonpush.server.pull import BATCH_DELAY, AmpPullSource
    from pigeonpush.wire.codec import encode
    from pigeonpush.wire.frames import Auth

    reactor = MemoryReactorClock()
    source = AmpPullSource(AmpPool(reactor))
    service, store = make_service(reactor, "tcp:7400", "tcp:7401", pull_source=source)
    service.hub.pull_source = source
    service.startService()
    reactor.advance(0)
    result_of(store.issue_token("alice", "t", 300))
    device = reactor.tcpServers[1][1].buildProtocol(None)
    device.makeConnection(DeviceTransport())
    device.dataReceived(encode(Auth("alice", "t")))
    reactor.advance(BATCH_DELAY)
    assert reactor.tcpClients == []  # no delivery node known: the pull failed

    service.discovery.register(DELIVERY, "d1", {"rpc": "127.0.0.1:7500"})
    reactor.advance(0)
    reactor.advance(BATCH_DELAY)

    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 7500)]


def test_stopping_stops_the_timeouts_of_connections_left_open() -> None:
    """A connection whose AUTH the store has not answered is not closed by the
    drain; once stopped, the server has no timer left for its timeout."""
    from pigeonpush.wire.codec import encode
    from pigeonpush.wire.frames import Auth
    from support.server_harness import GatedStore

    reactor = MemoryReactorClock()
    store = GatedStore(reactor)
    hub = PushHub(store, reactor, ServerSettings(drain_period=0, session_ttl=30))
    service = PushServerService(
        hub,
        reactor=reactor,
        client_endpoint=serverFromString(reactor, "tcp:7400"),
        rpc_endpoint=serverFromString(reactor, "tcp:7401"),
        discovery=StaticDiscovery(clock=reactor),
    )
    service.startService()
    reactor.advance(0)
    result_of(store.issue_token("alice", "t", 300))
    store.gated.add("bind_session")
    device = reactor.tcpServers[1][1].buildProtocol(None)
    device.makeConnection(DeviceTransport())
    device.dataReceived(encode(Auth("alice", "t")))
    [factory] = service.channel_factories
    assert len(factory.deadlines) == 1

    stopped = service.stopService()
    reactor.pump([1.0] * 5)  # the drain's grace, within the auth timeout (10 s)
    result_of(stopped)

    assert not device.closing  # (still waiting for its AUTH's answer)
    assert len(factory.deadlines) == 0
    assert [call for call in reactor.getDelayedCalls() if call.active()] == []
