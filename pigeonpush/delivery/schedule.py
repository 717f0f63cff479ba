"""The due-time poller: scheduled messages go out when their time comes.

Accepting a notification with ``sendAt`` or ``delay`` stores it and adds its
id to ``PIGEON:{SCHEDULE}`` (a sorted set by send time). Every delivery worker
runs one ``SchedulePoller``: one timer on the injected clock that asks the
store to release what is due, a bounded batch per tick (``Store.release_due``,
which claims each entry atomically, so two workers never both send one). A
full batch means more may be due: the next tick comes at once instead of
after ``interval``. A store error is logged and the next tick tries again.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.delivery import metrics
from pigeonpush.store.interface import Store, StoreError

#: Seconds between two looks at the schedule: a message goes out at most this
#: late (plus the queue's own latency), well within the promised second.
DEFAULT_INTERVAL = 0.25
#: Scheduled messages released per tick at most.
DEFAULT_BATCH = 500
#: How long a claimed entry stays with the worker that claimed it: if that
#: worker dies before sending it, another one sends it after this.
DEFAULT_LEASE = 30.0


class SchedulePoller(Service):
    log = Logger()

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        *,
        interval: float = DEFAULT_INTERVAL,
        batch: int = DEFAULT_BATCH,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self._store = store
        self._clock = clock
        self.interval = interval
        self.batch = batch
        self.lease = lease
        self._timer: IDelayedCall | None = None
        self._ticking: Deferred[None] | None = None
        #: scheduled messages this poller released (for tests and logs)
        self.released = 0

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> Deferred[None]:
        """Stop the timer; wait for a tick in flight (its claims are sent or
        left to the lease)."""
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        ticking = self._ticking
        if ticking is None or ticking.called:
            return succeed(None)
        done: Deferred[None] = Deferred()
        ticking.addBoth(lambda _: done.callback(None))
        return done

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._timer = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._ticking = self._store.release_due(self.batch, self.lease).addCallbacks(
            self._released, self._failed
        )

    def _released(self, count: int) -> None:
        self.released += count
        metrics.SCHEDULED_RELEASED.inc(count)
        if count:
            self.log.debug("Released {count} scheduled messages", count=count)
        self._schedule(0 if count >= self.batch else self.interval)

    def _failed(self, failure: Failure) -> None:
        metrics.SCHEDULE_ERRORS.inc()
        if failure.check(StoreError):
            self.log.warn(
                "Could not release the scheduled messages that are due: {why}",
                why=failure.getErrorMessage(),
            )
        else:
            self.log.failure("Could not release the scheduled messages that are due", failure)
        self._schedule(self.interval)
