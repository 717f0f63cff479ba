"""Publishing a node's data at a bounded rate.

A push server may report its connection count on every connect; ZooKeeper and
every watcher would pay for each write. The writer keeps only the latest data,
writes it at most once per interval, never runs two writes at once (so they land
in order), and retries a failed write after a delay.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

_NEVER = float("-inf")


class RateLimitedWriter:
    """Writes the latest submitted value through ``write``, at most once per ``interval``.

    A value equal to the last one written is not written again, unless
    ``rewrite`` asks for it (the node was lost and must be created again).
    """

    __slots__ = (
        "_blocked_until",
        "_clock",
        "_idle_waiters",
        "_in_flight",
        "_interval",
        "_last_write",
        "_latest",
        "_on_error",
        "_retry_delay",
        "_stopped",
        "_timer",
        "_urgent",
        "_write",
        "_written",
    )

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        write: Callable[[bytes], Deferred[None]],
        on_error: Callable[[Failure], None],
        retry_delay: float = 1.0,
    ) -> None:
        if interval < 0 or retry_delay <= 0:
            raise ValueError("interval must be >= 0 and retry_delay > 0")
        self._clock = clock
        self._interval = interval
        self._write = write
        self._on_error = on_error
        self._retry_delay = retry_delay
        self._latest: bytes | None = None
        self._written: bytes | None = None
        self._urgent = False
        self._in_flight: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._last_write = _NEVER
        self._blocked_until = _NEVER
        self._stopped = False
        self._idle_waiters: list[Deferred[None]] = []

    @property
    def latest(self) -> bytes | None:
        return self._latest

    def submit(self, value: bytes, *, urgent: bool = False) -> None:
        """Make ``value`` the data to publish; ``urgent`` skips the rate limit once."""
        if self._stopped:
            return
        self._latest = value
        self._urgent = self._urgent or urgent
        self._kick()

    def rewrite(self) -> None:
        """Write the latest value again now, even if unchanged."""
        if self._stopped:
            return
        self._urgent = True
        self._kick()

    def stop(self) -> Deferred[None]:
        """No more writes; fires once a write in flight has finished."""
        self._stopped = True
        self._cancel_timer()
        if self._in_flight is None:
            idle: Deferred[None] = Deferred()
            idle.callback(None)
            return idle
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _kick(self) -> None:
        if self._stopped or self._in_flight is not None or self._latest is None:
            return
        if not self._urgent and self._latest == self._written:
            self._cancel_timer()
            return
        due = self._blocked_until
        if not self._urgent:
            due = max(due, self._last_write + self._interval)
        delay = due - self._clock.seconds()
        if delay <= 0:
            self._cancel_timer()
            self._start()
        elif self._timer is None or self._timer.getTime() > due:
            self._cancel_timer()
            self._timer = self._clock.callLater(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._kick()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _start(self) -> None:
        value = self._latest
        assert value is not None
        urgent, self._urgent = self._urgent, False
        self._last_write = self._clock.seconds()
        writing: Deferred[None] = maybeDeferred(self._write, value)
        self._in_flight = writing
        writing.addCallbacks(
            self._succeeded, self._failed, callbackArgs=(value,), errbackArgs=(urgent,)
        )

    def _succeeded(self, _: object, value: bytes) -> None:
        self._in_flight = None
        self._written = value
        self._finished()

    def _failed(self, failure: Failure, urgent: bool) -> None:
        self._in_flight = None
        self._written = None
        self._urgent = self._urgent or urgent
        self._blocked_until = self._clock.seconds() + self._retry_delay
        if not self._stopped:
            self._on_error(failure)
        self._finished()

    def _finished(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._kick()
