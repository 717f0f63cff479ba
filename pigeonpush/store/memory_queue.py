"""The notification queue of the memory backend: a Redis stream with one
consumer group, in one process.

Entries are handed out once each (``take``), stay pending with their consumer,
delivery time and delivery count until acknowledged, and can be taken over by
another consumer once idle long enough (``reclaim``), as with XREADGROUP, XACK
and XAUTOCLAIM. A reader that finds nothing waits on the injected clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from pigeonpush.store.interface import StoreError
from pigeonpush.store.model import Notification, QueueEntry


@attrs.define(slots=True)
class _Delivery:
    """A pending entry: who has it, since when, how often it was handed out."""

    consumer: str
    delivered_ms: int
    deliveries: int


@attrs.define(slots=True, eq=False)
class _Reader:
    """A ``take`` waiting for entries."""

    consumer: str
    count: int
    deferred: Deferred[list[QueueEntry]]
    timeout: IDelayedCall | None = None


class MemoryQueue:
    __slots__ = ("_clock", "_entries", "_last_ms", "_pending", "_readers", "_seq", "_undelivered")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        #: entry id -> notification, in id order (the stream)
        self._entries: dict[str, Notification] = {}
        #: ids not yet handed out, oldest first
        self._undelivered: deque[str] = deque()
        #: entry id -> delivery, in id order (the pending entries list)
        self._pending: dict[str, _Delivery] = {}
        self._readers: deque[_Reader] = deque()
        self._last_ms = -1
        self._seq = 0

    def add(self, notification: Notification) -> str:
        """Append; the id has Redis' form ``<milliseconds>-<sequence>``."""
        now_ms = _ms(self._clock.seconds())
        if now_ms > self._last_ms:
            self._last_ms, self._seq = now_ms, 0
        else:
            self._seq += 1
        entry_id = f"{self._last_ms}-{self._seq}"
        self._entries[entry_id] = notification
        self._undelivered.append(entry_id)
        return entry_id

    def take(self, consumer: str, count: int) -> list[QueueEntry]:
        """Up to ``count`` entries never handed out before, oldest first."""
        now_ms = _ms(self._clock.seconds())
        taken: list[QueueEntry] = []
        while self._undelivered and len(taken) < count:
            entry_id = self._undelivered.popleft()
            notification = self._entries.get(entry_id)
            if notification is None:  # acknowledged before anyone read it
                continue
            self._pending[entry_id] = _Delivery(consumer, now_ms, 1)
            taken.append(QueueEntry(entry_id, notification, 1))
        return taken

    def wait(self, consumer: str, count: int, block: float) -> Deferred[list[QueueEntry]]:
        """``take``, or wait up to ``block`` seconds for the first entry."""
        taken = self.take(consumer, count)
        if taken or block <= 0:
            return succeed(taken)

        def cancel(_: Deferred[list[QueueEntry]]) -> None:
            self._forget(reader)

        reader = _Reader(consumer, count, Deferred(cancel))
        reader.timeout = self._clock.callLater(block, self._time_out, reader)
        self._readers.append(reader)
        return reader.deferred

    def wake(self) -> None:
        """Hand new entries to waiting readers, first come first served."""
        while self._readers and self._has_undelivered():
            reader = self._readers.popleft()
            self._cancel_timeout(reader)
            reader.deferred.callback(self.take(reader.consumer, reader.count))

    def acknowledge(self, entry_ids: Iterable[str]) -> None:
        for entry_id in entry_ids:
            self._entries.pop(entry_id, None)
            self._pending.pop(entry_id, None)

    def reclaim(self, consumer: str, min_idle: float, count: int) -> list[QueueEntry]:
        # Whole milliseconds, as Redis counts idle time.
        now_ms, idle_ms = _ms(self._clock.seconds()), _ms(min_idle)
        claimed: list[QueueEntry] = []
        for entry_id, delivery in self._pending.items():
            if len(claimed) >= count:
                break
            if now_ms - delivery.delivered_ms < idle_ms:
                continue
            delivery.consumer = consumer
            delivery.delivered_ms = now_ms
            delivery.deliveries += 1
            claimed.append(QueueEntry(entry_id, self._entries[entry_id], delivery.deliveries))
        return claimed

    def __len__(self) -> int:
        """Entries added and not acknowledged."""
        return len(self._entries)

    def close(self) -> None:
        """Fail every waiting reader."""
        readers, self._readers = self._readers, deque()
        for reader in readers:
            self._cancel_timeout(reader)
            reader.deferred.errback(StoreError("the store was closed"))

    def _has_undelivered(self) -> bool:
        while self._undelivered and self._undelivered[0] not in self._entries:
            self._undelivered.popleft()
        return bool(self._undelivered)

    def _time_out(self, reader: _Reader) -> None:
        reader.timeout = None
        self._readers.remove(reader)
        reader.deferred.callback([])

    def _forget(self, reader: _Reader) -> None:
        self._cancel_timeout(reader)
        if reader in self._readers:
            self._readers.remove(reader)

    @staticmethod
    def _cancel_timeout(reader: _Reader) -> None:
        if reader.timeout is not None and reader.timeout.active():
            reader.timeout.cancel()
        reader.timeout = None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
