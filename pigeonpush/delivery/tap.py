"""``twistd pigeon-delivery``: options and wiring of a delivery worker."""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage
from twisted.web.server import Request

from pigeonpush.delivery.gateway import AmpGateways
from pigeonpush.delivery.rpc_server import PullServerFactory
from pigeonpush.delivery.schedule import DEFAULT_INTERVAL as DEFAULT_SCHEDULE_INTERVAL
from pigeonpush.delivery.service import (
    DeliveryWorker,
    LagGauge,
    RegistrationService,
)
from pigeonpush.http import JsonResource, JsonResponse, JsonSite, JsonTree
from pigeonpush.metrics import MetricsResource
from pigeonpush.options import (
    RPC_CA_FILE_OPTION,
    ZOOKEEPER_TIMEOUT_OPTION,
    DaemonOptions,
    check_address,
    check_discovery_spec,
    check_endpoint,
    check_store_url,
    client_tls,
    zookeeper_timeout,
)
from pigeonpush.rpcpool import AmpPool
from pigeonpush.services import Closer, Daemon, GcTuning, listen_or_fail
from pigeonpush.tls import listening_transport

#: How often the queue lag gauge is refreshed, in seconds.
LAG_INTERVAL = 5.0
_NODE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}\Z")


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be positive")
    return number


def delivery_node_id(rpc: str) -> str:
    """``<hostname>-<rpc port>`` when the port is in the endpoint string, else
    ``<hostname>-<pid>``: unique per worker on a host either way."""
    match = re.match(r"(?:tcp6?:|ssl:)(?:port=)?(\d+)", rpc)
    suffix = match.group(1) if match and match.group(1) != "0" else str(os.getpid())
    host = re.sub(r"[^A-Za-z0-9.\-]", "-", socket.gethostname()) or "delivery"
    return f"{host}-{suffix}"


class Options(DaemonOptions):
    synopsis = "[options]"
    longdesc = (
        "A delivery worker: consumes PIGEON:QUEUE in the consumer group 'delivery', pushes "
        "each batch to the push servers holding the recipients (AMP Push), and answers the "
        "servers' Pull requests for pending messages. Times are seconds."
    )
    optParameters = [
        ["rpc", None, "tcp:7201", "Endpoint the AMP Pull service listens on (ssl:... for TLS)."],
        [
            "rpc-advertise",
            None,
            None,
            "host:port push servers connect to for Pull, tls:host:port for TLS "
            "(default 127.0.0.1:<rpc port>, tls: when --rpc is ssl:).",
        ],
        RPC_CA_FILE_OPTION,
        [
            "redis",
            None,
            "redis://127.0.0.1:6379/0",
            "Store URL: redis://[:password@]host:port/db or redis+cluster://host:port,...",
        ],
        ["zookeeper", None, "127.0.0.1:2181", "ZooKeeper hosts (or static: for no ZooKeeper)."],
        ZOOKEEPER_TIMEOUT_OPTION,
        ["node-id", None, None, "Name in discovery (default <hostname>-<rpc port>)."],
        ["consumer", None, None, "Consumer name in the queue's group (default: the node id)."],
        ["batch", None, 100, "Queue entries read per batch.", int],
        ["block", None, 1.0, "Longest wait for new queue entries per read.", _positive],
        ["claim-idle", None, 30.0, "Reclaim entries another worker left this long.", _positive],
        ["push-timeout", None, 5.0, "Longest wait for a push server's answer.", _positive],
        [
            "schedule-interval",
            None,
            DEFAULT_SCHEDULE_INTERVAL,
            "Seconds between two looks for scheduled messages that are due.",
            _positive,
        ],
        [
            "metrics",
            None,
            "tcp:7202:interface=127.0.0.1",
            "Endpoint serving /metrics, or 'none'.",
        ],
    ]

    def postOptions(self) -> None:
        check_endpoint("--rpc", self["rpc"])
        check_store_url("--redis", self["redis"])
        check_discovery_spec("--zookeeper", self["zookeeper"])
        self["zookeeper-timeout"] = zookeeper_timeout(self["zookeeper-timeout"])
        if self["metrics"] != "none":
            check_endpoint("--metrics", self["metrics"])
        if self["rpc-advertise"] is not None:
            check_address("--rpc-advertise", self["rpc-advertise"])
        if self["batch"] < 1:
            raise usage.UsageError("--batch must be at least 1")
        if self["block"] >= self["claim-idle"]:
            raise usage.UsageError("--block must be shorter than --claim-idle")
        if self["node-id"] is None:
            self["node-id"] = delivery_node_id(self["rpc"])
        if not _NODE_ID.match(self["node-id"]):
            raise usage.UsageError(
                "--node-id must be 1 to 128 letters, digits, '.', '_', ':' or '-'"
            )
        if self["consumer"] is None:
            self["consumer"] = self["node-id"]
        #: how push servers' tls: RPC addresses are verified (Push)
        self["rpc-tls"] = client_tls("--rpc-ca-file", self["rpc-ca-file"])


def makeService(config: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    from pigeonpush.discovery import DiscoveryService, open_discovery
    from pigeonpush.store import open_store

    store = open_store(config["redis"], reactor)
    discovery = open_discovery(
        config["zookeeper"], reactor, session_timeout=config["zookeeper-timeout"]
    )
    pool = AmpPool(
        reactor,
        connect_timeout=config["push-timeout"],
        call_timeout=config["push-timeout"],
        tls=config["rpc-tls"],
    )
    top = Daemon("pigeon-delivery")
    Closer(pool.close, store.close).setServiceParent(top)
    DiscoveryService(discovery).setServiceParent(top)
    worker = DeliveryWorker(
        store,
        AmpGateways(pool),
        reactor,
        consumer=config["consumer"],
        batch=config["batch"],
        block=config["block"],
        claim_idle=config["claim-idle"],
        stop_timeout=config["push-timeout"] + config["block"] + 1.0,
        schedule_interval=config["schedule-interval"],
    )
    worker.setServiceParent(top)
    listener = listen_or_fail(
        serverFromString(reactor, config["rpc"]), PullServerFactory(worker.pull_source)
    )
    listener.setServiceParent(top)
    RegistrationService(
        discovery,
        config["node-id"],
        listener,
        config["rpc-advertise"],
        listening_transport(config["rpc"]),
    ).setServiceParent(top)
    lag = LagGauge(store, LAG_INTERVAL, reactor)
    lag.setServiceParent(top)
    if config["metrics"] != "none":
        listen_or_fail(
            serverFromString(reactor, config["metrics"]),
            JsonSite(_operator_resource(worker), reactor=reactor),
        ).setServiceParent(top)
    GcTuning(reactor).setServiceParent(top)
    return top


def _operator_resource(worker: DeliveryWorker) -> JsonTree:
    """``/metrics`` (Prometheus) and ``/health`` (JSON: entries handled so far)."""

    async def health(request: Request) -> JsonResponse:
        return JsonResponse(
            {"status": "ok", "consumer": worker.loop.consumer, "handled": worker.loop.handled}
        )

    root = JsonTree()
    root.putChild(b"metrics", MetricsResource())
    root.putChild(b"health", JsonResource({b"GET": health}))
    return root
