"""The rate-limited writer behind ``NodeRegistration.update``, on a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from pigeonpush.discovery.ratelimit import RateLimitedWriter


class Store:
    """Where the writer writes: records each write and its time; ``hold`` makes
    writes stay in flight until released, ``fail_next`` makes the next one fail."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.writes: list[tuple[float, bytes]] = []
        self.errors: list[Failure] = []
        self.hold = False
        self.fail_next: Exception | None = None
        self.in_flight: list[Deferred[None]] = []

    def write(self, value: bytes) -> Deferred[None]:
        self.writes.append((self.clock.seconds(), value))
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        if self.hold:
            pending: Deferred[None] = Deferred()
            self.in_flight.append(pending)
            return pending
        return succeed(None)

    def release(self) -> None:
        self.in_flight.pop(0).callback(None)


def make(interval: float = 1.0, retry_delay: float = 5.0) -> tuple[Clock, Store, RateLimitedWriter]:
    clock = Clock()
    store = Store(clock)
    writer = RateLimitedWriter(clock, interval, store.write, store.errors.append, retry_delay)
    return clock, store, writer


def test_the_first_value_is_written_at_once() -> None:
    _, store, writer = make()
    writer.submit(b"a")
    assert store.writes == [(0.0, b"a")]


def test_values_within_an_interval_make_one_write_of_the_latest() -> None:
    clock, store, writer = make()
    writer.submit(b"a")
    clock.advance(0.2)
    writer.submit(b"b")
    clock.advance(0.3)
    writer.submit(b"c")
    clock.advance(0.49)
    assert store.writes == [(0.0, b"a")]
    clock.advance(0.01)
    assert store.writes == [(0.0, b"a"), (1.0, b"c")]
    clock.advance(10)
    assert len(store.writes) == 2


def test_a_value_after_a_quiet_interval_is_written_at_once() -> None:
    clock, store, writer = make()
    writer.submit(b"a")
    clock.advance(3)
    writer.submit(b"b")
    assert store.writes == [(0.0, b"a"), (3.0, b"b")]


def test_writes_never_overlap_and_land_in_order() -> None:
    clock, store, writer = make()
    store.hold = True
    writer.submit(b"a")
    writer.submit(b"b")
    clock.advance(5)
    assert store.writes == [(0.0, b"a")]  # "b" waits for "a" to finish
    store.release()
    assert store.writes == [(0.0, b"a"), (5.0, b"b")]


def test_an_unchanged_value_is_not_written_again() -> None:
    clock, store, writer = make()
    writer.submit(b"a")
    clock.advance(0.5)
    writer.submit(b"b")
    writer.submit(b"a")  # back to what was written: nothing to do
    clock.advance(5)
    assert store.writes == [(0.0, b"a")]


def test_rewrite_writes_the_latest_value_again_at_once() -> None:
    clock, store, writer = make()
    writer.submit(b"a")
    clock.advance(0.1)
    writer.rewrite()
    assert store.writes == [(0.0, b"a"), (0.1, b"a")]


def test_rewrite_before_any_value_does_nothing() -> None:
    clock, store, writer = make()
    writer.rewrite()
    clock.advance(5)
    assert store.writes == []


def test_an_urgent_value_skips_the_interval() -> None:
    clock, store, writer = make()
    writer.submit(b"a")
    clock.advance(0.1)
    writer.submit(b"b", urgent=True)
    assert store.writes == [(0.0, b"a"), (0.1, b"b")]


def test_a_failed_write_is_reported_and_retried_with_the_latest_value() -> None:
    clock, store, writer = make(retry_delay=5.0)
    store.fail_next = ConnectionError("gone")
    writer.submit(b"a")
    assert len(store.errors) == 1
    assert store.errors[0].check(ConnectionError)
    clock.advance(2)
    writer.submit(b"b")  # not before the retry delay
    clock.advance(2.9)
    assert store.writes == [(0.0, b"a")]
    clock.advance(0.1)
    assert store.writes == [(0.0, b"a"), (5.0, b"b")]


def test_a_failed_rewrite_stays_urgent_but_waits_for_the_retry_delay() -> None:
    clock, store, writer = make(interval=0.0, retry_delay=2.0)
    writer.submit(b"a")
    store.fail_next = ConnectionError("gone")
    writer.rewrite()
    clock.advance(1.9)
    assert len(store.writes) == 2
    clock.advance(0.1)
    assert store.writes[-1] == (2.0, b"a")
    assert len(store.errors) == 1


def test_stop_cancels_the_pending_write_and_waits_for_the_one_in_flight() -> None:
    clock, store, writer = make()
    store.hold = True
    writer.submit(b"a")
    writer.submit(b"b")

    stopped = writer.stop()

    assert not stopped.called
    store.release()
    assert stopped.called
    writer.submit(b"c")
    writer.rewrite()
    clock.advance(10)
    assert store.writes == [(0.0, b"a")]
    assert clock.getDelayedCalls() == []


def test_stop_when_idle_fires_at_once() -> None:
    clock, _, writer = make()
    writer.submit(b"a")
    writer.submit(b"b")
    assert writer.stop().called
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(("interval", "retry_delay"), [(-1.0, 1.0), (1.0, 0.0)])
def test_bad_timings_are_refused(interval: float, retry_delay: float) -> None:
    with pytest.raises(ValueError, match="interval must be >= 0 and retry_delay > 0"):
        store = Store(Clock())
        RateLimitedWriter(Clock(), interval, store.write, store.errors.append, retry_delay)
