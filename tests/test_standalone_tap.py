"""pigeon-standalone's options and the service tree it wires, without sockets.

The whole process runs here on a ``MemoryReactorClock``: HTTP requests are
raw bytes fed to the listening factories, a device is a ``ServerProtocol``
on a ``StringTransport``. ``test_e2e_standalone.py`` runs the real thing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python import usage

from pigeonpush.delivery.service import DeliveryWorker, LagGauge
from pigeonpush.discovery.service import DiscoveryService
from pigeonpush.notification.auth import key_problem
from pigeonpush.reglog.routing import AuthMode
from pigeonpush.reglog.service import ServerWatchService
from pigeonpush.server.service import PushServerService
from pigeonpush.server.settings import ServerSettings
from pigeonpush.services import GcTuning, Listener
from pigeonpush.standalone.tap import Announcement, Options, makeService
from pigeonpush.store.memory import MemoryStore
from pigeonpush.store.redis import RedisStore
from pigeonpush.wire.frames import Ack, Auth, AuthFail, AuthOk, Kick, KickReason, Push
from support.reactors import MemoryReactorClock
from support.server_harness import Device, DeviceTransport

KEY = "application-key-0123456789"
PORTS = {"listen": 7300, "rpc": 7301, "reglog": 7302, "api": 7303}


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def on_ports(*argv: str) -> Options:
    """Options with every endpoint on a port of ``PORTS`` (loopback, as by default)."""
    endpoints = [f"--{name}=tcp:{port}:interface=127.0.0.1" for name, port in PORTS.items()]
    return parse(*endpoints, *argv)


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def announcements(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == "pigeonpush.standalone.tap"]


# --- options ---------------------------------------------------------------------------


def test_defaults_bind_every_part_to_loopback_over_a_memory_store() -> None:
    options = parse()
    assert options["listen"] == "tcp:7100:interface=127.0.0.1"
    assert options["rpc"] == "tcp:7101:interface=127.0.0.1"
    assert options["reglog"] == "tcp:8100:interface=127.0.0.1"
    assert options["api"] == "tcp:8200:interface=127.0.0.1"
    assert options["redis"] == "memory:"
    assert options["advertise"] is None
    assert options["api-keys-file"] is None
    assert options["admin-key"] is None
    assert (options["heartbeat"], options["token-ttl"], options["drain-period"]) == (
        "30",
        "300",
        "5",
    )
    assert options["auth-mode"] == "open"
    # The parts get the same endpoints and store, and static discovery: no
    # ZooKeeper, no Redis and no public port is needed for a first run.
    assert options.server["listen"] == options["listen"]
    assert options.server["rpc"] == options["rpc"]
    assert options.server["metrics"] == "none"
    assert options.reglog["listen"] == options["reglog"]
    assert options.notification["listen"] == options["api"]
    for part in (options.server, options.reglog, options.notification):
        assert part["redis"] == "memory:"
    for part in (options.server, options.reglog):
        assert part["zookeeper"] == "static:"
    assert options.server.settings == ServerSettings(heartbeat=30, idle_timeout=90, drain_period=5)


def test_help_lists_every_option() -> None:
    text = str(Options())
    for name in (
        "listen",
        "rpc",
        "reglog",
        "api",
        "advertise",
        "redis",
        "api-key",
        "api-keys-file",
        "heartbeat",
        "token-ttl",
        "auth-mode",
        "admin-key",
        "drain-period",
        "websocket",
        "websocket-origin",
        "uplink-webhook",
        "uplink-webhook-secret",
        "uplink-webhook-secret-file",
    ):
        assert f"--{name}" in text, name


def test_websocket_is_off_by_default_and_the_demo_page_on() -> None:
    options = parse()
    assert options["websocket"] is None and options.server["websocket"] is None
    assert options.reglog["demo"]


def test_websocket_allows_loopback_pages_unless_origins_are_given() -> None:
    options = parse("--websocket=tcp:7103:interface=127.0.0.1")
    assert options.server["websocket"] == "tcp:7103:interface=127.0.0.1"
    origins = options.server.websocket_origins
    assert origins.allows("http://127.0.0.1:8100") and origins.allows(None)
    assert not origins.allows("https://app.example")
    options = parse("--websocket=tcp:7103", "--websocket-origin=https://app.example")
    origins = options.server.websocket_origins
    assert origins.allows("https://app.example")
    assert not origins.allows("http://127.0.0.1:8100")
    with pytest.raises(usage.UsageError, match="--websocket-origin must be"):
        parse("--websocket=tcp:7103", "--websocket-origin=app.example")


def test_the_webhook_options_reach_the_notification_part() -> None:
    options = parse(
        "--uplink-webhook", "http://127.0.0.1:9/hook",
        "--uplink-webhook-secret", "webhook-secret-0123456789",
    )  # fmt: skip
    assert options.notification["webhook"].url == "http://127.0.0.1:9/hook"
    assert parse().notification["webhook"] is None


def test_a_key_is_generated_when_none_is_given() -> None:
    first, second = parse(), parse()
    assert first.generated_key is not None and second.generated_key is not None
    assert key_problem(first.generated_key) is None
    assert len(first.generated_key) >= 32
    assert first.generated_key != second.generated_key
    assert first.notification["keys"] == [first.generated_key]


def test_no_key_is_generated_when_one_is_given(tmp_path: Path) -> None:
    given = parse(f"--api-key={KEY}", "--api-key=second-key-0123456789")
    assert given.generated_key is None
    assert given.notification["keys"] == [KEY, "second-key-0123456789"]

    key_file = tmp_path / "keys"
    key_file.write_text(f"# application servers\n{KEY}\n")
    from_file = parse(f"--api-keys-file={key_file}")
    assert from_file.generated_key is None
    assert from_file.notification["keys"] == [KEY]


def test_the_parts_carry_the_options_through(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("key-from-the-file-0123\n")
    options = parse(
        "--listen=tcp:7400",
        "--rpc=tcp:7401:interface=10.0.0.5",
        "--reglog=tcp:8400",
        "--api=tcp:8401",
        "--advertise=push.example.org:7400",
        "--redis=redis://127.0.0.1:6390/2",
        f"--api-key={KEY}",
        f"--api-keys-file={key_file}",
        "--heartbeat=12",
        "--token-ttl=45",
        "--auth-mode=registered",
        "--admin-key=admin-key-0123456789",
        "--drain-period=0.5",
    )
    server, reglog, notification = options.server, options.reglog, options.notification
    assert (server["listen"], server["rpc"]) == ("tcp:7400", "tcp:7401:interface=10.0.0.5")
    assert server["advertise"] == "push.example.org:7400"
    # A quiet client is dropped after three missed heartbeats, whatever --heartbeat.
    assert server.settings == ServerSettings(heartbeat=12, idle_timeout=36, drain_period=0.5)
    assert reglog["listen"] == "tcp:8400"
    assert (reglog["heartbeat"], reglog["token-ttl"]) == (12.0, 45.0)
    assert reglog["auth-mode"] is AuthMode.REGISTERED
    assert reglog["admin-key"] == "admin-key-0123456789"
    assert notification["listen"] == "tcp:8401"
    assert notification["keys"] == [KEY, "key-from-the-file-0123"]
    for part in (server, reglog, notification):
        assert part["redis"] == "redis://127.0.0.1:6390/2"


def test_a_long_heartbeat_is_usable() -> None:
    """The push server's idle timeout follows --heartbeat, which the
    all-in-one process has no separate option for."""
    options = parse("--heartbeat=120")
    assert options.server.settings.heartbeat == 120
    assert options.server.settings.idle_timeout == 360
    assert options.reglog["heartbeat"] == 120


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen=tcp:device"], "--listen must be a server endpoint such as tcp:7100"),
        (["--rpc=tcp"], "--rpc must be a server endpoint"),
        (["--reglog=tcp:nope"], "--reglog must be a server endpoint"),
        (["--api=carrier-pigeon:8200"], "--api must be a server endpoint"),
        (["--advertise=localhost"], "--advertise must be host:port, not 'localhost'"),
        (["--advertise=push.example.org:0"], "--advertise must be host:port"),
        (["--redis=mysql://localhost"], "--redis: bad store URL"),
        (["--redis=redis://127.0.0.1:99999/0"], "--redis: bad store URL"),
        (["--heartbeat=often"], "--heartbeat must be a number of seconds, not 'often'"),
        (["--heartbeat=0"], "--heartbeat must be a positive number of seconds"),
        (["--heartbeat=inf"], "--heartbeat must be a positive number of seconds"),
        (["--token-ttl=-1"], "--token-ttl must be a positive number of seconds"),
        (["--auth-mode=closed"], "--auth-mode must be open or registered, not 'closed'"),
        (["--drain-period=-1"], "--drain-period must be zero or a positive number"),
        (["--drain-period=soon"], "--drain-period must be a number of seconds"),
        (["--api-key=short"], "--api-key: an API key must have at least 16 characters"),
        (["--api-key=with space 0123456789"], "--api-key: an API key must be printable ASCII"),
        (["--api-keys-file=/nonexistent/keys"], "--api-keys-file: cannot read the API key file"),
        (["--auth-mode=registered", "--admin-key="], "--admin-key must not be empty"),
        (["--receipt-retention=-5"], "--receipt-retention must be 0 or more seconds"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError) as error:
        parse(*argv)
    assert message in str(error.value)


def test_a_bad_key_in_the_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("tooshort\n")
    with pytest.raises(usage.UsageError) as error:
        parse(f"--api-keys-file={key_file}")
    assert "--api-keys-file: an API key must have at least 16 characters" in str(error.value)
    assert "tooshort" not in str(error.value)


def test_an_empty_key_file_is_refused_rather_than_replaced(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# nothing yet\n")
    with pytest.raises(usage.UsageError) as error:
        parse(f"--api-keys-file={key_file}")
    assert "no API key: give --api-key or --api-keys-file" in str(error.value)


# --- the service tree ------------------------------------------------------------------


def test_the_service_tree_holds_every_part_in_start_order() -> None:
    reactor = MemoryReactorClock()
    top = makeService(on_ports(), reactor)
    parts = list(top)
    # The HTTP listeners are Listeners that pause at their cap.
    kinds = [Listener if isinstance(part, Listener) else type(part) for part in parts]
    assert kinds == [
        DiscoveryService,
        PushServerService,
        DeliveryWorker,
        ServerWatchService,
        Listener,
        Listener,
        LagGauge,
        Announcement,
        GcTuning,
    ]
    server, worker = parts[1], parts[2]
    assert isinstance(server, PushServerService) and isinstance(worker, DeliveryWorker)
    # One store for every part; the server pulls from delivery in process and
    # has no AMP pull client of its own.
    assert isinstance(server.hub.store, MemoryStore)
    assert worker.router._store is server.hub.store  # type: ignore[attr-defined]
    assert server.hub.pull_source is worker.pull_source
    assert server.pull_source is None
    assert reactor.tcpServers == []  # nothing listens before the tree starts


def test_redis_url_gives_one_redis_store() -> None:
    top = makeService(on_ports("--redis=redis://127.0.0.1:6390/0"), MemoryReactorClock())
    server = list(top)[1]
    assert isinstance(server, PushServerService)
    assert isinstance(server.hub.store, RedisStore)


class BusyPortReactor(MemoryReactorClock):
    """A memory reactor on which one port is taken by another process."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy = busy

    def listenTCP(self, port: int, factory: Factory, backlog: int = 50, interface: str = "") -> Any:
        if port == self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


@pytest.mark.parametrize("name", ["listen", "rpc", "reglog", "api"])
def test_a_busy_port_fails_the_start(name: str, capfd: pytest.CaptureFixture[str]) -> None:
    """twistd ends with one line and status 1 instead of running without one
    of its parts."""
    reactor = BusyPortReactor(PORTS[name])
    top = makeService(on_ports(), reactor)
    with pytest.raises(SystemExit) as exited:
        top.privilegedStartService()
    assert exited.value.code == 1
    # (the log's critical line reaches stderr too, here where nothing captures the log)
    (line,) = [line for line in capfd.readouterr().err.splitlines() if line.startswith("pigeon-")]
    assert line.startswith("pigeon-standalone: Couldn't listen on ")
    assert line.endswith(f":{PORTS[name]}: [Errno 98] Address already in use.")


# --- the whole process in memory -------------------------------------------------------


class Http:
    """HTTP/1.0 requests as bytes into a listening site's factory."""

    def __init__(self, reactor: MemoryReactorClock, factory: Factory) -> None:
        self._reactor = reactor
        self._factory = factory

    def request(
        self, method: str, path: str, body: Any = None, key: str | None = None
    ) -> tuple[int, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.0", f"Content-Length: {len(payload)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        if key is not None:
            lines.append(f"Authorization: Bearer {key}")
        channel = self._factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived("\r\n".join(lines).encode() + b"\r\n\r\n" + payload)
        self._reactor.advance(0)
        head, _, content = transport.value().partition(b"\r\n\r\n")
        assert head, f"no answer to {method} {path}"
        status = int(head.split(b" ")[1])
        return status, json.loads(content)


def listening(reactor: MemoryReactorClock) -> dict[int, tuple[Factory, str]]:
    """port -> (factory, interface) of everything the tree listens on."""
    return {entry[0]: (entry[1], entry[3]) for entry in reactor.tcpServers}


def advance_until(reactor: MemoryReactorClock, condition: Any, seconds: float) -> Any:
    """Advance the clock in small steps until ``condition()`` is truthy."""
    for _ in range(int(seconds / 0.1)):
        value = condition()
        if value:
            return value
        reactor.advance(0.1)
    raise AssertionError(f"no {condition} within {seconds} simulated seconds")


def start(top: IService, reactor: MemoryReactorClock) -> None:
    top.privilegedStartService()
    top.startService()
    reactor.advance(0)


def test_start_serve_and_stop_in_memory(log_events: list[LogEvent]) -> None:
    """A device routed by reglog gets a notification the API accepted,
    delivered in process; its ACK shows in the receipt; a stop KICKs it."""
    reactor = MemoryReactorClock()
    options = on_ports()
    top = makeService(options, reactor)
    start(top, reactor)

    ports = listening(reactor)
    assert sorted(ports) == sorted(PORTS.values())
    assert {interface for _factory, interface in ports.values()} == {"127.0.0.1"}
    server = list(top)[1]
    assert isinstance(server, PushServerService)
    assert server.phase == "serving"

    reglog = Http(reactor, ports[PORTS["reglog"]][0])
    api = Http(reactor, ports[PORTS["api"]][0])
    assert reglog.request("GET", "/health")[1]["servers"] == 1
    status, route = reglog.request("POST", "/v1/route", {"clientId": "demo"})
    assert status == 200, route
    assert route["server"] == f"127.0.0.1:{PORTS['listen']}"
    assert route["heartbeat"] == 30

    proto = ports[PORTS["listen"]][0].buildProtocol(None)
    device = Device(proto, DeviceTransport())
    proto.makeConnection(device.transport)
    device.send(Auth("demo", route["token"]))
    [auth_ok] = device.received()
    assert isinstance(auth_ok, AuthOk)

    assert options.generated_key is not None
    body = {"to": ["demo"], "title": "Hello", "text": "It works"}
    assert api.request("POST", "/v1/notifications", body, key="wrong-key-0123456789")[0] == 401
    status, accepted = api.request("POST", "/v1/notifications", body, key=options.generated_key)
    assert status == 202, accepted
    message_id = accepted["messageId"]

    reactor.advance(1.0)  # the consume loop's read
    assert device.received() == [Push(message_id, "Hello", "It works", {})]
    # In process: delivery opened no AMP connection to the server's RPC port.
    assert reactor.tcpClients == []

    device.send(Ack(message_id))
    reactor.advance(0)
    status, receipt = api.request(
        "GET", f"/v1/notifications/{message_id}", key=options.generated_key
    )
    assert status == 200
    assert (receipt["acked"], receipt["pending"]) == (1, [])

    # Stopped in reverse: the APIs, then delivery (its read in hand), then the
    # server, which KICKs its clients.
    stopping = top.stopService()
    frames = advance_until(reactor, device.received, 5.0)
    assert len(frames) == 1
    assert isinstance(frames[0], Kick) and frames[0].reason is KickReason.SHUTTING_DOWN
    assert device.closing
    assert not stopping.called
    device.lose()
    reactor.advance(0)
    assert stopping.called
    assert server.phase == "stopped"

    said = announcements(log_events)
    assert len(said) == 2
    where, key = said
    assert where["listen"] == options["listen"]
    assert where["reglog"] == options["reglog"]
    assert where["api"] == options["api"]
    assert where["store"] == "memory"
    assert key["key"] == options.generated_key
    assert options.generated_key in key["log_format"].format(**key)


def test_a_kick_through_the_api_disconnects_the_device_in_process() -> None:
    """DELETE /v1/devices/{clientId}/session reaches the process's own push
    server without AMP: the device gets KICK (POLICY), and its token no
    longer authenticates."""
    reactor = MemoryReactorClock()
    top = makeService(on_ports(f"--api-key={KEY}"), reactor)
    start(top, reactor)
    ports = listening(reactor)
    reglog = Http(reactor, ports[PORTS["reglog"]][0])
    api = Http(reactor, ports[PORTS["api"]][0])
    _status, route = reglog.request("POST", "/v1/route", {"clientId": "demo"})

    def connect() -> Device:
        proto = ports[PORTS["listen"]][0].buildProtocol(None)
        device = Device(proto, DeviceTransport())
        proto.makeConnection(device.transport)
        device.send(Auth("demo", route["token"]))
        reactor.advance(0)
        return device

    device = connect()
    assert isinstance(device.received()[0], AuthOk)

    status, answer = api.request("DELETE", "/v1/devices/demo/session", key=KEY)

    assert (status, answer) == (200, {"clientId": "demo", "disconnected": True})
    [kick] = device.received()
    assert isinstance(kick, Kick) and kick.reason is KickReason.POLICY
    assert device.closing
    assert reactor.tcpClients == []  # in process: no AMP connection
    device.lose()
    reactor.advance(0)
    again = connect()
    [refused] = again.received()
    assert isinstance(refused, AuthFail)
    again.lose()
    status, answer = api.request("DELETE", "/v1/devices/demo/session", key=KEY)
    assert (status, answer) == (200, {"clientId": "demo", "disconnected": False})
    stopping = top.stopService()
    reactor.advance(10)
    assert stopping.called


def test_a_given_key_is_never_logged(log_events: list[LogEvent]) -> None:
    reactor = MemoryReactorClock()
    top = makeService(on_ports(f"--api-key={KEY}", "--redis=memory://"), reactor)
    start(top, reactor)
    [where] = announcements(log_events)
    assert where["store"] == "memory"
    assert "key" not in where
    assert not [e for e in log_events if KEY in repr(e)]
    stopping = top.stopService()
    reactor.advance(15.0)
    assert stopping.called


def test_the_announcement_names_a_redis_store(log_events: list[LogEvent]) -> None:
    options = on_ports(f"--api-key={KEY}", "--redis=redis://127.0.0.1:6390/0")
    Announcement(options).startService()
    [where] = announcements(log_events)
    assert where["store"] == "Redis"
