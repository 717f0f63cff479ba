"""The due-time poller on the memory store and a Clock (no sockets)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from pigeonpush.delivery.schedule import SchedulePoller
from pigeonpush.ids import MessageIdGenerator
from pigeonpush.store.interface import StoreError
from pigeonpush.store.memory import MemoryStore
from pigeonpush.store.model import Message, Notification


class FlakyStore(MemoryStore):
    """Fails ``release_due`` the next ``failures`` times, as Redis does while it restarts."""

    failures = 0
    calls = 0

    def release_due(self, limit: int, lease: float) -> Deferred[int]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            return fail(StoreError("connection lost"))
        return super().release_due(limit, lease)


def setup(batch: int = 100) -> tuple[Clock, FlakyStore, SchedulePoller, MessageIdGenerator]:
    clock = Clock()
    clock.advance(1_700_000_000)
    store = FlakyStore(clock)
    poller = SchedulePoller(store, clock, interval=0.25, batch=batch)
    return clock, store, poller, MessageIdGenerator(clock)


def schedule(clock: Clock, store: MemoryStore, new_id: MessageIdGenerator, delay: float) -> str:
    now = clock.seconds()
    message = Message(new_id(), "t", "x", {}, now, now + delay + 60)
    store.accept([Notification(message, ("alice",), send_at=now + delay)])
    return message.message_id


def lag(store: MemoryStore) -> int:
    return store.queue_lag().result  # type: ignore[attr-defined,no-any-return]


def test_a_scheduled_message_is_queued_within_the_interval_of_its_time() -> None:
    clock, store, poller, new_id = setup()
    poller.startService()
    schedule(clock, store, new_id, 5.0)
    clock.advance(4.9)
    assert lag(store) == 0
    clock.pump([0.25] * 2)
    assert lag(store) == 1
    assert poller.released == 1
    poller.stopService()
    assert not clock.getDelayedCalls()


def test_a_backlog_is_released_in_bounded_batches_back_to_back() -> None:
    clock, store, poller, new_id = setup(batch=10)
    for _ in range(25):
        schedule(clock, store, new_id, 1.0)
    clock.advance(1.0)
    poller.startService()
    # A full batch: the next tick comes at once (10, 10, then 5), with no
    # time passing; a partial one: the next tick waits the interval.
    clock.advance(0)
    assert lag(store) == 25
    assert (store.calls, poller.released) == (3, 25)
    clock.advance(0.24)
    assert store.calls == 3
    clock.advance(0.01)
    assert store.calls == 4
    poller.stopService()


def test_a_store_error_is_logged_and_retried_next_tick() -> None:
    clock, store, poller, new_id = setup()
    store.failures = 2
    schedule(clock, store, new_id, 0.1)
    poller.startService()
    clock.pump([0.25] * 2)
    assert lag(store) == 0
    clock.advance(0.25)
    assert lag(store) == 1
    poller.stopService()


def test_stop_waits_for_the_tick_in_flight() -> None:
    clock, store, poller, _ = setup()
    pending: Deferred[int] = Deferred()
    store.release_due = lambda limit, lease: pending  # type: ignore[method-assign]
    poller.startService()
    clock.advance(0)
    stopped = poller.stopService()
    assert not stopped.called
    pending.callback(0)
    assert stopped.called
    assert not clock.getDelayedCalls()
