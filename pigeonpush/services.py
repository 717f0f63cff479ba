"""Service-tree glue the plugins share: ordered stops, closing resources, and
the garbage collector's set-up."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
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


def listen_or_fail(endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> IService:
    """A listener whose port, if it cannot be bound, fails the start (and,
    under ``Daemon``, ends the process with one line) instead of being logged
    while the process runs on without it."""
    service = _Listener(endpoint, factory)
    service._raiseSynchronously = True
    return service


class _Listener(StreamServerEndpointService):
    """Tells a factory that wants it (``listening_on``) which port it got."""

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        tell = getattr(self.factory, "listening_on", None)
        if tell is not None and self._waitingForPort is not None:
            self._waitingForPort.addCallback(_told, tell)


def _told(port: IListeningPort, tell: Callable[[IListeningPort], object]) -> IListeningPort:
    tell(port)
    return port


class Daemon(StopInOrder):
    """The top of a plugin's service tree: a ``StopInOrder`` whose start ends
    the process with one line when a port cannot be bound.

    twistd would print the error's 40-line traceback into the log and exit.
    Here the log gets one critical line, standard error (the real one: twistd
    has redirected ``sys.stderr`` into the log by then) gets
    ``<program>: Couldn't listen on 127.0.0.1:8100: [Errno 98] Address
    already in use.``, and the process exits with status 1.
    """

    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def privilegedStartService(self) -> None:
        with self._exit_on_start_error():
            super().privilegedStartService()

    def startService(self) -> None:
        with self._exit_on_start_error():
            super().startService()

    @contextmanager
    def _exit_on_start_error(self) -> Iterator[None]:
        try:
            yield
        except CannotListenError as error:
            line = f"{self.program}: {error}"
            log.critical("Cannot start: {error}", error=str(error))
            stderr = sys.__stderr__ or sys.stderr
            stderr.write(line + "\n")
            stderr.flush()
            raise SystemExit(1) from None


class Closer(Service):
    """Runs each ``close`` callable when the tree stops. Added first to a
    ``StopInOrder``, it stops last, after everything that uses the resources."""

    def __init__(self, *closers: Callable[[], Deferred[Any]]) -> None:
        self._closers = closers

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return DeferredList([maybeDeferred(close) for close in self._closers], consumeErrors=True)


#: Net new objects the collector tracks between two young collections
#: (CPython's default is 700).
YOUNG_THRESHOLD = 5000


def raise_young_threshold(young: int = YOUNG_THRESHOLD) -> tuple[int, ...]:
    """Collect the young generation every ``young`` net new objects, the older
    ones as before (see ``GcTuning`` for why); the thresholds it replaced."""
    previous = gc.get_threshold()
    gc.set_threshold(young, *previous[1:])
    return previous


class GcTuning(Service):
    """Once the reactor runs, sets the cyclic garbage collector up for a
    long-running service.

    * ``gc.freeze()`` moves every object that exists then (modules, classes,
      the configured services) to the permanent generation: no full
      collection walks them again. At 19,500 connections a full collection
      took 85-87 ms with everything and 51-59 ms with the start-up objects
      frozen (``benchmarks/gc_and_pools.py``).
    * The young generation is collected after ``young_threshold`` net new
      objects instead of 700. At 700, the objects of logins and requests in
      flight (waiting on Redis for a millisecond) survive two young
      collections, reach the oldest generation, die there and trigger full
      collections of the whole heap: at 75,000 clients over four servers,
      collection took 3.3 of a server's 12 CPU seconds and 4.2 of reglog's
      18 (docs/benchmarks.rst). The previous thresholds come back on stop.
    """

    name = "gc"

    def __init__(self, reactor: Any, young_threshold: int = YOUNG_THRESHOLD) -> None:
        if young_threshold < 1:
            raise ValueError("young_threshold must be at least 1")
        self._reactor = reactor
        self.young_threshold = young_threshold
        self._previous: tuple[int, ...] | None = None

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._tune)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            gc.set_threshold(*self._previous)
            self._previous = None

    def _tune(self) -> None:
        if not self.running:
            return
        gc.collect()
        gc.freeze()
        self._previous = raise_young_threshold(self.young_threshold)
        log.debug(
            "Froze {count} start-up objects; young collections every {threshold} objects",
            count=gc.get_freeze_count(),
            threshold=self.young_threshold,
        )
