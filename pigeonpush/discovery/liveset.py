"""The live set of one kind and the callbacks that watch it.

Both backends feed a LiveSet with complete sets; it hands each watcher the
current set first, then every set that differs from the last one, and keeps a
failing callback from stopping the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.discovery.interface import DiscoveryClosed, Node, WatchCallback

EMPTY: Mapping[str, Node] = MappingProxyType({})


class Subscription:
    """One ``watch``: the handle its caller gets (a ``Watch``)."""

    __slots__ = ("_live_set", "callback", "cancelled", "primed", "ready")

    def __init__(self, live_set: LiveSet, callback: WatchCallback) -> None:
        self._live_set = live_set
        self.callback = callback
        self.cancelled = False
        #: True once the callback got its first set; only then does it get changes.
        self.primed = False
        #: fires with this subscription after the first set was delivered
        self.ready: Deferred[Subscription] = Deferred()

    def cancel(self) -> None:
        """No more callbacks."""
        self.cancelled = True
        self._live_set.remove(self)


class LiveSet:
    __slots__ = ("_clock", "_closed", "_current", "_pending", "_ready", "_subscriptions", "kind")

    log = Logger()

    def __init__(self, kind: str, clock: IReactorTime) -> None:
        self.kind = kind
        self._clock = clock
        self._current: Mapping[str, Node] = EMPTY
        self._ready = False
        self._closed = False
        self._subscriptions: list[Subscription] = []
        self._pending: dict[Subscription, IDelayedCall] = {}

    @property
    def current(self) -> Mapping[str, Node]:
        """The last set published (empty before the first)."""
        return self._current

    @property
    def ready(self) -> bool:
        """True once a first set was published."""
        return self._ready

    def subscribe(self, callback: WatchCallback) -> Deferred[Subscription]:
        """Watch the set; fires once ``callback`` got its first set."""
        subscription = Subscription(self, callback)
        if self._closed:
            subscription.ready.errback(DiscoveryClosed("discovery is closed"))
            return subscription.ready
        self._subscriptions.append(subscription)
        if self._ready:
            # Never call back from inside watch(): the first set comes from the loop.
            self._pending[subscription] = self._clock.callLater(0, self._prime, subscription)
        return subscription.ready

    def publish(self, nodes: Mapping[str, Node]) -> None:
        """Take ``nodes`` as the live set; call back if it changed (or is the first)."""
        if self._closed:
            return
        if self._ready and nodes == self._current:
            return
        self._current = MappingProxyType(dict(nodes))
        first = not self._ready
        self._ready = True
        for subscription in list(self._subscriptions):
            if first:
                self._pending.pop(subscription, None)
                self._prime(subscription)
            elif subscription.primed:
                self._deliver(subscription)

    def remove(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        call = self._pending.pop(subscription, None)
        if call is not None and call.active():
            call.cancel()

    def close(self, reason: Failure | None = None) -> None:
        """No more callbacks; watches still waiting for a first set fail with
        ``reason`` (DiscoveryClosed by default)."""
        self._closed = True
        subscriptions, self._subscriptions = self._subscriptions, []
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        for subscription in subscriptions:
            subscription.cancelled = True
            if not subscription.ready.called:
                subscription.ready.errback(
                    reason or Failure(DiscoveryClosed("discovery closed before the first set"))
                )

    def _prime(self, subscription: Subscription) -> None:
        self._pending.pop(subscription, None)
        if subscription.cancelled:
            return
        subscription.primed = True
        self._deliver(subscription)
        subscription.ready.callback(subscription)

    def _deliver(self, subscription: Subscription) -> None:
        if subscription.cancelled:
            return
        try:
            subscription.callback(self._current)
        except Exception:
            self.log.failure(
                "Discovery watch callback for {kind} failed", kind=self.kind, failure=Failure()
            )
