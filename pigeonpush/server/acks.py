"""ACKs of one reactor turn, from every connection, become one store call.

Clients ACK each PUSH; removing each id from WAIT_ACK on its own would be a
round trip per message. The batcher collects ``(clientId, messageId)`` pairs
and flushes them with ``callLater(0, ...)``, i.e. after every connection that
had data in this turn of the reactor has been read.

When the store refuses a batch, the pairs are kept (up to ``max_pending``) and
retried after ``retry_delay``: an ACK that never reaches the store only means
the message is delivered again (the SDK drops the duplicate), but retrying
keeps that rare.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.server.metrics import PROMETHEUS, MetricsSink
from pigeonpush.store.interface import Store, StoreError


class AckBatcher:
    log = Logger()

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        *,
        max_batch: int = 5000,
        retry_delay: float = 1.0,
        max_pending: int = 100_000,
        metrics: MetricsSink = PROMETHEUS,
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._clock = clock
        self._max_batch = max_batch
        self._retry_delay = retry_delay
        self._max_pending = max_pending
        self._pending: list[tuple[str, str]] = []
        self._call: IDelayedCall | None = None
        self._in_flight: set[Deferred[None]] = set()
        self._arrived = 0  # ACKs added since the metric was last updated
        self._stopped = False

    @property
    def pending(self) -> int:
        """ACKs collected and not yet handed to the store."""
        return len(self._pending)

    def add(self, client_id: str, message_id: str) -> None:
        """Queue one ACK; it reaches the store at the end of this reactor turn."""
        self._pending.append((client_id, message_id))
        self._arrived += 1
        if self._call is None:
            self._call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        if self._arrived:
            self._metrics.acks_received(self._arrived)
            self._arrived = 0
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self._max_batch):
            self._send(pending[start : start + self._max_batch])

    def _send(self, batch: Sequence[tuple[str, str]]) -> None:
        sent = self._store.ack(batch)
        self._in_flight.add(sent)

        def done(result: object) -> None:
            self._in_flight.discard(sent)

        sent.addErrback(self._failed, batch)
        sent.addBoth(done)

    def _failed(self, failure: Failure, batch: Sequence[tuple[str, str]]) -> None:
        self._metrics.ack_store_failed()
        if not failure.check(StoreError):
            self.log.failure("Storing {count} ACKs failed", failure, count=len(batch))
        if self._stopped:
            if failure.check(StoreError):
                self.log.warn(
                    "Storing {count} ACKs failed while stopping: {why}; those messages "
                    "will be delivered again",
                    count=len(batch),
                    why=failure.getErrorMessage(),
                )
            return
        if failure.check(StoreError):
            self.log.warn(
                "Storing {count} ACKs failed: {why}; retrying in {delay} s",
                count=len(batch),
                why=failure.getErrorMessage(),
                delay=self._retry_delay,
            )
        room = max(self._max_pending - len(self._pending), 0)
        if room < len(batch):
            self.log.warn(
                "Dropping {dropped} ACKs after store failures; those messages will be "
                "delivered again",
                dropped=len(batch) - room,
            )
            batch = batch[len(batch) - room :]
        self._pending[:0] = batch  # the oldest first, ahead of newer ACKs
        if self._call is None and self._pending:
            self._call = self._clock.callLater(self._retry_delay, self._flush)

    def flush(self) -> Deferred[None]:
        """Hand everything collected to the store now and stop retrying; fires
        when every outstanding store call has finished (a graceful stop waits
        for it). ACKs added later are still flushed at the end of their turn."""
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._flush()
        waiting = list(self._in_flight)
        done: Deferred[None] = DeferredList(waiting, consumeErrors=True).addCallback(lambda _: None)
        return done
