"""``twistd pigeon-standalone``: reglog, notification, delivery and one push
server in one process, on the embedded defaults.

The parts are the same classes the separate plugins run, wired over one
store (memory by default, ``--redis`` to share or persist it) and one static
discovery (the server registers in it and reglog sees it there). Delivery
calls the push server in process instead of over AMP, and the server pulls
from delivery in process. Every endpoint binds to loopback by default.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, Service
from twisted.logger import Logger
from twisted.python import usage

from pigeonpush.delivery.gateway import AmpGateways
from pigeonpush.delivery.service import DeliveryWorker, LagGauge
from pigeonpush.delivery.tap import LAG_INTERVAL
from pigeonpush.discovery.service import DiscoveryService
from pigeonpush.discovery.static import StaticDiscovery
from pigeonpush.notification import tap as notification_tap
from pigeonpush.notification.auth import KeyFileError, key_problem, read_key_file
from pigeonpush.options import (
    HTTP_LIMIT_OPTIONS,
    DaemonOptions,
    check_address,
    check_endpoint,
    check_store_url,
    seconds,
)
from pigeonpush.reglog import tap as reglog_tap
from pigeonpush.rpc import PushGateway
from pigeonpush.rpcpool import AmpPool
from pigeonpush.server import tap as server_tap
from pigeonpush.services import Daemon, GcTuning
from pigeonpush.store import open_store
from pigeonpush.tokens import url_safe_token

log = Logger()

#: The delivery consumer name of the all-in-one process.
CONSUMER = "standalone"
#: The push server drops a connection silent for this many heartbeats (the
#: separate plugin's defaults, 90 s for 30 s), so any --heartbeat is usable.
IDLE_HEARTBEATS = 3


class Options(DaemonOptions):
    synopsis = "[options]"
    longdesc = (
        "Run all of PigeonPush in one process: the route API (reglog), the "
        "notification API, delivery and one push server, on an in-memory store "
        "unless --redis is given. Binds to 127.0.0.1 by default. Without "
        "--api-key or --api-keys-file, an API key is generated and logged at start."
    )
    optParameters = [
        [
            "listen",
            None,
            "tcp:7100:interface=127.0.0.1",
            "Endpoint devices connect to (backlog=4096 unless it gives one).",
        ],
        [
            "rpc",
            None,
            "tcp:7101:interface=127.0.0.1",
            "The push server's AMP endpoint (its address is what ROUTE holds).",
        ],
        [
            "websocket",
            None,
            None,
            "Endpoint browsers connect to over WebSocket, e.g. tcp:7103:interface=127.0.0.1 "
            "[default: none]; the demo page (/demo/ on the route API) needs it.",
        ],
        ["reglog", None, "tcp:8100:interface=127.0.0.1", "Endpoint of the route API."],
        ["api", None, "tcp:8200:interface=127.0.0.1", "Endpoint of the notification API."],
        [
            "advertise",
            None,
            None,
            "host:port devices are told to connect to [default: 127.0.0.1:<listen port>].",
        ],
        ["redis", None, "memory:", "Store URL: memory: (this process only) or redis://..."],
        ["api-keys-file", None, None, "File of API keys, one per line (# comments allowed)."],
        [
            "heartbeat",
            None,
            "30",
            "Seconds between client PINGs when quiet; a client silent for three is dropped.",
        ],
        ["token-ttl", None, "300", "Seconds a token stays valid until its client connects."],
        ["auth-mode", None, "open", "open (any clientId) or registered (devices with a secret)."],
        ["admin-key", None, None, "Bearer key required by POST /v1/devices (registered mode)."],
        ["drain-period", None, "5", "Seconds over which a stop KICKs connected clients."],
        ["uplink-webhook", None, None, "URL to POST each uplink to, signed [default: none]."],
        ["uplink-webhook-secret", None, None, "The webhook's HMAC-SHA256 key (16+ bytes)."],
        ["uplink-webhook-secret-file", None, None, "File whose first line is that key."],
        [
            "device-topics",
            None,
            "",
            "Comma-separated patterns of the topics devices may subscribe themselves to "
            "(e.g. 'public.*'); none by default.",
        ],
        [
            "receipt-retention",
            None,
            "86400",
            "Seconds a receipt stays readable after its message's TTL (1 day; 0: none).",
        ],
        *HTTP_LIMIT_OPTIONS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self["api-key"] = []
        self["websocket-origin"] = []
        self["cors-origin"] = []
        self.generated_key: str | None = None

    def opt_cors_origin(self, origin: str) -> None:
        """Origin of a web page allowed to call the route API from a browser
        (repeatable; * for any); the demo page, served by the route API
        itself, needs none."""
        self["cors-origin"].append(origin)

    def opt_websocket_origin(self, origin: str) -> None:
        """Origin of a web page allowed to open a WebSocket (repeatable; * for
        any). Without it, pages served from a loopback host (such as the demo
        page) are allowed, other browser pages refused."""
        self["websocket-origin"].append(origin)

    def opt_api_key(self, key: str) -> None:
        """An API key for 'Authorization: Bearer <key>' (repeatable; 16+ printable ASCII)."""
        self["api-key"].append(key)

    def postOptions(self) -> None:
        for name in ("listen", "rpc", "reglog", "api"):
            check_endpoint(f"--{name}", self[name])
        if self["advertise"] is not None:
            check_address("--advertise", self["advertise"])
        check_store_url("--redis", self["redis"])
        heartbeat = seconds("--heartbeat", self["heartbeat"])
        self._check_keys()
        if not self["api-key"] and self["api-keys-file"] is None:
            self.generated_key = url_safe_token(24)
            self["api-key"] = [self.generated_key]
        # The parts parse their own options, so defaults and checks are theirs.
        common = ["--redis", self["redis"]]
        server = ["--listen", self["listen"], "--rpc", self["rpc"], "--zookeeper", "static:"]
        server += ["--heartbeat", self["heartbeat"], "--drain-period", self["drain-period"]]
        server += ["--idle-timeout", repr(heartbeat * IDLE_HEARTBEATS)]
        server += ["--metrics", "none", "--device-topics", self["device-topics"], *common]
        if self["advertise"] is not None:
            server += ["--advertise", self["advertise"]]
        if self["websocket"] is not None:
            server += ["--websocket", self["websocket"]]
        for origin in self["websocket-origin"]:
            server += ["--websocket-origin", origin]
        reglog = ["--listen", self["reglog"], "--zookeeper", "static:", *common]
        reglog += ["--heartbeat", self["heartbeat"], "--token-ttl", self["token-ttl"]]
        reglog += ["--auth-mode", self["auth-mode"], "--demo"]
        for origin in self["cors-origin"]:
            reglog += ["--cors-origin", origin]
        http_limits = ["--max-connections", str(self["max-connections"])]
        http_limits += ["--request-timeout", str(self["request-timeout"])]
        reglog += http_limits
        if self["admin-key"] is not None:
            reglog += ["--admin-key", self["admin-key"]]
        notification = ["--listen", self["api"], *common, *http_limits]
        notification += ["--receipt-retention", self["receipt-retention"]]
        for name in ("uplink-webhook", "uplink-webhook-secret", "uplink-webhook-secret-file"):
            if self[name] is not None:
                notification += [f"--{name}", self[name]]
        for key in self["api-key"]:
            notification += ["--api-key", key]
        if self["api-keys-file"] is not None:
            notification += ["--api-keys-file", self["api-keys-file"]]
        self.server = _part(server_tap.Options(), server)
        # The all-in-one process runs on loopback: its own pages (the demo)
        # may connect unless the origins are given.
        self.server.websocket_loopback = not self["websocket-origin"]
        self.reglog = _part(reglog_tap.Options(), reglog)
        self.notification = _part(notification_tap.Options(), notification)

    def _check_keys(self) -> None:
        """The key options' problems, named with this plugin's options (the
        notification part would name none)."""
        keys = [("--api-key", key) for key in self["api-key"]]
        if self["api-keys-file"] is not None:
            try:
                keys += [("--api-keys-file", key) for key in read_key_file(self["api-keys-file"])]
            except KeyFileError as e:
                raise usage.UsageError(f"--api-keys-file: {e}") from None
        for option, key in keys:
            problem = key_problem(key)
            if problem is not None:
                raise usage.UsageError(f"{option}: {problem}")
        if self["admin-key"] is not None and not self["admin-key"]:
            raise usage.UsageError("--admin-key must not be empty")


def _part(options: Any, argv: list[str]) -> Any:
    options.parseOptions(argv)
    return options


class Announcement(Service):
    """Says once, at start, where each part listens and which API key to use."""

    def __init__(self, config: Options) -> None:
        self._config = config

    def startService(self) -> None:
        super().startService()
        config = self._config
        log.info(
            "PigeonPush standalone: devices connect to {listen} (WebSocket: {websocket}), "
            "the route API (reglog) is at {reglog} (demo page: /demo/), the notification "
            "API at {api}, on a {store} store",
            listen=config["listen"],
            websocket=config["websocket"] or "off",
            reglog=config["reglog"],
            api=config["api"],
            store="memory" if config["redis"].startswith("memory") else "Redis",
        )
        if config.generated_key is not None:
            log.info(
                "No API key was given; use this generated one: Authorization: Bearer {key}",
                key=config.generated_key,
            )


def makeService(config: Options, reactor: Any = None) -> IService:
    """Only wiring. Started in order, stopped one part at a time in reverse:
    the HTTP APIs first, then delivery (its batch in hand), then the push
    server, which drains its clients and closes the store and discovery."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    store = open_store(
        config["redis"], reactor, receipt_retention=config.notification["receipt-retention"]
    )
    discovery = StaticDiscovery(clock=reactor)
    pool = AmpPool(reactor, tls=config.server["rpc-tls"])
    remote = AmpGateways(pool)

    def gateway_for(address: str) -> PushGateway:
        # Routes name this server's RPC address; with a shared Redis a route
        # may name another process, reached over AMP like pigeon-delivery does.
        if address == server.hub.server_address:
            return server.hub
        return remote(address)

    worker = DeliveryWorker(store, gateway_for, reactor, consumer=CONSUMER)
    server = server_tap.build_push_server(
        config.server, reactor, store, discovery, worker.pull_source, pool=pool
    )
    reglog = reglog_tap.build_reglog(config.reglog, reactor, store, discovery)
    top = Daemon("pigeon-standalone")
    parts: list[IService] = [
        DiscoveryService(discovery),
        server,
        worker,
        *(service for _name, service in reglog),
        notification_tap.build_api(config.notification, reactor, store, gateway_for),
        LagGauge(store, LAG_INTERVAL, reactor),
        Announcement(config),
    ]
    webhook = notification_tap.build_webhook(config.notification, reactor, store)
    if webhook is not None:
        parts.append(webhook)
    for part in parts:
        part.setServiceParent(top)
    GcTuning(reactor).setServiceParent(top)
    return top
