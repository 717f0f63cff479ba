"""Uplinks in the memory backend: the stream ``PIGEON:{UPLINK}``, its
de-duplication keys, the ``webhook`` consumer group and the dead-letter list,
in one process, with the semantics of the Redis backend (docs/uplink.rst).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from pigeonpush.store import checks
from pigeonpush.store.checks import entry_key
from pigeonpush.store.expiring import Expiries, ExpiringTable
from pigeonpush.store.interface import StoreError
from pigeonpush.store.keys import uplink_seen
from pigeonpush.store.model import DeadUplink, Uplink, UplinkStored


@attrs.define(slots=True, eq=False)
class _Reader:
    after: tuple[int, int]
    count: int
    deferred: Deferred[list[Uplink]]
    timeout: IDelayedCall | None = None
    #: a group reader (claim_uplinks): takes undelivered entries
    consumer: str | None = None


class MemoryUplinks:
    """The uplink part of ``MemoryStore``."""

    def __init__(self, clock: IReactorTime, expiries: Expiries) -> None:
        self._clock = clock
        #: entry id -> uplink (with its entry id), oldest first
        self._stream: OrderedDict[str, Uplink] = OrderedDict()
        self._seen: ExpiringTable[str] = ExpiringTable(expiries)
        self._last = (0, 0)
        self._readers: deque[_Reader] = deque()
        #: the group's last delivered entry, and its pending entries: id -> (consumer, ms)
        self._group_last = (0, 0)
        self._pending: dict[str, tuple[str, int]] = {}
        self._dead: deque[DeadUplink] = deque()

    def __len__(self) -> int:
        return len(self._stream)

    def keys(self, now: float) -> int:
        """Live keys as Redis counts them (stream, SEEN keys, DEAD)."""
        return (1 if self._stream else 0) + sum(1 for _ in self._seen.keys(now)) + bool(self._dead)

    def add(self, uplink: Uplink, dedup_window: float, max_len: int) -> UplinkStored:
        window = checks.positive_seconds(dedup_window, "dedup_window")
        checks.positive_count(max_len, "max_len")
        now = self._clock.seconds()
        seen = uplink_seen(uplink.client_id, uplink.uplink_id)
        first = self._seen.get(seen, now)
        if first is not None:
            return UplinkStored(first, duplicate=True)
        ms = round(now * 1000)
        self._last = (ms, 0) if ms > self._last[0] else (self._last[0], self._last[1] + 1)
        entry_id = f"{self._last[0]}-{self._last[1]}"
        self._stream[entry_id] = attrs.evolve(uplink, entry_id=entry_id)
        while len(self._stream) > max_len:
            old, _ = self._stream.popitem(last=False)
            self._pending.pop(old, None)
        self._seen.set(seen, entry_id, now + window)
        self._wake()
        return UplinkStored(entry_id)

    def read(self, after: str, count: int) -> list[Uplink]:
        cursor = entry_key(after)
        checks.positive_count(count, "count")
        return self._after(cursor, count)

    def wait(self, after: str, count: int, block: float) -> Deferred[list[Uplink]]:
        found = self.read(after, count)
        block = checks.non_negative_seconds(block, "block")
        if found or block <= 0:
            return succeed(found)
        return self._park(_Reader(entry_key(after), count, Deferred(self._cancel)), block)

    def last_id(self) -> str:
        return next(reversed(self._stream)) if self._stream else "0"

    def claim(self, consumer: str, count: int, block: float) -> Deferred[list[Uplink]]:
        checks.positive_count(count, "count")
        block = checks.non_negative_seconds(block, "block")
        taken = self._take(consumer, count)
        if taken or block <= 0:
            return succeed(taken)
        reader = _Reader(self._group_last, count, Deferred(self._cancel), consumer=consumer)
        return self._park(reader, block)

    def reclaim(self, consumer: str, min_idle: float, count: int) -> list[Uplink]:
        idle_ms = round(checks.non_negative_seconds(min_idle, "min_idle") * 1000)
        checks.positive_count(count, "count")
        now_ms = round(self._clock.seconds() * 1000)
        claimed: list[Uplink] = []
        for entry_id, (_, since) in list(self._pending.items()):
            if len(claimed) >= count:
                break
            if now_ms - since >= idle_ms:
                self._pending[entry_id] = (consumer, now_ms)
                claimed.append(self._stream[entry_id])
        return claimed

    def settle(self, entry_ids: Iterable[str]) -> None:
        for entry_id in entry_ids:
            self._pending.pop(entry_id, None)

    def add_dead(self, dead: DeadUplink, max_len: int) -> None:
        checks.positive_count(max_len, "max_len")
        self._dead.appendleft(dead)
        while len(self._dead) > max_len:
            self._dead.pop()

    def dead(self, count: int) -> list[DeadUplink]:
        checks.positive_count(count, "count")
        return list(self._dead)[:count]

    def close(self) -> None:
        readers, self._readers = self._readers, deque()
        for reader in readers:
            self._stop_timer(reader)
            reader.deferred.errback(StoreError("the store was closed"))

    # -- internals ---------------------------------------------------------------

    def _after(self, cursor: tuple[int, int], count: int) -> list[Uplink]:
        found: list[Uplink] = []
        for entry_id in reversed(self._stream):
            if entry_key(entry_id) <= cursor:
                break
            found.append(self._stream[entry_id])
        found.reverse()
        return found[:count]

    def _take(self, consumer: str, count: int) -> list[Uplink]:
        taken = self._after(self._group_last, count)
        if taken:
            self._group_last = entry_key(taken[-1].entry_id)
            now_ms = round(self._clock.seconds() * 1000)
            for uplink in taken:
                self._pending[uplink.entry_id] = (consumer, now_ms)
        return taken

    def _park(self, reader: _Reader, block: float) -> Deferred[list[Uplink]]:
        reader.timeout = self._clock.callLater(block, self._time_out, reader)
        self._readers.append(reader)
        return reader.deferred

    def _wake(self) -> None:
        for reader in list(self._readers):
            if reader.consumer is not None:
                found = self._take(reader.consumer, reader.count)
            else:
                found = self._after(reader.after, reader.count)
            if found:
                self._readers.remove(reader)
                self._stop_timer(reader)
                reader.deferred.callback(found)

    def _time_out(self, reader: _Reader) -> None:
        reader.timeout = None
        self._readers.remove(reader)
        reader.deferred.callback([])

    def _cancel(self, deferred: Deferred[list[Uplink]]) -> None:
        for reader in self._readers:
            if reader.deferred is deferred:
                self._readers.remove(reader)
                self._stop_timer(reader)
                return

    @staticmethod
    def _stop_timer(reader: _Reader) -> None:
        if reader.timeout is not None and reader.timeout.active():
            reader.timeout.cancel()
        reader.timeout = None
