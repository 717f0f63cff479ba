"""One timer for the deadlines of many connections: a coarse deadline wheel.

A connection's auth and idle timeouts used to be one ``DelayedCall`` each
(about 440 bytes, and heap work in the reactor on every frame and ACK that
reset it). Here a connection only keeps its deadline as a float attribute:
a frame or an ACK that pushes it back is one attribute store. The wheel keeps
each watched connection in one bucket, by deadline rounded up to
``resolution`` seconds, and holds one ``callLater`` (only while it watches
something) for the earliest bucket. When a bucket comes due, a connection
whose deadline has passed is told so, and one whose deadline moved since is
put in the bucket of its new deadline (lazily: a connection is looked at
about once per timeout, however often it was touched).

So a deadline is noticed at its time or up to one ``resolution`` later,
never earlier.
"""

from __future__ import annotations

import heapq
import math
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Bucket", "DeadlineWheel", "Watched", "wheel_resolution"]

#: The coarsest resolution: a timeout of 10 s or more fires at most 1 s late.
MAX_RESOLUTION = 1.0
#: A shorter timeout gets a resolution of a tenth of it (at most 10 % late).
RESOLUTION_FRACTION = 0.1


def wheel_resolution(*timeouts: float) -> float:
    """The resolution for these timeouts: 1 s, or a tenth of the shortest
    if that is less (a timeout is then at most 10 % late)."""
    return min(MAX_RESOLUTION, RESOLUTION_FRACTION * min(timeouts))


class Watched(Protocol):
    """What the wheel watches (``ServerProtocol``): its deadline (the clock's
    seconds), the bucket the wheel keeps it in (None: not watched; the wheel
    sets it), and what to do once the deadline has passed."""

    deadline: float
    deadline_bucket: Bucket | None

    def deadline_passed(self) -> None: ...


class Bucket(dict[Watched, None]):
    """The connections due at ``tick`` (times ``resolution``), in the order
    they came (a dict as an ordered set: removal is O(1))."""

    __slots__ = ("tick",)

    def __init__(self, tick: int) -> None:
        super().__init__()
        self.tick = tick


class DeadlineWheel:
    """The deadlines of a factory's connections, on one timer of ``clock``.

    ``watch`` when a connection starts to be watched, and after setting its
    ``deadline`` to another timeout (it moves to its bucket now); pushing the
    deadline back (a frame, an ACK) needs only the attribute store. ``forget``
    when the connection closes: it is not called back after that. ``stop``
    forgets every connection.
    """

    def __init__(self, clock: IReactorTime, resolution: float) -> None:
        if not 0 < resolution < math.inf:
            raise ValueError(f"resolution must be a positive number of seconds, not {resolution}")
        self.clock = clock
        self.resolution = resolution
        self._buckets: dict[int, Bucket] = {}
        #: the ticks of the buckets (and of buckets emptied since: skipped)
        self._ticks: list[int] = []
        self._timer: IDelayedCall | None = None
        self._timer_tick = 0

    def __len__(self) -> int:
        """How many connections are watched."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def watch(self, item: Watched) -> None:
        """Watch ``item`` until its ``deadline`` (or until ``forget``)."""
        tick = math.ceil(item.deadline / self.resolution)
        bucket = item.deadline_bucket
        if bucket is not None:
            if bucket.tick == tick:
                return
            del bucket[item]
            if not bucket:
                self._drop(bucket)
        self._put(item, tick)

    def forget(self, item: Watched) -> None:
        """Stop watching ``item`` (nothing if it is not watched)."""
        bucket = item.deadline_bucket
        if bucket is None:
            return
        item.deadline_bucket = None
        del bucket[item]
        if not bucket:
            self._drop(bucket)

    def stop(self) -> None:
        """Forget every connection and cancel the timer (the server stops)."""
        for bucket in self._buckets.values():
            for item in bucket:
                item.deadline_bucket = None
        self._buckets.clear()
        self._ticks.clear()
        self._cancel()

    # --- buckets and the timer ------------------------------------------------------

    def _put(self, item: Watched, tick: int) -> None:
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = Bucket(tick)
            heapq.heappush(self._ticks, tick)
            if self._timer is None or tick < self._timer_tick:
                self._schedule(tick)
        bucket[item] = None
        item.deadline_bucket = bucket

    def _drop(self, bucket: Bucket) -> None:
        """An emptied bucket goes (its tick stays in the heap until due)."""
        if self._buckets.get(bucket.tick) is bucket:
            del self._buckets[bucket.tick]
        if not self._buckets:
            self._ticks.clear()
            self._cancel()

    def _schedule(self, tick: int) -> None:
        delay = max(0.0, tick * self.resolution - self.clock.seconds())
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            self._timer = self.clock.callLater(delay, self._sweep)
        self._timer_tick = tick

    def _cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _sweep(self) -> None:
        """The due buckets: tell the connections whose deadline has passed,
        move the others to the bucket of their deadline, wait for the next."""
        self._timer = None
        now = self.clock.seconds()
        resolution = self.resolution
        # The tick the timer was set for is due even if the clock's float
        # arithmetic landed a hair before it (a deadline is still compared
        # with ``now``: never early).
        last = max(self._timer_tick, math.floor(now / resolution))
        ticks, buckets = self._ticks, self._buckets
        due = Bucket(last)
        while ticks and ticks[0] <= last:
            tick = heapq.heappop(ticks)
            bucket = buckets.pop(tick, None)
            if bucket is None:
                continue
            for item in bucket:
                deadline = item.deadline
                if deadline <= now:
                    due[item] = None
                    item.deadline_bucket = due
                else:
                    self._put(item, max(math.ceil(deadline / resolution), last + 1))
        for item in list(due):
            # (an earlier one's callback may have closed it, or moved it on)
            if item.deadline_bucket is not due:
                continue
            del due[item]
            if item.deadline <= now:
                item.deadline_bucket = None
                item.deadline_passed()
            else:
                self._put(item, max(math.ceil(item.deadline / resolution), last + 1))
        # (a bucket made above may have set the timer for a later one than
        # the earliest left)
        while ticks and ticks[0] not in buckets:
            heapq.heappop(ticks)
        if ticks and (self._timer is None or ticks[0] < self._timer_tick):
            self._schedule(ticks[0])
