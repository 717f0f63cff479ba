"""pigeon-server's options (defaults, bad values) and the service tree it wires."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.python import usage

from pigeonpush.server.service import PushServerService
from pigeonpush.server.settings import ServerSettings
from pigeonpush.server.tap import Options, makeService
from pigeonpush.server.uplink import UplinkSettings
from pigeonpush.services import GcTuning, Listener
from support.reactors import MemoryReactorClock


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_defaults() -> None:
    options = parse()
    assert options["listen"] == "tcp:7100"
    assert options["rpc"] == "tcp:7101:interface=127.0.0.1"
    assert options["metrics"] == "tcp:7102:interface=127.0.0.1"
    assert options["redis"] == "redis://127.0.0.1:6379/0"
    assert options["zookeeper"] == "127.0.0.1:2181"
    assert options["advertise"] is None
    assert options["rpc-advertise"] is None
    assert options["node-id"] is None
    assert options.settings == ServerSettings(
        auth_timeout=10,
        idle_timeout=90,
        heartbeat=30,
        max_frame=8192,
        ack_window=32,
        capacity=19000,
        session_ttl=86400,
        drain_period=10,
        ack_timeout=60,
        max_attempts=5,
    )


def test_every_option_is_documented_with_a_default() -> None:
    text = str(Options())
    for name in (
        "listen",
        "rpc",
        "advertise",
        "rpc-advertise",
        "rpc-ca-file",
        "redis",
        "zookeeper",
        "zookeeper-timeout",
        "node-id",
        "auth-timeout",
        "idle-timeout",
        "heartbeat",
        "max-frame",
        "ack-window",
        "ack-timeout",
        "max-attempts",
        "capacity",
        "drain-period",
        "session-ttl",
        "frame-rate",
        "frame-burst",
        "frame-abuse-time",
        "uplink-rate",
        "uplink-dedup-window",
        "uplink-max-len",
        "metrics",
        "log-format",
        "websocket",
        "websocket-advertise",
        "device-topics",
        "max-topics-per-device",
    ):
        assert f"--{name}=" in text
    assert "--websocket-origin=" in text
    assert text.count("[default:") == 31


def test_values_are_parsed() -> None:
    options = parse(
        "--listen=tcp:0",
        "--rpc=tcp:0:interface=127.0.0.1",
        "--advertise=push1.example.org:7100",
        "--rpc-advertise=10.0.0.5:7101",
        "--redis=memory:",
        "--zookeeper=static:",
        "--node-id=push-1",
        "--auth-timeout=2.5",
        "--idle-timeout=40",
        "--heartbeat=15",
        "--max-frame=4096",
        "--ack-window=8",
        "--ack-timeout=20",
        "--max-attempts=3",
        "--capacity=100",
        "--drain-period=0",
        "--session-ttl=600",
        "--metrics=none",
        "--uplink-rate=10/2.5",
        "--uplink-dedup-window=60",
        "--uplink-max-len=500",
    )
    assert options.settings == ServerSettings(2.5, 40, 15, 4096, 8, 100, 600, 0, 20, 3)
    assert options.uplink_settings == UplinkSettings(2.5, 10, 60, 500)
    assert parse().uplink_settings == UplinkSettings(5.0, 20, 3600.0, 100_000)
    assert options["node-id"] == "push-1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--auth-timeout=soon"], "--auth-timeout must be a number of seconds, not 'soon'"),
        (["--auth-timeout=0"], "--auth-timeout must be a positive number of seconds"),
        (["--idle-timeout=-1"], "--idle-timeout must be a positive number of seconds"),
        (["--heartbeat=nan"], "--heartbeat must be a positive number of seconds"),
        (["--session-ttl=inf"], "--session-ttl must be a positive number of seconds"),
        (["--heartbeat=90"], "--heartbeat (90 s) must be shorter than --idle-timeout (90 s)"),
        (["--max-frame=512"], "--max-frame must be 1024 to 16777216 bytes, not 512"),
        (["--max-frame=8k"], "--max-frame must be a whole number, not '8k'"),
        (["--ack-window=0"], "--ack-window must be 1 to 65535, not 0"),
        (["--capacity=0"], "--capacity must be at least 1, not 0"),
        (["--ack-timeout=0"], "--ack-timeout must be a positive number of seconds"),
        (["--ack-timeout=later"], "--ack-timeout must be a number of seconds, not 'later'"),
        (["--max-attempts=0"], "--max-attempts must be 1 to 1000, not 0"),
        (["--max-attempts=2.5"], "--max-attempts must be a whole number, not '2.5'"),
        (["--drain-period=-5"], "--drain-period must be zero or a positive number"),
        (
            ["--redis=redis://127.0.0.1:6379/0?timeout=10"],
            "--redis: the store timeout (10 s, ?timeout=) must be shorter than "
            "--auth-timeout (10 s)",
        ),
        (
            ["--auth-timeout=2"],
            "--redis: the store timeout (3 s, ?timeout=) must be shorter than --auth-timeout",
        ),
        (["--frame-rate=0"], "--frame-rate must be a positive number of frames per second"),
        (["--frame-rate=inf"], "--frame-rate must be a positive number of frames per second"),
        (["--frame-rate=fast"], "--frame-rate must be a number, not 'fast'"),
        (["--frame-burst=0"], "--frame-burst must be at least 1, not 0"),
        (["--frame-abuse-time=0"], "--frame-abuse-time must be a positive number of seconds"),
        (["--uplink-rate=lots"], "--uplink-rate must be BURST/RATE (e.g. 20/5) or RATE"),
        (["--uplink-rate=0/5"], "--uplink-rate's burst must be at least 1, not 0"),
        (["--uplink-dedup-window=0"], "--uplink-dedup-window must be a positive number"),
        (["--uplink-max-len=0"], "--uplink-max-len must be at least 1, not 0"),
        (["--listen=tcp:notaport"], "--listen must be a server endpoint such as tcp:7100"),
        (["--rpc=carrier-pigeon:7101"], "--rpc must be a server endpoint"),
        (["--metrics=tcp"], "--metrics must be a server endpoint"),
        (["--advertise=localhost"], "--advertise must be host:port, not 'localhost'"),
        (["--rpc-advertise=10.0.0.1:0"], "--rpc-advertise must be host:port"),
        (["--node-id=a/b"], "--node-id: node id 'a/b' must not contain '/'"),
        (["--redis=mysql://localhost"], "--redis: bad store URL"),
        (["--zookeeper="], "--zookeeper: discovery spec is empty"),
        (["--websocket=tcp:notaport"], "--websocket must be a server endpoint"),
        (
            ["--websocket=tcp:7103", "--websocket-origin=app.example"],
            "--websocket-origin must be '*' or an origin such as https://app.example.com",
        ),
        (["--websocket-origin=https://app.example"], "need --websocket"),
        (["--websocket=tcp:7103", "--websocket-advertise=x"], "--websocket-advertise must be"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError) as error:
        parse(*argv)
    assert message in str(error.value)


def test_make_service_wires_the_server_and_the_status_endpoint() -> None:
    reactor = MemoryReactorClock()
    top = makeService(parse("--redis=memory:", "--zookeeper=static:"), reactor)
    services = list(top)
    assert isinstance(services[0], PushServerService)
    assert isinstance(services[1], Listener)
    server = services[0]
    assert server.hub.settings == ServerSettings()
    assert server.pull_source is not None and server.hub.pull_source is server.pull_source
    assert reactor.tcpServers == []  # nothing listens before the service starts


def test_make_service_without_metrics() -> None:
    top = makeService(
        parse("--redis=memory:", "--zookeeper=static:", "--metrics=none"), MemoryReactorClock()
    )
    assert [type(service) for service in top] == [PushServerService, GcTuning]


def test_start_and_stop_in_memory() -> None:
    """Under a memory reactor: listens for RPC, then clients; registers; on stop
    leaves discovery first, then KICKs its clients, then stops."""
    from pigeonpush.discovery import SERVERS
    from pigeonpush.wire.codec import encode
    from pigeonpush.wire.frames import Auth, Kick, KickReason
    from support.server_harness import Device, DeviceTransport, result_of

    reactor = MemoryReactorClock()
    top = makeService(
        parse(
            "--listen=tcp:7300",
            "--rpc=tcp:7301:interface=127.0.0.1",
            "--redis=memory:",
            "--zookeeper=static:",
            "--metrics=none",
            "--drain-period=1",
        ),
        reactor,
    )
    [server, _freeze] = list(top)
    assert isinstance(server, PushServerService)
    top.startService()
    reactor.advance(0)
    assert [port[0] for port in reactor.tcpServers] == [7301, 7300]
    assert server.phase == "serving"
    assert server.node_id == "127.0.0.1:7300"
    assert server.hub.server_address == "127.0.0.1:7301"
    seen: list[dict[str, object]] = []
    server.discovery.watch(SERVERS, lambda nodes: seen.append(dict(nodes)))
    reactor.advance(0)
    assert {node_id: dict(node.data) for node_id, node in seen[-1].items()} == {  # type: ignore[attr-defined]
        "127.0.0.1:7300": {
            "client": "127.0.0.1:7300",
            "rpc": "127.0.0.1:7301",
            "connections": 0,
            "capacity": 19000,
        }
    }
    # A device connects through the client port's factory.
    result_of(server.hub.store.issue_token("alice", "t", 60))
    device = reactor.tcpServers[1][1].buildProtocol(None)
    transport = DeviceTransport()
    device.makeConnection(transport)
    device.dataReceived(encode(Auth("alice", "t")))
    reactor.advance(1.0)  # the load report
    assert seen[-1]["127.0.0.1:7300"].data["connections"] == 1  # type: ignore[attr-defined]
    transport.clear()

    stopping = top.stopService()
    reactor.advance(0)
    assert seen[-1] == {}  # left discovery first
    assert server.phase == "draining"
    [kick] = Device(device, transport).received()
    assert isinstance(kick, Kick) and kick.reason is KickReason.SHUTTING_DOWN
    assert transport.disconnecting
    assert not stopping.called
    Device(device, transport).lose()
    reactor.advance(0)
    assert stopping.called
    assert server.phase == "stopped"


def test_ssl_endpoints_are_advertised_as_tls(tmp_path: Path) -> None:
    """An ``ssl:`` port is published as ``tls:host:port``: in discovery for
    devices (reglog tells them), and as the RPC address ROUTE holds."""
    from pigeonpush.discovery import SERVERS
    from support.certs import CertificateAuthority

    certificate = CertificateAuthority.create(tmp_path / "ca").issue(tmp_path / "server")
    reactor = MemoryReactorClock()
    top = makeService(
        parse(
            f"--listen={certificate.endpoint(7300)}",
            f"--rpc={certificate.endpoint(7301)}",
            "--redis=memory:",
            "--zookeeper=static:",
            "--metrics=none",
        ),
        reactor,
    )
    [server, _freeze] = list(top)
    assert isinstance(server, PushServerService)
    top.startService()
    reactor.advance(0)
    assert [port[0] for port in reactor.sslServers] == [7301, 7300]
    assert server.node_id == "127.0.0.1:7300"  # the node id has no transport
    assert server.hub.server_address == "tls:127.0.0.1:7301"
    seen: list[dict[str, Any]] = []
    server.discovery.watch(SERVERS, lambda nodes: seen.append(dict(nodes)))
    reactor.advance(0)
    data = seen[-1]["127.0.0.1:7300"].data
    assert (data["client"], data["rpc"]) == ("tls:127.0.0.1:7300", "tls:127.0.0.1:7301")
    stopping = top.stopService()
    reactor.advance(2)
    assert stopping.called


def test_advertise_overrides_the_derived_transport() -> None:
    """A TLS-terminating proxy in front of a plain port: ``--advertise`` says so."""
    reactor = MemoryReactorClock()
    top = makeService(
        parse(
            "--listen=tcp:7300",
            "--advertise=tls:push.example:443",
            "--rpc-advertise=10.0.0.5:7301",
            "--redis=memory:",
            "--zookeeper=static:",
            "--metrics=none",
        ),
        reactor,
    )
    [server, _freeze] = list(top)
    assert isinstance(server, PushServerService)
    top.startService()
    reactor.advance(0)
    assert server.node_id == "push.example:443"
    assert server.advertise == "tls:push.example:443"
    assert server.hub.server_address == "10.0.0.5:7301"
    stopping = top.stopService()
    reactor.advance(2)
    assert stopping.called


def test_websocket_listens_and_is_published(tmp_path: Path) -> None:
    """``--websocket``: a third port, after the device port, published as
    ``websocket`` (``tls:`` for an ``ssl:`` endpoint: browsers use wss:)."""
    from pigeonpush.discovery import SERVERS
    from pigeonpush.server.websocket import WebSocketFactory
    from support.certs import CertificateAuthority

    certificate = CertificateAuthority.create(tmp_path / "ca").issue(tmp_path / "server")
    for endpoint, published in (
        ("tcp:7303", "127.0.0.1:7303"),
        (certificate.endpoint(7303), "tls:127.0.0.1:7303"),
    ):
        reactor = MemoryReactorClock()
        options = parse(
            "--listen=tcp:7300",
            f"--websocket={endpoint}",
            "--websocket-origin=https://app.example",
            "--redis=memory:",
            "--zookeeper=static:",
            "--metrics=none",
        )
        top = makeService(options, reactor)
        [server, _freeze] = list(top)
        assert isinstance(server, PushServerService)
        top.startService()
        reactor.advance(0)
        ports = reactor.tcpServers + reactor.sslServers
        [factory] = [port[1] for port in ports if port[0] == 7303]
        assert isinstance(factory, WebSocketFactory)
        assert factory.origins.allows("https://app.example")
        assert not factory.origins.allows("https://other.example")
        seen: list[dict[str, Any]] = []
        server.discovery.watch(SERVERS, lambda nodes, seen=seen: seen.append(dict(nodes)))
        reactor.advance(0)
        assert seen[-1]["127.0.0.1:7300"].data["websocket"] == published
        stopping = top.stopService()
        reactor.advance(2)
        assert stopping.called
        assert server.websocket_port is not None


def test_device_topics_are_patterns_separated_by_commas() -> None:
    options = Options()
    options.parseOptions(["--device-topics", "public.*,news"])
    assert options.settings.device_topics == ("public.*", "news")
    assert options.settings.allows_device_topic("public.sport")
    assert not options.settings.allows_device_topic("private")
    with pytest.raises(usage.UsageError, match="max-topics-per-device"):
        Options().parseOptions(["--max-topics-per-device", "0"])
