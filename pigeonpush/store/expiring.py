"""Keys that expire on an injected clock, the way Redis keys do.

A key is gone from the moment its expiry time is reached: every read checks
it (lazy expiry, as in Redis), and ``Expiries.sweep`` drops the keys nobody
reads again, so memory does not grow with stale sessions and messages. The
sweep pops a heap ordered by expiry time, which costs O(log n) per expiry set
and nothing while no key is due.

A key deleted, set again or given a new expiry leaves its old heap entry
behind (the sweep skips it). So that the heap follows the live keys rather
than every expiry ever set (a finished login left ~0.5 KB until its session
TTL), it is rebuilt from the tables whenever it has doubled since the last
rebuild: at most about two entries per live key, for O(1) amortised work per
expiry set.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

V = TypeVar("V")


#: The heap is never rebuilt below this many entries.
MIN_COMPACT = 1024


class _Sweepable(Protocol):
    def drop_if_expired(self, key: str, now: float) -> None: ...

    def expiring(self) -> Iterator[tuple[str, float]]: ...


class Expiries:
    """The expiry times of every table of one store, soonest first."""

    __slots__ = ("_compact_at", "_heap", "_order", "_tables")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Sweepable, str]] = []
        self._order = itertools.count()
        self._tables: list[_Sweepable] = []
        self._compact_at = MIN_COMPACT

    def register(self, table: _Sweepable) -> None:
        """A table whose keys the heap holds (read back by ``compact``)."""
        self._tables.append(table)

    def schedule(self, expires_at: float, table: _Sweepable, key: str) -> None:
        # The sequence number keeps tables and keys out of the comparison.
        heapq.heappush(self._heap, (expires_at, next(self._order), table, key))
        if len(self._heap) >= self._compact_at:
            self.compact()

    def compact(self) -> None:
        """Rebuild the heap with one entry per key that has an expiry now,
        dropping the entries of keys deleted, set again or re-expired."""
        order = self._order
        heap = [
            (expires_at, next(order), table, key)
            for table in self._tables
            for key, expires_at in table.expiring()
        ]
        heapq.heapify(heap)
        self._heap = heap
        self._compact_at = max(MIN_COMPACT, 2 * len(heap))

    def sweep(self, now: float) -> None:
        """Drop every key whose expiry time has come."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, table, key = heapq.heappop(heap)
            table.drop_if_expired(key, now)

    def __len__(self) -> int:
        return len(self._heap)


class _Item(Generic[V]):
    __slots__ = ("expires_at", "value")

    def __init__(self, value: V, expires_at: float | None) -> None:
        self.value = value
        self.expires_at = expires_at


class ExpiringTable(Generic[V]):
    """One kind of key (AUTH, ROUTE, ...): values with an optional expiry time."""

    __slots__ = ("_expiries", "_items")

    def __init__(self, expiries: Expiries) -> None:
        self._expiries = expiries
        self._items: dict[str, _Item[V]] = {}
        expiries.register(self)

    def get(self, key: str, now: float) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires_at is not None and item.expires_at <= now:
            del self._items[key]
            return None
        return item.value

    def set(self, key: str, value: V, expires_at: float | None) -> None:
        self._items[key] = _Item(value, expires_at)
        if expires_at is not None:
            self._expiries.schedule(expires_at, self, key)

    def expires_at(self, key: str, now: float) -> float | None:
        """The expiry time of a live key (None: no key, or no expiry)."""
        if self.get(key, now) is None:
            return None
        return self._items[key].expires_at

    def expire(self, key: str, expires_at: float, now: float) -> bool:
        """Give a live key a new expiry time; False if there is no such key."""
        if self.get(key, now) is None:
            return False
        self._items[key].expires_at = expires_at
        self._expiries.schedule(expires_at, self, key)
        return True

    def delete(self, key: str, now: float) -> bool:
        if self.get(key, now) is None:
            return False
        del self._items[key]
        return True

    def drop_if_expired(self, key: str, now: float) -> None:
        # A key whose expiry was moved later (or that was set again) stays:
        # get() only drops it if its current expiry has passed.
        self.get(key, now)

    def expiring(self) -> Iterator[tuple[str, float]]:
        """Every held key that has an expiry time, with it (expired ones too)."""
        for key, item in self._items.items():
            if item.expires_at is not None:
                yield key, item.expires_at

    def keys(self, now: float) -> Iterator[str]:
        return (key for key in list(self._items) if self.get(key, now) is not None)

    def __len__(self) -> int:
        """Keys held, including expired ones not swept yet."""
        return len(self._items)
