"""The services a delivery worker is made of (``tap`` wires them).

``DeliveryWorker`` is the part every deployment needs (the consume loop and the
pull source over one store); the all-in-one process uses it with an
in-process gateway. ``RegistrationService`` and ``LagGauge`` are the
networked worker's extras (with a ``services.Listener`` for Pull).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.delivery import metrics
from pigeonpush.delivery.loop import ConsumeLoop
from pigeonpush.delivery.pull import PendingMessages
from pigeonpush.delivery.router import GatewayFor, MessageRouter
from pigeonpush.delivery.schedule import DEFAULT_INTERVAL as DEFAULT_SCHEDULE_INTERVAL
from pigeonpush.delivery.schedule import SchedulePoller
from pigeonpush.discovery.interface import DELIVERY, Discovery, NodeRegistration
from pigeonpush.hostport import PeerAddress
from pigeonpush.services import Listener
from pigeonpush.store.interface import Store, StoreError
from pigeonpush.tls import TCP

log = Logger()


class DeliveryWorker(MultiService):
    """The consume loop and the due-time poller (child services) and the pull
    source over ``store``."""

    def __init__(
        self,
        store: Store,
        gateway_for: GatewayFor,
        clock: IReactorTime,
        *,
        consumer: str,
        batch: int = 100,
        block: float = 1.0,
        claim_idle: float = 30.0,
        stop_timeout: float = 10.0,
        schedule_interval: float = DEFAULT_SCHEDULE_INTERVAL,
    ) -> None:
        super().__init__()
        self.router = MessageRouter(store, gateway_for, clock)
        self.loop = ConsumeLoop(
            store,
            self.router,
            clock,
            consumer=consumer,
            batch=batch,
            block=block,
            claim_idle=claim_idle,
            stop_timeout=stop_timeout,
        )
        self.loop.setServiceParent(self)
        #: sends scheduled messages (``sendAt``/``delay``) when they are due
        self.schedule = SchedulePoller(store, clock, interval=schedule_interval)
        self.schedule.setServiceParent(self)
        self.pull_source = PendingMessages(store, clock)


class RegistrationService(Service):
    """This worker's node under ``/pigeonpush/delivery/`` while it runs, so that
    push servers find its Pull endpoint. ``advertise`` None means
    ``127.0.0.1:<listening port>``, prefixed ``tls:`` when ``transport`` is
    ``tls`` (the listener is ``ssl:``). A registration that fails is logged and
    the worker keeps consuming (servers just cannot pull from it); one still
    pending at stop is cancelled, so an unreachable ZooKeeper never holds up a
    shutdown."""

    def __init__(
        self,
        discovery: Discovery,
        node_id: str,
        listener: Listener,
        advertise: str | None,
        transport: str = TCP,
    ) -> None:
        self._discovery = discovery
        self._transport = transport
        self._node_id = node_id
        self._listener = listener
        self._advertise = advertise
        self._registering: Deferred[NodeRegistration | None] | None = None

    def startService(self) -> None:
        super().startService()
        self._registering = self._listener.when_listening().addCallback(self._register)

    def _register(self, port: IListeningPort) -> Deferred[NodeRegistration | None]:
        address = self._advertise or str(
            PeerAddress("127.0.0.1", port.getHost().port, self._transport)  # type: ignore[attr-defined]
        )
        data: Mapping[str, Any] = {"rpc": address}

        def registered(registration: NodeRegistration) -> NodeRegistration:
            log.info(
                "Registered delivery node {node_id} with Pull at {address}",
                node_id=self._node_id,
                address=address,
            )
            return registration

        def failed(failure: Failure) -> None:
            if not failure.check(CancelledError):
                log.failure(
                    "Could not register delivery node {node_id}; push servers cannot pull from it",
                    failure,
                    node_id=self._node_id,
                )

        registering: Deferred[NodeRegistration] = maybeDeferred(
            self._discovery.register, DELIVERY, self._node_id, data
        )
        return registering.addCallbacks(registered, failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        registering, self._registering = self._registering, None
        if registering is None:
            return succeed(None)

        def unregister(registration: NodeRegistration | None) -> Deferred[None] | None:
            return registration.unregister() if registration is not None else None

        def never_registered(failure: Failure) -> None:
            failure.trap(CancelledError)  # stopped before the port listened

        registering.cancel()  # a no-op once registered; else stop waiting for it
        return registering.addCallbacks(unregister, never_registered)


class LagGauge(TimerService):
    """Refreshes the queue lag gauge every ``interval`` seconds."""

    def __init__(self, store: Store, interval: float, clock: IReactorTime) -> None:
        super().__init__(interval, self._refresh)
        self.clock = clock
        self._store = store

    def _refresh(self) -> Deferred[None]:
        def failed(failure: Failure) -> None:
            failure.trap(StoreError)
            log.warn("Could not read the queue lag: {why}", why=failure.getErrorMessage())

        return self._store.queue_lag().addCallbacks(metrics.QUEUE_LAG.set, failed)
