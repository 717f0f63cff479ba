"""The push server as a twistd service: ports, registration, timers, graceful stop.

Start: listen for delivery (RPC) first, so that the address clients' routes
will name exists; watch the delivery workers; listen for devices; then register
in discovery, which makes reglog send clients here.

Stop (SIGTERM, ``stopService``): leave discovery first (reglog stops sending
clients), stop accepting devices, drain (KICK spread over the drain period,
then close what is left), stop the RPC port once in-flight deliveries are
done, flush ACKs, then close the pool, discovery and store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    fail,
    succeed,
)
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.discovery.interface import (
    DELIVERY,
    SERVERS,
    Discovery,
    Node,
    NodeRegistration,
    Watch,
)
from pigeonpush.hostport import PeerAddress, parse_peer_address
from pigeonpush.rpcpool import AmpPool
from pigeonpush.server.direct import DirectReader
from pigeonpush.server.hub import PushHub
from pigeonpush.server.protocol import ServerProtocolFactory
from pigeonpush.server.pull import AmpPullSource
from pigeonpush.server.rpc_server import ServerRpcFactory
from pigeonpush.server.topics import FeedReader
from pigeonpush.server.websocket import NO_BROWSERS, OriginPolicy, WebSocketFactory
from pigeonpush.services import fail_now
from pigeonpush.store.redis import RedisStore
from pigeonpush.tls import TCP

#: Seconds between two checks of the connection count published in discovery
#: (the discovery layer rate-limits the writes themselves).
LOAD_REPORT_INTERVAL = 1.0
#: Seconds a stop waits for each step that talks to the outside (unregister,
#: ACK flush, closing the store and discovery).
STOP_STEP_TIMEOUT = 5.0


def server_node_id(advertise: str) -> str:
    """The node id derived from the client address: its ``host:port``
    (a valid znode name), whatever the transport."""
    return parse_peer_address(advertise).host_port


def _local_address(port: IListeningPort, transport: str) -> str:
    host: Any = port.getHost()
    return str(PeerAddress("127.0.0.1", host.port, transport))


def _stop_listening(port: IListeningPort) -> Deferred[None]:
    stopping: Deferred[None] | None = port.stopListening()
    return stopping if stopping is not None else succeed(None)


class PushServerService(MultiService):
    """Runs one hub: its ports, its registration and its periodic jobs.

    The service owns ``store``, ``discovery`` and ``pool`` and closes them when
    it stops. ``advertise`` / ``rpc_advertise`` (``[tls:]host:port``) default
    to 127.0.0.1, the port actually bound and ``client_transport`` /
    ``rpc_transport`` (what the endpoint speaks: ``tcp`` or ``tls``);
    ``node_id`` defaults to the advertise address's ``host:port``.
    """

    log = Logger()

    def __init__(
        self,
        hub: PushHub,
        *,
        reactor: IReactorTime,
        client_endpoint: IStreamServerEndpoint,
        rpc_endpoint: IStreamServerEndpoint,
        discovery: Discovery,
        pool: AmpPool | None = None,
        pull_source: AmpPullSource | None = None,
        advertise: str | None = None,
        rpc_advertise: str | None = None,
        client_transport: str = TCP,
        rpc_transport: str = TCP,
        node_id: str | None = None,
        load_report_interval: float = LOAD_REPORT_INTERVAL,
        on_start_failure: Callable[[Failure], None] | None = None,
        websocket_endpoint: IStreamServerEndpoint | None = None,
        websocket_advertise: str | None = None,
        websocket_transport: str = TCP,
        websocket_origins: OriginPolicy = NO_BROWSERS,
    ) -> None:
        super().__init__()
        self.hub = hub
        #: the reader of this server's direct stream (``?direct_streams=1``)
        self.direct: DirectReader | None = None
        self._reactor = reactor
        self._client_endpoint = client_endpoint
        self._rpc_endpoint = rpc_endpoint
        self.discovery = discovery
        self.pool = pool
        self.pull_source = pull_source
        self.advertise = advertise
        self.rpc_advertise = rpc_advertise
        self._client_transport = client_transport
        self._rpc_transport = rpc_transport
        self.node_id = node_id
        self._on_start_failure = on_start_failure
        self._websocket_endpoint = websocket_endpoint
        #: ``[tls:]host:port`` of the WebSocket listener (None: none)
        self.websocket_advertise = websocket_advertise
        self._websocket_transport = websocket_transport
        self._websocket_origins = websocket_origins
        self.websocket_port: IListeningPort | None = None
        self.rpc_factory = ServerRpcFactory(hub)
        self.client_port: IListeningPort | None = None
        #: the TCP port's factory, and the WebSocket port's channels' (their
        #: timeouts stop after the drain)
        self.channel_factories: list[ServerProtocolFactory] = []
        self.rpc_port: IListeningPort | None = None
        self.registration: NodeRegistration | None = None
        self._watch: Watch | None = None
        self._published: dict[str, Any] | None = None
        self._listening: Deferred[None] | None = None
        self._rpc_closing: Deferred[None] | None = None
        self._starting: Deferred[None] | None = None
        self._stopping = False
        self._start_failure: Failure | None = None
        self._ready_waiters: list[Deferred[None]] = []
        #: "starting", "serving", "draining" or "stopped" (for /health)
        self.phase = "starting"
        #: the live fan-out of topic messages: stopped with the timers, first
        FeedReader(hub.store, reactor, hub.topics.live).setServiceParent(self)
        for interval, job in (
            (load_report_interval, self._report_load),
            (hub.settings.session_ttl / 3, self._refresh_sessions),
        ):
            timer = TimerService(interval, job)
            timer.clock = reactor
            timer.setServiceParent(self)

    # --- start ------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Listen now, before twistd drops privileges; a port that cannot be
        bound fails the start at once (twistd reports it and exits 1)."""
        super().privilegedStartService()
        self._listening = ensureDeferred(self._listen())
        try:
            fail_now(self._listening)
        except Exception:
            self._start_failure = Failure()
            raise

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self._listening = ensureDeferred(self._listen())
        self._starting = ensureDeferred(self._start(self._listening))
        self._starting.addCallbacks(self._started, self._start_failed)

    async def _listen(self) -> None:
        """The RPC port first: its address is what clients' ROUTEs will name."""
        self.rpc_port = await self._rpc_endpoint.listen(self.rpc_factory)
        if self.rpc_advertise is None:
            self.rpc_advertise = _local_address(self.rpc_port, self._rpc_transport)
        self.hub.server_address = self.rpc_advertise
        factory = ServerProtocolFactory(
            self.hub, self.hub.settings, self.hub.clock, metrics=self.hub.metrics
        )
        self.channel_factories.append(factory)
        try:
            self.client_port = await self._client_endpoint.listen(factory)
        except Exception:
            # Not awaited: the failure must reach privilegedStartService at once.
            self._rpc_closing = _stop_listening(self.rpc_port)
            self.rpc_port = None
            raise
        if self._websocket_endpoint is not None:
            websocket = WebSocketFactory(
                self.hub,
                self.hub.settings,
                self.hub.clock,
                origins=self._websocket_origins,
                metrics=self.hub.metrics,
                reactor=self._reactor,
            )
            self.channel_factories.append(websocket.channels)
            try:
                self.websocket_port = await self._websocket_endpoint.listen(websocket)
            except Exception:
                self._rpc_closing = _stop_listening(self.rpc_port)
                self.rpc_port = None
                _stop_listening(self.client_port)
                self.client_port = None
                raise
            if self.websocket_advertise is None:
                self.websocket_advertise = _local_address(
                    self.websocket_port, self._websocket_transport
                )
        if self.advertise is None:
            self.advertise = _local_address(self.client_port, self._client_transport)
        if self.node_id is None:
            self.node_id = server_node_id(self.advertise)

    async def _start(self, listening: Deferred[None]) -> None:
        await listening
        assert self.node_id is not None
        if self.pull_source is not None:
            self._watch = await self.discovery.watch(DELIVERY, self._delivery_changed)
        # Before registering: the reader's first step empties the stream,
        # and no client is sent here before the registration.
        self._start_direct()
        self._published = self._node_data()
        self.registration = await self.discovery.register(SERVERS, self.node_id, self._published)

    def _start_direct(self) -> None:
        """With ``?direct_streams=1``: read this server's own stream."""
        store = self.hub.store
        if isinstance(store, RedisStore) and store.direct_streams and self.rpc_advertise:
            self.direct = DirectReader(store, self.hub.push, self._reactor, self.rpc_advertise)
            self.direct.start()

    def _delivery_changed(self, nodes: Mapping[str, Node]) -> None:
        """The live delivery workers changed: pulls go to the new set, and
        pulls that failed (no worker was known) are retried at once."""
        assert self.pull_source is not None
        self.pull_source.nodes_changed(nodes)
        if self.pull_source.addresses:
            self.hub.pull_source_ready()

    def when_ready(self) -> Deferred[None]:
        """Fires once the server listens and is registered (fails if it could not)."""
        if self.phase == "serving":
            return succeed(None)
        if self._start_failure is not None:
            return fail(self._start_failure)
        waiter: Deferred[None] = Deferred()
        self._ready_waiters.append(waiter)
        return waiter

    def _started(self, result: None) -> None:
        self.phase = "serving"
        self.log.info(
            "Push server {node_id} serving clients at {advertise} (WebSocket: {websocket}), "
            "delivery at {rpc}",
            node_id=self.node_id,
            advertise=self.advertise,
            websocket=self.websocket_advertise or "off",
            rpc=self.rpc_advertise,
        )
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _start_failed(self, failure: Failure) -> None:
        self._start_failure = failure
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.errback(failure)
        if self._stopping and failure.check(CancelledError):
            self.log.info("Push server stopped before it finished starting")
            return
        self.log.failure("The push server could not start", failure)
        if self._on_start_failure is not None:
            self._on_start_failure(failure)

    def _node_data(self) -> dict[str, Any]:
        data = {
            "client": self.advertise,
            "rpc": self.rpc_advertise,
            "connections": len(self.hub.sessions),
            "capacity": self.hub.settings.capacity,
        }
        if self.websocket_advertise is not None:
            data["websocket"] = self.websocket_advertise
        return data

    # --- periodic jobs (each logs its own failures, so its timer keeps running) -----

    def _report_load(self) -> None:
        if self.registration is None or self.phase != "serving":
            return
        data = self._node_data()
        if data != self._published:
            self._published = data
            try:
                self.registration.update(data)
            except Exception:
                self.log.failure("Publishing the connection count failed")

    def _refresh_sessions(self) -> Deferred[None]:
        return self.hub.refresh_sessions()

    # --- stop ---------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self.running:
            await super().stopService()  # the timers
        starting = self._starting
        if starting is not None and not starting.called:
            starting.cancel()
        self.phase = "draining"
        if self.direct is not None:
            await self._bounded(self.direct.stop(), "stopping the direct stream reader")
        if self.registration is not None:
            await self._bounded(self.registration.unregister(), "leaving discovery")
        if self.client_port is not None:
            await _stop_listening(self.client_port)
        if self.websocket_port is not None:
            await _stop_listening(self.websocket_port)
        await self.hub.drain(self.hub.settings.drain_period)
        for factory in self.channel_factories:
            factory.stop_timers()
        if self.rpc_port is not None:
            await _stop_listening(self.rpc_port)
        if self._rpc_closing is not None:
            await self._rpc_closing
        self.rpc_factory.close_connections()
        await self._bounded(self.hub.acks.flush(), "storing the last ACKs")
        if self._watch is not None:
            self._watch.cancel()
        if self.pool is not None:
            await self._bounded(self.pool.close(), "closing delivery connections")
        await self._bounded(self.discovery.close(), "closing discovery")
        await self._bounded(self.hub.store.close(), "closing the store")
        self.phase = "stopped"
        self.log.info("Push server {node_id} stopped", node_id=self.node_id)

    async def _bounded(self, step: Deferred[Any], what: str) -> None:
        step.addTimeout(STOP_STEP_TIMEOUT, self._reactor)
        try:
            await step
        except DeferTimeoutError:
            self.log.warn(
                "Stopping: {what} took longer than {timeout} s; going on",
                what=what,
                timeout=STOP_STEP_TIMEOUT,
            )
        except Exception:
            self.log.failure("Stopping: {what} failed; going on", what=what)
