"""``twistd pigeon-server``: options and wiring; the logic lives in hub.py.

Every option has a default, so ``twistd -n pigeon-server`` runs against a
local Redis and ZooKeeper. Bad values are refused at parse time with a
message naming the option.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage
from twisted.python.failure import Failure

from pigeonpush.discovery import open_discovery
from pigeonpush.discovery.interface import Discovery
from pigeonpush.options import (
    DEVICE_BACKLOG,
    RPC_CA_FILE_OPTION,
    ZOOKEEPER_TIMEOUT_OPTION,
    DaemonOptions,
    capacity_for,
    check_address,
    check_capacity,
    check_discovery_spec,
    check_endpoint,
    check_node_id,
    check_store_timeout,
    check_store_url,
    client_tls,
    open_files_limit,
    with_backlog,
    zookeeper_timeout,
)
from pigeonpush.rpc import PullSource
from pigeonpush.rpcpool import AmpPool
from pigeonpush.server.hub import PushHub
from pigeonpush.server.pull import AmpPullSource
from pigeonpush.server.service import PushServerService
from pigeonpush.server.settings import ServerSettings
from pigeonpush.server.status import status_site
from pigeonpush.server.uplink import UplinkReceiver, UplinkSettings, parse_rate
from pigeonpush.server.websocket import OriginPolicy, check_origin
from pigeonpush.services import Daemon, GcTuning, listen_or_fail
from pigeonpush.store import Store, open_store
from pigeonpush.tls import listening_transport

LONGDESC = """\
The PigeonPush push server. Devices connect to --listen and authenticate with
the token reglog issued; delivery calls Push and Kick on --rpc. The server
registers in ZooKeeper under /pigeonpush/servers/<node-id> with its client and
RPC addresses, connection count and capacity. SIGTERM stops it gracefully:
it leaves ZooKeeper, stops accepting, KICKs its clients over --drain-period,
then exits. See docs/server.rst.
"""

_DEFAULTS = ServerSettings()
_UPLINK_DEFAULTS = UplinkSettings()


class Options(DaemonOptions):
    synopsis = "[options]"
    longdesc = LONGDESC

    optParameters = [
        [
            "listen",
            None,
            "tcp:7100",
            f"Endpoint for device connections (ssl:PORT:privateKey=...:certKey=... for TLS); "
            f"a tcp, ssl or unix endpoint without backlog= gets backlog={DEVICE_BACKLOG} "
            f"(room for a reconnect storm).",
        ],
        [
            "rpc",
            None,
            "tcp:7101:interface=127.0.0.1",
            "AMP endpoint delivery calls (Push, Kick); ssl:... for TLS.",
        ],
        [
            "advertise",
            None,
            None,
            "host:port devices connect to (tls:host:port for TLS), published in ZooKeeper "
            "[default: 127.0.0.1:<listen port>, tls: when --listen is ssl:].",
        ],
        [
            "rpc-advertise",
            None,
            None,
            "host:port delivery connects to (tls:host:port for TLS), stored in each "
            "client's ROUTE [default: 127.0.0.1:<rpc port>, tls: when --rpc is ssl:].",
        ],
        RPC_CA_FILE_OPTION,
        [
            "redis",
            None,
            "redis://127.0.0.1:6379/0",
            "Shared state: redis://[:password@]host:port/db, or memory: for one process.",
        ],
        [
            "zookeeper",
            None,
            "127.0.0.1:2181",
            "Discovery: ZooKeeper hosts host:port[,host:port...][/chroot], or static:.",
        ],
        ZOOKEEPER_TIMEOUT_OPTION,
        [
            "node-id",
            None,
            None,
            "Name of this server in discovery [default: the advertise address].",
        ],
        [
            "auth-timeout",
            None,
            f"{_DEFAULTS.auth_timeout:g}",
            "Seconds a new connection has to authenticate.",
        ],
        [
            "idle-timeout",
            None,
            f"{_DEFAULTS.idle_timeout:g}",
            "Seconds of silence after which a connection is closed.",
        ],
        [
            "heartbeat",
            None,
            f"{_DEFAULTS.heartbeat:g}",
            "Seconds between client PINGs (sent in AUTH_OK); also the shortest "
            "interval between two pulls for one client.",
        ],
        [
            "max-frame",
            None,
            str(_DEFAULTS.max_frame),
            "Largest frame in bytes, either direction (at least 1024).",
        ],
        [
            "ack-window",
            None,
            str(_DEFAULTS.ack_window),
            "Un-ACKed PUSHes in flight per connection.",
        ],
        [
            "ack-timeout",
            None,
            f"{_DEFAULTS.ack_timeout:g}",
            "Seconds a PUSH may wait for its ACK before it counts as failed and is "
            "written again (with backoff) on the same connection.",
        ],
        [
            "max-attempts",
            None,
            str(_DEFAULTS.max_attempts),
            "Failed deliveries (NACK or ACK timeout, on any connection) after which a "
            "message is dropped for that client as failed.",
        ],
        [
            "capacity",
            None,
            None,
            "Authenticated connections accepted [default: the open-files limit "
            "(ulimit -n) less a reserve; see docs/server.rst]; at most the limit less 64.",
        ],
        [
            "drain-period",
            None,
            f"{_DEFAULTS.drain_period:g}",
            "Seconds over which a stopping server spreads its KICKs.",
        ],
        [
            "session-ttl",
            None,
            f"{_DEFAULTS.session_ttl:g}",
            "Seconds AUTH and ROUTE live while a session is bound (refreshed every third).",
        ],
        [
            "frame-rate",
            None,
            f"{_DEFAULTS.frame_rate:g}",
            "Frames per second a connection may send, sustained (ACKs of PUSHes in "
            "flight are free); over it the server stops reading the connection for a while.",
        ],
        [
            "frame-burst",
            None,
            str(_DEFAULTS.frame_burst),
            "Frames a connection may send at once above --frame-rate.",
        ],
        [
            "frame-abuse-time",
            None,
            f"{_DEFAULTS.frame_abuse_time:g}",
            "Seconds a connection may stay over --frame-rate before it is closed "
            "with ERROR RATE_LIMITED.",
        ],
        [
            "uplink-rate",
            None,
            f"{_UPLINK_DEFAULTS.burst}/{_UPLINK_DEFAULTS.rate:g}",
            "UPLINKs a connection may send: BURST/RATE (bursts of BURST, then RATE per "
            "second) or RATE; over it the connection gets ERROR RATE_LIMITED.",
        ],
        [
            "uplink-dedup-window",
            None,
            f"{_UPLINK_DEFAULTS.dedup_window:g}",
            "Seconds within which a resent uplink (same clientId and uplinkId) is stored once.",
        ],
        [
            "uplink-max-len",
            None,
            str(_UPLINK_DEFAULTS.max_len),
            "About how many uplinks the store keeps (older ones are trimmed).",
        ],
        [
            "websocket",
            None,
            None,
            "Endpoint for device connections over WebSocket (browsers; ssl:... for wss:) "
            "[default: none]; see docs/server.rst.",
        ],
        [
            "websocket-advertise",
            None,
            None,
            "host:port browsers connect to over WebSocket (tls:host:port for wss:), "
            "published in ZooKeeper [default: 127.0.0.1:<websocket port>].",
        ],
        [
            "metrics",
            None,
            "tcp:7102:interface=127.0.0.1",
            "HTTP endpoint for /metrics and /health, or none.",
        ],
        [
            "device-topics",
            None,
            "",
            "Comma-separated shell-style patterns of the topics devices may subscribe "
            "themselves to with SUBSCRIBE (e.g. 'public.*'); none by default.",
        ],
        [
            "max-topics-per-device",
            None,
            str(_DEFAULTS.max_topics_per_device),
            "Most topics one device may be subscribed to.",
        ],
    ]

    settings: ServerSettings
    uplink_settings: UplinkSettings

    def __init__(self) -> None:
        super().__init__()
        self["websocket-origin"] = []
        #: also allow pages from loopback hosts (pigeon-standalone's defaults)
        self.websocket_loopback = False

    def opt_websocket_origin(self, origin: str) -> None:
        """Origin of a web page allowed to open a WebSocket, e.g.
        https://app.example.com (repeatable; * for any). Without it, requests
        from browsers (with an Origin header) are refused."""
        try:
            self["websocket-origin"].append(check_origin("--websocket-origin", origin))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    @property
    def websocket_origins(self) -> OriginPolicy:
        return OriginPolicy.of(self["websocket-origin"], loopback=self.websocket_loopback)

    def postOptions(self) -> None:
        try:
            self.settings = ServerSettings(
                auth_timeout=self._number("auth-timeout", float),
                idle_timeout=self._number("idle-timeout", float),
                heartbeat=self._number("heartbeat", float),
                max_frame=self._number("max-frame", int),
                ack_window=self._number("ack-window", int),
                ack_timeout=self._number("ack-timeout", float),
                max_attempts=self._number("max-attempts", int),
                capacity=self._capacity(),
                drain_period=self._number("drain-period", float),
                session_ttl=self._number("session-ttl", float),
                frame_rate=self._number("frame-rate", float, "a number"),
                frame_burst=self._number("frame-burst", int),
                frame_abuse_time=self._number("frame-abuse-time", float),
                device_topics=tuple(p for p in self["device-topics"].split(",") if p),
                max_topics_per_device=self._number("max-topics-per-device", int),
            ).check()
            burst, rate = parse_rate(self["uplink-rate"])
            self.uplink_settings = UplinkSettings(
                rate=rate,
                burst=burst,
                dedup_window=self._number("uplink-dedup-window", float),
                max_len=self._number("uplink-max-len", int),
            ).check()
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        for name in ("listen", "rpc"):
            check_endpoint(f"--{name}", self[name])
        if self["metrics"] != "none":
            check_endpoint("--metrics", self["metrics"])
        if self["websocket"] is not None:
            check_endpoint("--websocket", self["websocket"])
        elif self["websocket-advertise"] is not None or self["websocket-origin"]:
            raise usage.UsageError("--websocket-advertise and --websocket-origin need --websocket")
        for name in ("advertise", "rpc-advertise", "websocket-advertise"):
            if self[name] is not None:
                check_address(f"--{name}", self[name])
        if self["node-id"] is not None:
            check_node_id("--node-id", self["node-id"])
        check_store_url("--redis", self["redis"])
        # A device waiting on a stopped Redis gets AUTH_FAIL UNAVAILABLE, not
        # ERROR TIMEOUT: the store gives up first.
        check_store_timeout(
            "--redis",
            self["redis"],
            shorter_than=self.settings.auth_timeout,
            what="--auth-timeout",
        )
        check_discovery_spec("--zookeeper", self["zookeeper"])
        self["zookeeper-timeout"] = zookeeper_timeout(self["zookeeper-timeout"])
        #: how tls: delivery addresses are verified (pulls)
        self["rpc-tls"] = client_tls("--rpc-ca-file", self["rpc-ca-file"])

    def _capacity(self) -> int:
        """``--capacity``, or the default the open-files limit allows."""
        limit = open_files_limit()
        if self["capacity"] is None:
            return capacity_for(limit)
        capacity: int = self._number("capacity", int)
        check_capacity("--capacity", capacity, limit)
        return capacity

    def _number(self, name: str, kind: type[float] | type[int], what: str = "") -> Any:
        text = self[name]
        try:
            return kind(text)
        except (TypeError, ValueError):
            what = what or ("a whole number" if kind is int else "a number of seconds")
            raise ValueError(f"--{name} must be {what}, not {text!r}") from None


def makeService(config: Options, reactor: Any = None) -> IService:
    """The service tree: the push server, plus the status endpoint unless
    ``--metrics none``. Only wiring: nothing connects before the service starts."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    store = open_store(config["redis"], reactor)
    discovery = open_discovery(
        config["zookeeper"], reactor, session_timeout=config["zookeeper-timeout"]
    )
    pool = AmpPool(reactor, tls=config["rpc-tls"])
    pull_source = AmpPullSource(pool)
    server = build_push_server(
        config, reactor, store, discovery, pull_source, pool=pool, amp_pull_source=pull_source
    )
    top = Daemon("pigeon-server")
    server.setServiceParent(top)
    if config["metrics"] != "none":
        listen_or_fail(
            serverFromString(reactor, config["metrics"]), status_site(server.hub, server, reactor)
        ).setServiceParent(top)
    GcTuning(reactor).setServiceParent(top)
    return top


def build_push_server(
    config: Options,
    reactor: Any,
    store: Store,
    discovery: Discovery,
    pull_source: PullSource,
    *,
    pool: AmpPool | None = None,
    amp_pull_source: AmpPullSource | None = None,
) -> PushServerService:
    """The hub and its service over a given store and discovery; the
    all-in-one process passes an in-process ``pull_source`` and no pool."""
    uplinks = UplinkReceiver(store, reactor, config.uplink_settings)  # metrics: Prometheus
    hub = PushHub(store, reactor, config.settings, pull_source=pull_source, uplinks=uplinks)

    def start_failed(failure: Failure) -> None:
        # Nothing useful runs without the ports: end the process (twistd logs why).
        reactor.callWhenRunning(_stop_reactor, reactor)

    return PushServerService(
        hub,
        reactor=reactor,
        client_endpoint=serverFromString(reactor, with_backlog(config["listen"])),
        rpc_endpoint=serverFromString(reactor, config["rpc"]),
        discovery=discovery,
        pool=pool,
        pull_source=amp_pull_source,
        advertise=config["advertise"],
        rpc_advertise=config["rpc-advertise"],
        client_transport=listening_transport(config["listen"]),
        rpc_transport=listening_transport(config["rpc"]),
        node_id=config["node-id"],
        on_start_failure=start_failed,
        websocket_endpoint=(
            None
            if config["websocket"] is None
            else serverFromString(reactor, with_backlog(config["websocket"]))
        ),
        websocket_advertise=config["websocket-advertise"],
        websocket_transport=listening_transport(config["websocket"] or "tcp:0"),
        websocket_origins=config.websocket_origins,
    )


def _stop_reactor(reactor: Any) -> None:
    if reactor.running:
        reactor.stop()
