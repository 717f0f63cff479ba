"""Service-tree glue the plugins share: listening ports that fail the start,
ordered stops, closing resources, and the garbage collector's set-up."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

_T = TypeVar("_T")


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


def fail_now(deferred: Deferred[_T]) -> Deferred[_T]:
    """``deferred``, unless it has already failed: then its error is raised here
    (and ``deferred`` is left holding None).

    The one way the plugins make a listening port that cannot be bound fail
    the start: every stream endpoint (TCP, SSL, UNIX) binds inside
    ``listen``, so a port in use is a Deferred that failed at once, which
    raised from ``privilegedStartService``/``startService`` makes twistd (or
    ``Daemon``) exit instead of running on without the port."""
    outcome: list[object] = []
    deferred.addBoth(_note, outcome)
    if outcome and isinstance(outcome[0], Failure):
        deferred.addErrback(lambda _: None)
        outcome[0].raiseException()
    return deferred


def _note(result: _T, outcome: list[object]) -> _T:
    outcome.append(result)
    return result


def listen_or_fail(endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> Listener:
    """A listener whose port, if it cannot be bound, fails the start (and,
    under ``Daemon``, ends the process with one line) instead of being logged
    while the process runs on without it."""
    return Listener(endpoint, factory)


class Listener(Service):
    """Listens on ``endpoint`` with ``factory`` while running (from
    ``privilegedStartService``, before twistd drops privileges). A port that
    cannot be bound raises from the start (``fail_now``); a later failure is
    logged. A factory that wants it (``listening_on``) is told which port it
    got; ``when_listening`` tells anyone else."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        #: the port once listening (None before and after)
        self.port: IListeningPort | None = None
        self._listening: Deferred[None] | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._listening is None:  # started without the privileged step
            self._listen()

    def _listen(self) -> None:
        listening = self.endpoint.listen(self.factory)
        self._listening = fail_now(listening).addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        tell = getattr(self.factory, "listening_on", None)
        if tell is not None:
            tell(port)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)

    def _failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            log.failure("Cannot listen on {endpoint}", failure, endpoint=self.endpoint)

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the port once listening (never if listening fails)."""
        if self.port is not None:
            return succeed(self.port)
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        listening, self._listening = self._listening, None
        port, self.port = self.port, None
        if port is not None:
            stopped: Deferred[None] | None = port.stopListening()
            return stopped
        if listening is not None:
            listening.cancel()  # an endpoint still binding
        return None


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
