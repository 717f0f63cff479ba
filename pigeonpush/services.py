"""Service-tree glue the plugins share: ordered stops, closing resources, and
freezing the start-up objects."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred
from twisted.logger import Logger

log = Logger()


class StopInOrder(MultiService):
    """A MultiService that stops its children one at a time, last added first,
    each after the previous one finished stopping. ``MultiService`` stops them
    all at once, which would close the store under a request or batch in hand."""

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return ensureDeferred(self._stop_children(list(self)[::-1]))

    async def _stop_children(self, children: list[IService]) -> None:
        for child in children:
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("Stopping {service} failed", service=child)


class Closer(Service):
    """Runs each ``close`` callable when the tree stops. Added first to a
    ``StopInOrder``, it stops last, after everything that uses the resources."""

    def __init__(self, *closers: Callable[[], Deferred[Any]]) -> None:
        self._closers = closers

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return DeferredList([maybeDeferred(close) for close in self._closers], consumeErrors=True)


class FreezeAfterStart(Service):
    """Once the reactor runs, moves every object that exists then (modules,
    classes, the configured services) to the collector's permanent
    generation with ``gc.freeze()``: a full collection then walks only what
    came later (connections, messages). At 19,500 connections a full
    collection took 85-87 ms with everything and 51-59 ms with the start-up
    objects frozen (``benchmarks/gc_and_pools.py``); while a server fills up,
    one runs each time the long-lived objects grow by a quarter."""

    name = "freeze"

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._freeze)

    def _freeze(self) -> None:
        gc.collect()
        gc.freeze()
        log.debug("Froze {count} start-up objects", count=gc.get_freeze_count())
