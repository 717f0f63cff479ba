"""The long-running parts of reglog: the discovery watch that feeds the balancer,
and the closing of the store and discovery when the process stops."""

from __future__ import annotations

from collections.abc import Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.discovery.interface import SERVERS, Discovery, Node, Watch
from pigeonpush.reglog import metrics
from pigeonpush.reglog.balancer import Balancer

#: Delays between attempts to start the watch: doubling from the first to the last.
RETRY_DELAYS = (1.0, 30.0)


class ServerWatchService(Service):
    """Watches the live push servers in discovery and hands every change to the balancer.

    If the watch cannot be set up (discovery unreachable at start), it is tried
    again with a doubling delay; until then reglog answers 503 ``no_server``.
    """

    log = Logger()

    def __init__(
        self,
        discovery: Discovery,
        balancer: Balancer,
        clock: IReactorTime,
        retry_delays: tuple[float, float] = RETRY_DELAYS,
    ) -> None:
        self._discovery = discovery
        self._balancer = balancer
        self._clock = clock
        self._first_delay, self._max_delay = retry_delays
        self._delay = self._first_delay
        self._watch: Watch | None = None
        self._retry: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._delay = self._first_delay
        self._start_watch()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        return None

    def _start_watch(self) -> None:
        self._retry = None
        watching: Deferred[Watch] = maybeDeferred(
            self._discovery.watch, SERVERS, self._servers_changed
        )
        watching.addCallbacks(self._watching, self._watch_failed)

    def _watching(self, watch: Watch) -> None:
        if not self.running:
            watch.cancel()
            return
        self._watch = watch

    def _watch_failed(self, failure: Failure) -> None:
        if not self.running:
            return
        self.log.warn(
            "Cannot watch the push servers ({error}); trying again in {delay} s",
            error=failure.getErrorMessage(),
            delay=self._delay,
        )
        self._retry = self._clock.callLater(self._delay, self._start_watch)
        self._delay = min(self._delay * 2, self._max_delay)

    def _servers_changed(self, live: Mapping[str, Node]) -> None:
        if not self.running:
            return
        self._balancer.update(live)
        servers = self._balancer.servers
        metrics.LIVE_SERVERS.set(len(servers))
        metrics.PUBLISHED_FREE_CAPACITY.set(
            sum(max(0, server.capacity - server.connections) for server in servers.values())
        )
