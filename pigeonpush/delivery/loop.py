"""The consume loop: queue batches in, routed, acknowledged; crashed workers' entries reclaimed.

One batch is routed at a time; its acknowledgement goes out together with
the next read (at most one acknowledgement in flight), which saves a store
round trip per batch. Each step (read, route, acknowledge) that fails on the
store is retried with exponential backoff on the injected clock; an entry is
acknowledged only after it was routed, so a crash or a stop at any point
leaves it pending in the consumer group, where ``reclaim`` (XAUTOCLAIM) hands
it to a live worker once it has been idle for ``claim_idle`` seconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from pigeonpush.delivery import metrics
from pigeonpush.delivery.router import MessageRouter
from pigeonpush.store.interface import Store, StoreError
from pigeonpush.store.model import QueueEntry

T = TypeVar("T")


class _Stopping(Exception):
    """The service is stopping: leave the batch in hand to be reclaimed."""


class ConsumeLoop(Service):
    log = Logger()

    def __init__(
        self,
        store: Store,
        router: MessageRouter,
        clock: IReactorTime,
        *,
        consumer: str,
        batch: int = 100,
        block: float = 1.0,
        claim_idle: float = 30.0,
        retry_initial: float = 0.5,
        retry_max: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._store = store
        self._router = router
        self._clock = clock
        self.consumer = consumer
        self.batch = batch
        self.block = block
        self.claim_idle = claim_idle
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.stop_timeout = stop_timeout
        self._stopping = False
        self._sleeps: set[Deferred[None]] = set()
        self._acking: Deferred[None] | None = None
        self._running: Deferred[None] | None = None
        self._next_reclaim = 0.0
        #: entries routed and acknowledged since start (for tests and logs)
        self.handled = 0

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._next_reclaim = self._clock.seconds()
        self.log.info(
            "Consuming the queue as {consumer} ({batch} per read, reclaiming after {idle}s)",
            consumer=self.consumer,
            batch=self.batch,
            idle=self.claim_idle,
        )
        self._running = ensureDeferred(self._run())
        self._running.addErrback(
            lambda f: self.log.failure(
                "The consume loop {consumer} died", f, consumer=self.consumer
            )
        )

    def stopService(self) -> Deferred[None]:
        """Finish the batch in hand (bounded by ``stop_timeout``), then stop."""
        super().stopService()
        self._stopping = True
        for sleep in list(self._sleeps):
            sleep.cancel()
        running = self._running
        if running is None or running.called:
            return succeed(None)
        finished: Deferred[None] = Deferred()
        running.addBoth(lambda _: finished.callback(None) if not finished.called else None)
        timer = self._clock.callLater(self.stop_timeout, self._stop_timed_out, finished)
        finished.addBoth(lambda result: timer.cancel() if timer.active() else None)
        return finished

    def _stop_timed_out(self, finished: Deferred[None]) -> None:
        self.log.warn(
            "Stopped {consumer} with a batch still in hand after {timeout}s; "
            "it will be reclaimed by a live worker",
            consumer=self.consumer,
            timeout=self.stop_timeout,
        )
        if not finished.called:
            finished.callback(None)

    async def _run(self) -> None:
        try:
            while not self._stopping:
                await self._step()
        except _Stopping:
            pass
        with suppress(_Stopping):  # given up: the entries get reclaimed
            await self._acknowledged()

    async def _step(self) -> None:
        if self._clock.seconds() >= self._next_reclaim:
            entries = await self._retrying(
                "reclaim", lambda: self._store.reclaim(self.consumer, self.claim_idle, self.batch)
            )
            if entries:
                self.log.info(
                    "Reclaimed {count} queue entries left by another worker",
                    count=len(entries),
                )
                metrics.ENTRIES.labels("reclaimed").inc(len(entries))
                await self.handle(entries)
                return  # there may be more: reclaim again at once
            self._next_reclaim = self._clock.seconds() + self.claim_idle / 2
        entries = await self._retrying(
            "consume", lambda: self._store.consume(self.consumer, self.batch, self.block)
        )
        if entries:
            metrics.ENTRIES.labels("new").inc(len(entries))
            await self._route(entries)
            await self._acknowledged()
            self._acking = ensureDeferred(self._acknowledge(entries))

    async def handle(self, entries: Sequence[QueueEntry]) -> None:
        """Route then acknowledge ``entries``, each step retried until it works."""
        await self._route(entries)
        await self._acknowledged()
        await self._acknowledge(entries)

    async def _route(self, entries: Sequence[QueueEntry]) -> None:
        await self._retrying("route", lambda: ensureDeferred(self._router.route(entries)))

    async def _acknowledge(self, entries: Sequence[QueueEntry]) -> None:
        ids = [entry.entry_id for entry in entries]
        await self._retrying("acknowledge", lambda: self._store.acknowledge(ids))
        self.handled += len(entries)

    async def _acknowledged(self) -> None:
        """Wait for the acknowledgement in flight, if any (_Stopping if it
        was given up because the service stops)."""
        acking, self._acking = self._acking, None
        if acking is not None:
            await acking

    async def _retrying(self, step: str, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = self.retry_initial
        while True:
            try:
                return await attempt()
            except StoreError as e:
                self.log.warn(
                    "Queue step {step} failed ({why}); retrying in {delay}s",
                    step=step,
                    why=str(e),
                    delay=delay,
                )
            except Exception:
                # A bug rather than an outage: say so loudly, but keep the
                # entries (they are retried, never acknowledged unhandled).
                self.log.failure(
                    "Queue step {step} failed; retrying in {delay}s", step=step, delay=delay
                )
            metrics.BATCH_ERRORS.inc()
            if self._stopping:
                raise _Stopping()
            sleep = deferLater(self._clock, delay, lambda: None)
            self._sleeps.add(sleep)
            try:
                await sleep
            except CancelledError:
                raise _Stopping() from None
            finally:
                self._sleeps.discard(sleep)
            delay = min(delay * 2, self.retry_max)
