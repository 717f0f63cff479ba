"""Service-tree glue the plugins share: ordered stops and closing resources."""

from __future__ import annotations

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
