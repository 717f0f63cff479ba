"""``twistd pigeon-reglog``: options and the wiring of the service tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from pigeonpush.cors import CorsResource, check_origin
from pigeonpush.discovery import DiscoveryService, open_discovery
from pigeonpush.discovery.interface import Discovery
from pigeonpush.http import JsonSite
from pigeonpush.options import (
    HTTP_LIMIT_OPTIONS,
    ZOOKEEPER_TIMEOUT_OPTION,
    DaemonOptions,
    check_discovery_spec,
    check_endpoint,
    check_http_limits,
    check_store_url,
    seconds,
    whole,
    zookeeper_timeout,
)
from pigeonpush.reglog.api import ReglogApi
from pigeonpush.reglog.balancer import DEFAULT_PENDING_TTL, Balancer
from pigeonpush.reglog.devices import DeviceRegistry, in_thread_pool
from pigeonpush.reglog.routing import AuthMode, RouteIssuer
from pigeonpush.reglog.service import ServerWatchService
from pigeonpush.services import Closer, Daemon, GcTuning, listen_or_fail
from pigeonpush.store import Store, open_store

log = Logger()


class Options(DaemonOptions):
    synopsis = "[options]"
    longdesc = (
        "Run the PigeonPush route service: clients ask it for a one-time token "
        "and the push server to connect to (POST /v1/route)."
    )

    optParameters = [
        [
            "listen",
            None,
            "tcp:8100",
            "Endpoint of the HTTP API (a Twisted server endpoint string).",
        ],
        [
            "redis",
            None,
            "redis://127.0.0.1:6379/0",
            "Shared state: redis://[:password@]host:port/db, redis+cluster://host:port,... "
            "or memory: (this process only).",
        ],
        [
            "zookeeper",
            None,
            "127.0.0.1:2181",
            "Discovery: ZooKeeper hosts (host:port[,host:port...][/chroot]), or static:... .",
        ],
        ZOOKEEPER_TIMEOUT_OPTION,
        ["token-ttl", None, "300", "Seconds a token stays valid until its client connects."],
        ["heartbeat", None, "30", "Heartbeat interval, in seconds, told to clients."],
        ["auth-mode", None, "open", "open (any clientId) or registered (devices with a secret)."],
        ["admin-key", None, None, "Bearer key required by POST /v1/devices (registered mode)."],
        ["admin-key-file", None, None, "Read the admin key from this file instead."],
        ["max-body", None, "4096", "Largest request body accepted, in bytes (413 beyond)."],
        [
            "pending-ttl",
            None,
            str(DEFAULT_PENDING_TTL),
            "Seconds a client sent to a server counts against it without news from it.",
        ],
        ["access-log", None, None, "Write an HTTP access log to this file (none by default)."],
        *HTTP_LIMIT_OPTIONS,
    ]
    optFlags = [
        [
            "demo",
            None,
            "Serve the demo page at /demo/ (a browser client over WebSocket; see docs/reglog.rst).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["cors-origin"] = []

    def opt_cors_origin(self, origin: str) -> None:
        """Origin of a web page allowed to call this API from a browser, e.g.
        https://app.example.com (repeatable; * for any); answers carry the
        CORS headers for it and preflights are answered."""
        try:
            self["cors-origin"].append(check_origin("--cors-origin", origin))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def postOptions(self) -> None:
        self["token-ttl"] = seconds("--token-ttl", self["token-ttl"])
        self["heartbeat"] = seconds("--heartbeat", self["heartbeat"])
        self["max-body"] = whole("--max-body", self["max-body"])
        self["pending-ttl"] = seconds("--pending-ttl", self["pending-ttl"])
        check_http_limits(self)
        try:
            self["auth-mode"] = AuthMode(self["auth-mode"])
        except ValueError:
            raise usage.UsageError(
                f"--auth-mode must be open or registered, not {self['auth-mode']!r}"
            ) from None
        if self["admin-key"] is not None and self["admin-key-file"] is not None:
            raise usage.UsageError("give --admin-key or --admin-key-file, not both")
        if self["admin-key-file"] is not None:
            try:
                self["admin-key"] = Path(self["admin-key-file"]).read_text("utf-8").strip()
            except OSError as error:
                raise usage.UsageError(f"cannot read --admin-key-file: {error}") from None
        if self["admin-key"] is not None and not self["admin-key"]:
            raise usage.UsageError("the admin key must not be empty")
        check_endpoint("--listen", self["listen"])
        check_store_url("--redis", self["redis"])
        check_discovery_spec("--zookeeper", self["zookeeper"])
        self["zookeeper-timeout"] = zookeeper_timeout(self["zookeeper-timeout"])


def makeService(config: Options, reactor: Any = None) -> IService:
    """reglog's service tree: store, discovery, the server watch, the HTTP site."""
    if reactor is None:
        from twisted.internet import reactor
    try:
        store = open_store(config["redis"], reactor)
    except ValueError as error:
        raise usage.UsageError(f"--redis: {error}") from None
    try:
        discovery = open_discovery(
            config["zookeeper"], reactor, session_timeout=config["zookeeper-timeout"]
        )
    except ValueError as error:
        raise usage.UsageError(f"--zookeeper: {error}") from None

    top = Daemon("pigeon-reglog")
    # Started in this order, stopped one at a time in reverse: the listener
    # goes first, the store last.
    services: list[tuple[str, IService]] = [
        ("store", Closer(store.close)),
        ("discovery", DiscoveryService(discovery)),
        *build_reglog(config, reactor, store, discovery),
    ]
    for name, service in services:
        service.setName(name)
        service.setServiceParent(top)
    GcTuning(reactor).setServiceParent(top)
    return top


def build_reglog(
    config: Options, reactor: Any, store: Store, discovery: Discovery
) -> list[tuple[str, IService]]:
    """The server watch and the HTTP site over a given store and discovery
    (the all-in-one process shares its own)."""
    endpoint = serverFromString(reactor, config["listen"])
    balancer = Balancer(reactor, pending_ttl=config["pending-ttl"])
    devices = None
    if config["auth-mode"] is AuthMode.REGISTERED:
        devices = DeviceRegistry(store, reactor, in_thread_pool(reactor))
        if config["admin-key"] is None:
            log.warn("Device registration is open to anyone: set --admin-key to restrict it")
    elif config["admin-key"] is not None:
        log.warn("--admin-key has no effect in open mode")
    issuer = RouteIssuer(
        store,
        balancer,
        clock=reactor,
        token_ttl=config["token-ttl"],
        heartbeat=config["heartbeat"],
        devices=devices,
    )
    api = ReglogApi(
        issuer,
        balancer,
        reactor,
        devices=devices,
        admin_key=config["admin-key"],
        max_body=config["max-body"],
    )
    root = api.resource()
    if config["demo"]:
        from pigeonpush.demo import demo_resource

        root.putChild(b"demo", demo_resource())
    site = JsonSite(
        CorsResource(root, config["cors-origin"]) if config["cors-origin"] else root,
        max_body=config["max-body"],
        request_timeout=config["request-timeout"],
        max_connections=config["max-connections"],
        access_log=config["access-log"],
        reactor=reactor,
    )

    # A busy port fails the start (twistd exits 1) instead of leaving the
    # process running without its API.
    http = listen_or_fail(endpoint, site)
    return [
        ("server-watch", ServerWatchService(discovery, balancer, reactor)),
        ("http", http),
    ]
