"""ACK batching: one store call per reactor turn, retries when the store fails."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from pigeonpush.server.acks import AckBatcher
from pigeonpush.store.model import Message, Notification
from support.logcheck import FailureCollector
from support.server_harness import GatedStore, result_of


def store_with_pending(clock: Clock, client_id: str, *message_ids: str) -> GatedStore:
    store = GatedStore(clock)
    for message_id in message_ids:
        message = Message(message_id, "t", "x", {}, 0.0, 3600.0)
        result_of(store.accept([Notification(message, (client_id,))]))
    return store


def pending(store: GatedStore, client_id: str) -> list[str]:
    ids: list[str] = result_of(store.pending_ids(client_id))
    return ids


def test_acks_of_one_turn_are_one_store_call() -> None:
    clock = Clock()
    store = store_with_pending(clock, "alice", "m1", "m2", "m3")
    acks = AckBatcher(store, clock)

    acks.add("alice", "m1")
    acks.add("alice", "m3")
    acks.add("bob", "m9")
    assert store.acked == []
    clock.advance(0)

    assert store.acked == [[("alice", "m1"), ("alice", "m3"), ("bob", "m9")]]
    assert pending(store, "alice") == ["m2"]
    acks.add("alice", "m2")
    clock.advance(0)
    assert len(store.acked) == 2


def test_large_turns_are_split_into_bounded_batches() -> None:
    clock = Clock()
    store = GatedStore(clock)
    acks = AckBatcher(store, clock, max_batch=100)
    for n in range(250):
        acks.add("alice", f"m{n}")
    clock.advance(0)
    assert [len(batch) for batch in store.acked] == [100, 100, 50]


def test_a_failed_batch_is_retried_after_the_delay() -> None:
    clock = Clock()
    store = store_with_pending(clock, "alice", "m1", "m2")
    store.failing.add("ack")
    acks = AckBatcher(store, clock, retry_delay=2.0)

    acks.add("alice", "m1")
    clock.advance(0)
    acks.add("alice", "m2")  # waits for the retry rather than hammering the store
    clock.advance(0)
    assert len(store.acked) == 1
    assert acks.pending == 2

    store.failing.discard("ack")
    clock.advance(2.0)
    assert store.acked[-1] == [("alice", "m1"), ("alice", "m2")]
    assert pending(store, "alice") == []
    assert acks.pending == 0


def test_acks_kept_for_retry_are_bounded() -> None:
    clock = Clock()
    store = GatedStore(clock)
    store.failing.add("ack")
    acks = AckBatcher(store, clock, max_pending=3)
    for n in range(5):
        acks.add("alice", f"m{n}")
    clock.advance(0)
    assert acks.pending == 3
    store.failing.discard("ack")
    clock.advance(1.0)
    assert store.acked[-1] == [("alice", "m2"), ("alice", "m3"), ("alice", "m4")]


def test_flush_sends_at_once_and_waits_for_the_store() -> None:
    clock = Clock()
    store = store_with_pending(clock, "alice", "m1")
    store.gated.add("ack")
    acks = AckBatcher(store, clock)
    acks.add("alice", "m1")

    flushed = acks.flush()

    assert len(store.acked) == 1  # without waiting for the turn's end
    assert not flushed.called
    store.open("ack")
    assert flushed.called
    assert pending(store, "alice") == []


def test_after_flush_failures_are_not_retried() -> None:
    clock = Clock()
    store = GatedStore(clock)
    store.failing.add("ack")
    acks = AckBatcher(store, clock)
    acks.add("alice", "m1")
    assert result_of(acks.flush()) is None
    assert clock.getDelayedCalls() == []


def test_an_unexpected_store_error_is_logged_as_a_failure(
    logged_failures: FailureCollector,
) -> None:
    clock = Clock()
    store = GatedStore(clock)

    def broken(batch: object) -> Deferred[None]:
        return fail(TypeError("bad batch"))

    store.ack = broken  # type: ignore[method-assign]
    acks = AckBatcher(store, clock)
    acks.add("alice", "m1")
    clock.advance(0)
    assert [failure.type for failure in logged_failures.flush(TypeError)] == [TypeError]
    assert acks.pending == 1  # kept for a retry
