"""The deadline wheel: one timer for the deadlines of many connections, on a
``Clock`` (a deadline is noticed at its time or up to one resolution later)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from twisted.internet.task import Clock

from pigeonpush.server.deadlines import Bucket, DeadlineWheel, wheel_resolution


class Conn:
    """A watched connection: records when its deadline was noticed."""

    __slots__ = ("calls", "clock", "deadline", "deadline_bucket", "name", "on_passed")

    def __init__(self, name: str, deadline: float, clock: Clock) -> None:
        self.name = name
        self.deadline = deadline
        self.deadline_bucket: Bucket | None = None
        self.clock = clock
        #: the clock's time at each call
        self.calls: list[float] = []
        self.on_passed: Callable[[], object] = lambda: None

    def deadline_passed(self) -> None:
        self.calls.append(self.clock.seconds())
        self.on_passed()


def watched(wheel: DeadlineWheel, name: str, deadline: float) -> Conn:
    assert isinstance(wheel.clock, Clock)
    conn = Conn(name, deadline, wheel.clock)
    wheel.watch(conn)
    return conn


def test_a_deadline_is_never_noticed_early_and_at_most_one_resolution_late() -> None:
    clock = Clock()
    wheel = DeadlineWheel(clock, 1.0)
    deadlines = [0.3, 1.0, 1.01, 2.5, 2.99, 7.0]
    conns = [watched(wheel, f"c{index}", deadline) for index, deadline in enumerate(deadlines)]

    while clock.seconds() < 10:
        clock.advance(0.01)

    for conn in conns:
        [when] = conn.calls
        assert conn.deadline <= when <= conn.deadline + 1.0 + 0.01, conn.name


def test_a_deadline_on_a_tick_is_noticed_exactly_then() -> None:
    clock = Clock()
    wheel = DeadlineWheel(clock, 0.5)
    conn = watched(wheel, "a", 5.0)
    clock.advance(4.9)
    assert conn.calls == []
    clock.advance(0.1)
    assert len(conn.calls) == 1


def test_a_touched_connection_is_not_timed_out_and_moves_on() -> None:
    clock = Clock()
    wheel = DeadlineWheel(clock, 1.0)
    conn = watched(wheel, "a", 10.0)
    for _ in range(20):  # touched every 5 s for 100 s: only the attribute
        clock.advance(5)
        conn.deadline = clock.seconds() + 10
    assert conn.calls == []
    clock.advance(9.99)
    assert conn.calls == []
    clock.advance(0.01)
    assert len(conn.calls) == 1
    assert conn.deadline_bucket is None
    assert clock.getDelayedCalls() == []


def test_touching_costs_no_new_delayed_call() -> None:
    clock = Clock()
    wheel = DeadlineWheel(clock, 1.0)
    conns = [watched(wheel, f"c{index}", 90.0) for index in range(100)]
    [timer] = clock.getDelayedCalls()
    for _ in range(1000):
        clock.advance(0.1)
        for conn in conns:
            conn.deadline = clock.seconds() + 90
        assert len(clock.getDelayedCalls()) == 1
    assert all(conn.calls == [] for conn in conns)
    assert timer.called  # (it fired, found them touched, and set the next one)


def test_forgetting_stops_the_callback_and_the_last_one_the_timer() -> None:
    clock = Clock()
    wheel = DeadlineWheel(clock, 1.0)
    assert clock.getDelayedCalls() == []
    first, second = watched(wheel, "a", 3.0), watched(wheel, "b", 5.0)
    assert len(clock.getDelayedCalls()) == 1
    wheel.forget(first)
    wheel.forget(first)  # (twice: nothing)
    assert len(clock.getDelayedCalls()) == 1
    wheel.forget(second)
    assert clock.getDelayedCalls() == []
    assert len(wheel) == 0
    clock.advance(10)
    assert first.calls == [] and second.calls == []


def test_the_timer_exists_only_while_something_is_watched() -> None:
    clock = Clock()
    wheel = DeadlineWheel(clock, 1.0)
    conn = watched(wheel, "a", 2.0)
    [timer] = clock.getDelayedCalls()
    assert timer.getTime() == 2.0
    clock.advance(2)
    assert len(conn.calls) == 1
    assert clock.getDelayedCalls() == []
    later = watched(wheel, "b", 4.5)
    [timer] = clock.getDelayedCalls()
    assert timer.getTime() == 5.0  # rounded up to the resolution
    earlier = watched(wheel, "c", 3.0)
    [timer] = clock.getDelayedCalls()  # moved earlier, still one
    assert timer.getTime() == 3.0
    clock.advance(1)
    assert earlier.calls == [3.0] and later.calls == []
    [timer] = clock.getDelayedCalls()
    assert timer.getTime() == 5.0


def test_watching_again_with_an_earlier_deadline_moves_it() -> None:
    """The auth timeout, then a shorter idle timeout: the idle one counts."""
    clock = Clock()
    wheel = DeadlineWheel(clock, 1.0)
    conn = watched(wheel, "a", 30.0)
    clock.advance(1)
    conn.deadline = 6.0
    wheel.watch(conn)
    clock.advance(4.99)
    assert conn.calls == []
    clock.advance(0.01)
    assert len(conn.calls) == 1
    assert clock.getDelayedCalls() == []


def test_many_connections_with_mixed_deadlines_each_once_in_its_window() -> None:
    rng = random.Random(20)
    clock = Clock()
    wheel = DeadlineWheel(clock, 0.5)
    conns = [watched(wheel, f"c{index}", rng.uniform(0, 60)) for index in range(2000)]
    forgotten = set(rng.sample(range(2000), 200))
    for index in forgotten:
        wheel.forget(conns[index])
    assert len(wheel) == 1800
    while clock.seconds() < 200:
        clock.advance(0.05)
        assert len(clock.getDelayedCalls()) <= 1
        if clock.seconds() > 90:
            continue
        for conn in rng.sample(conns, 20):  # some are touched: later deadlines
            if conn.deadline_bucket is not None and conn.deadline > clock.seconds():
                # (a touch only ever moves a deadline later)
                conn.deadline = max(conn.deadline, clock.seconds() + rng.uniform(0, 30))

    for index, conn in enumerate(conns):
        if index in forgotten:
            assert conn.calls == []
            continue
        [when] = conn.calls
        assert conn.deadline <= when <= conn.deadline + 0.5 + 0.05 + 1e-9, conn.name
    assert len(wheel) == 0
    assert clock.getDelayedCalls() == []


def test_a_connection_closed_by_an_earlier_callback_of_the_same_sweep_is_not_called() -> None:
    clock = Clock()
    wheel = DeadlineWheel(clock, 1.0)
    first, second = watched(wheel, "a", 1.0), watched(wheel, "b", 1.0)
    first.on_passed = lambda: wheel.forget(second)
    clock.advance(1)
    assert len(first.calls) == 1
    assert second.calls == []
    assert second.deadline_bucket is None
    assert clock.getDelayedCalls() == []


def test_a_connection_touched_by_an_earlier_callback_of_the_same_sweep_waits() -> None:
    clock = Clock()
    wheel = DeadlineWheel(clock, 1.0)
    first, second = watched(wheel, "a", 1.0), watched(wheel, "b", 1.0)

    def touch() -> None:
        second.deadline = clock.seconds() + 3

    first.on_passed = touch
    clock.advance(1)
    assert len(first.calls) == 1 and second.calls == []
    clock.advance(2.99)
    assert second.calls == []
    clock.advance(0.01)
    assert len(second.calls) == 1


def test_stop_forgets_everything_and_cancels_the_timer() -> None:
    clock = Clock()
    wheel = DeadlineWheel(clock, 1.0)
    conns = [watched(wheel, f"c{index}", float(index)) for index in range(1, 6)]
    wheel.stop()
    assert clock.getDelayedCalls() == []
    assert len(wheel) == 0
    assert all(conn.deadline_bucket is None for conn in conns)
    clock.advance(10)
    assert all(conn.calls == [] for conn in conns)
    wheel.forget(conns[0])  # (after stop: nothing)


def test_a_deadline_already_past_is_noticed_on_the_next_turn() -> None:
    clock = Clock()
    clock.advance(100)
    wheel = DeadlineWheel(clock, 1.0)
    conn = watched(wheel, "a", 50.0)
    [timer] = clock.getDelayedCalls()
    assert timer.getTime() == 100.0
    clock.advance(0)
    assert len(conn.calls) == 1


def test_the_resolution_is_one_second_or_a_tenth_of_the_shortest_timeout() -> None:
    assert wheel_resolution(10.0, 90.0) == 1.0  # the defaults
    assert wheel_resolution(5.0, 60.0) == 0.5
    assert wheel_resolution(30.0, 0.2) == pytest.approx(0.02)


@pytest.mark.parametrize("resolution", [0.0, -1.0, float("inf"), float("nan")])
def test_a_resolution_that_is_not_a_positive_number_is_refused(resolution: float) -> None:
    with pytest.raises(ValueError, match="resolution must be a positive number"):
        DeadlineWheel(Clock(), resolution)
