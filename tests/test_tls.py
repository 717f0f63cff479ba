"""TLS on the hops between the parts: address syntax, option checks, and AMP
over TLS against real certificates made at run time (tests/support/certs.py).

The device hop (SDK to push server) is covered end to end in
tests/test_e2e_tls.py; Redis over TLS in tests/test_store_redis.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted.python import usage

from pigeonpush import options
from pigeonpush.delivery import tap as delivery_tap
from pigeonpush.hostport import PeerAddress, parse_peer_address, split_address
from pigeonpush.rpcpool import AmpPool, RpcUnavailable
from pigeonpush.server import tap as server_tap
from pigeonpush.tls import TCP, TLS, ClientTLS, listening_transport, load_trust_root
from support.certs import CertificateAuthority, ServerCertificate
from support.servers import free_port
from support.waiting import wait_for

# --- the address syntax ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7101", PeerAddress("127.0.0.1", 7101, TCP)),
        ("tls:127.0.0.1:7101", PeerAddress("127.0.0.1", 7101, TLS)),
        ("tls:push-1.example:443", PeerAddress("push-1.example", 443, TLS)),
        ("[::1]:7101", PeerAddress("::1", 7101, TCP)),
        ("tls:[::1]:7101", PeerAddress("::1", 7101, TLS)),
    ],
)
def test_peer_addresses_parse_and_write_back(text: str, expected: PeerAddress) -> None:
    assert parse_peer_address(text) == expected
    assert str(expected) == text
    assert expected.tls is (expected.transport == TLS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not host:port or tls:host:port"),
        ("tls:", "is not host:port or tls:host:port"),
        ("tls:7101", "is not host:port or tls:host:port"),
        ("ssl:h:7101", "TLS as tls:host:port"),
        ("TLS:h:7101", "TLS as tls:host:port"),
        ("::1:7101", "write IPv6 hosts as [v6]:port"),
        ("tls:h:0", "has no valid port"),
        ("tls:h:65536", "has no valid port"),
        ("tls:h:\uff17\uff11", "is not host:port"),  # fullwidth digits
        ("tls:a b:1", "has no valid host"),
    ],
)
def test_bad_peer_addresses_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        parse_peer_address(text)


def test_split_address_is_for_tcp_only() -> None:
    assert split_address("h:1") == ("h", 1)
    with pytest.raises(ValueError, match="is a TLS address"):
        split_address("tls:h:1")


@pytest.mark.parametrize(
    ("endpoint", "transport"),
    [
        ("tcp:7100", TCP),
        ("tcp:7100:interface=127.0.0.1", TCP),
        ("ssl:7100:privateKey=k.pem:certKey=c.pem", TLS),
        ("SSL:7100:privateKey=k.pem", TLS),
        ("unix:/run/p.sock", TCP),
    ],
)
def test_the_transport_follows_the_listening_endpoint(endpoint: str, transport: str) -> None:
    assert listening_transport(endpoint) == transport


# --- trust roots and option checks -----------------------------------------------------


def test_a_ca_file_must_hold_a_certificate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read --rpc-ca-file .*missing\.pem"):
        load_trust_root(str(tmp_path / "missing.pem"), option="--rpc-ca-file")
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        load_trust_root(str(empty))
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="does not load"):
        load_trust_root(str(broken))


def test_ca_file_and_insecure_exclude_each_other(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path)
    assert ClientTLS.from_options(str(authority.ca_file)).trust_root is not None
    assert ClientTLS.from_options(None) == ClientTLS()  # the system's authorities
    assert ClientTLS.from_options(insecure=True).insecure
    with pytest.raises(ValueError, match="either ca_file or insecure"):
        ClientTLS.from_options(str(authority.ca_file), insecure=True, option="ca_file")


def test_addresses_may_name_tls_in_options() -> None:
    assert options.check_address("--rpc-advertise", "tls:10.0.0.5:7101").tls
    with pytest.raises(usage.UsageError, match="tls:host:port when it speaks TLS"):
        options.check_address("--rpc-advertise", "ssl:10.0.0.5:7101")


@pytest.mark.parametrize("tap", [server_tap, delivery_tap])
def test_rpc_ca_file_is_read_at_parse_time(tap: Any, tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path)
    config = tap.Options()
    config.parseOptions(["--rpc-ca-file", str(authority.ca_file)])
    assert config["rpc-tls"].trust_root is not None
    default = tap.Options()
    default.parseOptions([])
    assert default["rpc-tls"] == ClientTLS()
    with pytest.raises(usage.UsageError, match="cannot read --rpc-ca-file"):
        tap.Options().parseOptions(["--rpc-ca-file", str(tmp_path / "nope.pem")])


def test_server_advertises_tls_addresses_given() -> None:
    config = server_tap.Options()
    config.parseOptions(["--advertise", "tls:push.example:7100", "--rpc-advertise", "tls:[::1]:1"])
    assert config["advertise"] == "tls:push.example:7100"
    with pytest.raises(usage.UsageError, match="--advertise must be host:port"):
        server_tap.Options().parseOptions(["--advertise", "tls://push.example:7100"])


# --- AMP over TLS ------------------------------------------------------------------------


class Echo(amp.Command):
    arguments = [(b"value", amp.Unicode())]
    response = [(b"value", amp.Unicode())]


class EchoPeer(amp.AMP):
    @Echo.responder
    def echo(self, value: str) -> dict[str, Any]:
        return {"value": value}


@pytest_twisted.async_yield_fixture
async def tls_peer(tmp_path: Path) -> AsyncIterator[tuple[CertificateAuthority, str]]:
    """An AMP peer listening with ``ssl:``, certified for 127.0.0.1; its ``tls:`` address."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    authority = CertificateAuthority.create(tmp_path / "ca")
    certificate: ServerCertificate = authority.issue(tmp_path / "peer")
    port_number = free_port()
    port = await serverFromString(reactor, certificate.endpoint(port_number)).listen(
        Factory.forProtocol(EchoPeer)
    )
    try:
        yield authority, f"tls:127.0.0.1:{port_number}"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_pool_speaks_tls_to_tls_addresses(
    tls_peer: tuple[CertificateAuthority, str],
) -> None:
    from twisted.internet import reactor

    authority, address = tls_peer
    pool = AmpPool(
        reactor,
        connect_timeout=5,
        call_timeout=5,
        tls=ClientTLS.from_options(str(authority.ca_file)),
    )
    try:
        answer = await pool.call(address, Echo, value="over tls")
        assert answer == {"value": "over tls"}
        (connected,) = pool.connected_addresses()
        assert connected == address
        transport = pool._connected[address].transport
        assert transport is not None and transport.getPeerCertificate() is not None
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_pool_refuses_a_peer_its_ca_did_not_sign(
    tls_peer: tuple[CertificateAuthority, str], tmp_path: Path
) -> None:
    from twisted.internet import reactor

    _authority, address = tls_peer
    stranger = CertificateAuthority.create(tmp_path / "stranger")
    pool = AmpPool(
        reactor,
        connect_timeout=5,
        call_timeout=5,
        tls=ClientTLS.from_options(str(stranger.ca_file)),
    )
    try:
        with pytest.raises(RpcUnavailable, match="certificate verify failed"):
            await pool.call(address, Echo, value="never")
        # The same port named as plain TCP: AMP bytes into a TLS handshake get nowhere.
        plain = address.removeprefix("tls:")
        with pytest.raises(RpcUnavailable):
            await pool.call(plain, Echo, value="never")
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_pool_checks_the_host_name(tmp_path: Path) -> None:
    """A certificate signed by the trusted CA but for another name is refused."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    authority = CertificateAuthority.create(tmp_path / "ca")
    elsewhere = authority.issue(tmp_path / "other", ["push.example"])
    port_number = free_port()
    port = await serverFromString(reactor, elsewhere.endpoint(port_number)).listen(
        Factory.forProtocol(EchoPeer)
    )
    pool = AmpPool(
        reactor,
        connect_timeout=5,
        call_timeout=5,
        tls=ClientTLS.from_options(str(authority.ca_file)),
    )
    try:
        with pytest.raises(RpcUnavailable, match="not for the host connected to"):
            await pool.call(f"tls:127.0.0.1:{port_number}", Echo, value="never")
    finally:
        await pool.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_closing_the_pool_ends_a_handshake_under_way() -> None:
    """A peer that accepts and never answers the handshake holds no connection
    once the pool closes."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Protocol

    accepted: list[Protocol] = []

    class Silent(Protocol):
        def connectionMade(self) -> None:
            accepted.append(self)

    port_number = free_port()
    port = await serverFromString(reactor, f"tcp:{port_number}:interface=127.0.0.1").listen(
        Factory.forProtocol(Silent)
    )
    pool = AmpPool(reactor, connect_timeout=5, call_timeout=5)
    try:
        call = pool.call(f"tls:127.0.0.1:{port_number}", Echo, value="never")
        await wait_for(lambda: accepted, timeout=5, what="the peer to accept")
        await pool.close()
        with pytest.raises(RpcUnavailable, match="closed"):
            await call
        await wait_for(
            lambda: not accepted[0].transport.connected,  # type: ignore[union-attr]
            timeout=5,
            what="the half-made connection to close",
        )
    finally:
        await port.stopListening()


# --- reglog's answer and the SDK's connect step ------------------------------------------


def test_reglog_reads_the_transport_from_the_client_address() -> None:
    from pigeonpush.discovery.interface import SERVERS, Node
    from pigeonpush.reglog.balancer import push_server_from_node

    data = {"client": "tls:push.example:7100", "connections": 0, "capacity": 1}
    server = push_server_from_node(Node(SERVERS, "n1", data))
    assert (server.client, server.transport) == ("push.example:7100", TLS)
    plain = push_server_from_node(Node(SERVERS, "n2", {**data, "client": "push.example:7100"}))
    assert (plain.client, plain.transport) == ("push.example:7100", TCP)


@pytest.mark.parametrize(
    ("body", "transport", "address"),
    [
        ({"token": "t", "server": "h:1"}, TCP, "h:1"),  # an older reglog
        ({"token": "t", "server": "h:1", "transport": "tcp"}, TCP, "h:1"),
        ({"token": "t", "server": "h:1", "transport": "tls"}, TLS, "tls:h:1"),
        ({"token": "t", "server": "[::1]:7100", "transport": "tls"}, TLS, "tls:[::1]:7100"),
    ],
)
def test_the_route_answer_carries_the_transport(
    body: dict[str, Any], transport: str, address: str
) -> None:
    from pigeonpush.sdk.route import parse_route

    route = parse_route(body)
    assert (route.transport, route.address) == (transport, address)


@pytest.mark.parametrize("transport", ["ssl", "TLS", "", None, 1])
def test_an_unknown_transport_is_refused(transport: Any) -> None:
    from pigeonpush.sdk.route import parse_route

    with pytest.raises(ValueError, match="transport must be one of tcp, tls"):
        parse_route({"token": "t", "server": "h:1", "transport": transport})


def _client_on(reactor: Any, route: Any, **options: Any) -> Any:
    from twisted.internet.defer import succeed

    from pigeonpush.sdk import PushClient

    return PushClient(
        reactor,
        "http://reglog.invalid",
        lambda message: None,
        client_id="device-1",
        route_source=lambda: succeed(route),
        connect_timeout=3.0,
        **options,
    )


def test_the_sdk_connects_with_tls_when_reglog_says_so(tmp_path: Path) -> None:
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from pigeonpush.sdk import Route
    from support.reactors import MemoryReactorClock

    authority = CertificateAuthority.create(tmp_path)
    for transport, wrapped in ((TLS, True), (TCP, False)):
        reactor = MemoryReactorClock()
        route = Route("t", "push.example:7100", transport=transport)
        client = _client_on(reactor, route, ca_file=str(authority.ca_file))
        client.start()
        (_host, port, factory, timeout, _bind) = reactor.tcpClients[0]
        assert (port, timeout) == (7100, 3.0)
        assert isinstance(factory._wrappedFactory, TLSMemoryBIOFactory) is wrapped, transport
        client.stop()


def test_the_sdk_checks_its_tls_options_at_once(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from pigeonpush.sdk import Route

    route = Route("t", "h:1", transport=TLS)
    with pytest.raises(ValueError, match="cannot read ca_file"):
        _client_on(Clock(), route, ca_file=str(tmp_path / "missing.pem"))
    authority = CertificateAuthority.create(tmp_path)
    with pytest.raises(ValueError, match="either ca_file or insecure"):
        _client_on(Clock(), route, ca_file=str(authority.ca_file), insecure=True)


def test_insecure_says_so_loudly() -> None:
    from twisted.logger import LogLevel, globalLogPublisher

    from pigeonpush.sdk import Route
    from support.reactors import MemoryReactorClock

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor = MemoryReactorClock()
        client = _client_on(reactor, Route("t", "h:1", transport=TLS), insecure=True)
        client.start()
        client.stop()
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if e["log_level"] is LogLevel.warn]
    assert any("NOT verify" in e["log_format"] for e in warnings)
    assert any("WITHOUT verifying" in e["log_format"] for e in warnings)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--ca-file", "/nonexistent/ca.pem"], "cannot read ca_file '/nonexistent/ca.pem'"),
        (["--ca-file", __file__, "--insecure"], "either ca_file or insecure"),
    ],
)
def test_cli_listen_refuses_bad_tls_options_with_exit_2(arguments: list[str], message: str) -> None:
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pigeonpush.cli", "listen", "--reglog", "http://127.0.0.1:9",
         "--client-id", "cli-1", *arguments],
        capture_output=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr.decode()
    if "--insecure" in arguments:
        assert "WARNING: --insecure" in done.stderr.decode()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_never_completes_the_handshake_times_out() -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Protocol

    accepted: list[Protocol] = []

    class Silent(Protocol):
        def connectionMade(self) -> None:
            accepted.append(self)

    port_number = free_port()
    port = await serverFromString(reactor, f"tcp:{port_number}:interface=127.0.0.1").listen(
        Factory.forProtocol(Silent)
    )
    pool = AmpPool(reactor, connect_timeout=0.5, call_timeout=5)
    try:
        with pytest.raises(RpcUnavailable, match=r"no TLS connection within 0\.5s"):
            await pool.call(f"tls:127.0.0.1:{port_number}", Echo, value="never")
        assert pool.connected_addresses() == []
        await wait_for(
            lambda: not accepted[0].transport.connected,  # type: ignore[union-attr]
            timeout=5,
            what="the half-made connection to close",
        )
    finally:
        await pool.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_insecure_accepts_any_certificate(
    tls_peer: tuple[CertificateAuthority, str],
) -> None:
    """For tests only: no authority, no name check, and a warning each time."""
    from twisted.internet import reactor
    from twisted.logger import LogLevel, globalLogPublisher

    _authority, address = tls_peer
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    pool = AmpPool(reactor, connect_timeout=5, call_timeout=5, tls=ClientTLS(insecure=True))
    try:
        assert await pool.call(address, Echo, value="unchecked") == {"value": "unchecked"}
    finally:
        await pool.close()
        globalLogPublisher.removeObserver(events.append)
    assert any(
        e["log_level"] is LogLevel.warn and "WITHOUT verifying" in e["log_format"] for e in events
    )
