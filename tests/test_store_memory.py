"""What only the memory backend has: time is the injected clock, stale keys
are swept, and answers come at once."""

from __future__ import annotations

from twisted.internet.task import Clock

from pigeonpush.ids import MessageIdGenerator
from pigeonpush.store import Message, Notification
from pigeonpush.store.memory import MemoryStore


def _store() -> tuple[MemoryStore, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000)
    return MemoryStore(clock, idempotency_ttl=600, receipt_retention=600), clock


def _notification(clock: Clock, recipients: list[str], ttl: float) -> Notification:
    now = clock.seconds()
    message = Message(MessageIdGenerator(clock)(), "t", "x", {}, now, now + ttl)
    return Notification(message, tuple(recipients), None)


def test_answers_are_already_fired() -> None:
    store, _ = _store()
    issued = store.issue_token("alice", "token-1", 60)
    assert issued.called
    answer = store.token("alice")
    assert answer.called
    assert answer.result == "token-1"


def test_stale_keys_are_swept_without_being_read() -> None:
    store, clock = _store()
    for i in range(1000):
        store.issue_token(f"client-{i}", "t", 60)
        store.bind_session(f"client-{i}", "t", "server-a", 60)
    store.accept([_notification(clock, [f"client-{i}" for i in range(1000)], 120)])
    store.issue_token("keeper", "t", 3600)
    # AUTH, ROUTE, WAIT_ACK, body, receipt, queue
    assert store.size() == 1000 + 1000 + 1000 + 1 + 1 + 1 + 1
    clock.advance(61)
    store.ping()  # any call sweeps
    assert store.size() == 1000 + 1 + 1 + 1 + 1
    clock.advance(60)
    store.ping()
    assert store.size() == 1 + 1 + 1  # the keeper's token, the receipt, the (unconsumed) queue
    clock.advance(600)
    store.ping()
    assert store.size() == 1 + 1  # the receipt's retention ended


def test_refreshed_keys_survive_their_first_expiry_time() -> None:
    store, clock = _store()
    store.issue_token("alice", "token-1", 10)
    store.bind_session("alice", "token-1", "server-a", 10)
    clock.advance(9)
    store.refresh_sessions(["alice"], 10)
    clock.advance(9)
    assert store.route("alice").result == "server-a"
    clock.advance(1)
    assert store.route("alice").result is None


def test_a_waiting_consume_ends_exactly_at_block_on_the_clock() -> None:
    store, clock = _store()
    waiting = store.consume("worker-1", 10, 5)
    clock.advance(4.999)
    assert not waiting.called
    clock.advance(0.001)
    assert waiting.called
    assert waiting.result == []
    assert clock.getDelayedCalls() == []


def test_entry_ids_increase_within_one_millisecond() -> None:
    store, clock = _store()
    store.accept([_notification(clock, ["alice"], 60) for _ in range(3)])
    entries = store.consume("worker-1", 10, 0).result
    assert [e.entry_id for e in entries] == [
        "1700000000000-0",
        "1700000000000-1",
        "1700000000000-2",
    ]


def test_close_cancels_the_wait_timers() -> None:
    store, clock = _store()
    waiting = store.consume("worker-1", 10, 5)
    waiting.addErrback(lambda failure: failure.trap(Exception))
    store.close()
    assert clock.getDelayedCalls() == []


def test_the_expiry_heap_follows_the_live_keys() -> None:
    """A finished login (token, bind, refreshes, cleanup) leaves no heap entry
    behind for its session TTL: the heap stays within about two entries per
    live key, however many logins came and went."""
    from pigeonpush.store.expiring import MIN_COMPACT

    store, clock = _store()
    for i in range(20_000):
        client = f"client-{i % 50}"  # 50 devices logging in and out again and again
        token = f"token-{i}"
        store.issue_token(client, token, 300)
        store.bind_session(client, token, "server-a", 86400)
        store.refresh_sessions([client], 86400)
        store.end_session(client, token, "server-a")
        clock.advance(0.001)
    store.issue_token("keeper", "t", 86400)
    assert store.size() == 1
    assert len(store._expiries) <= MIN_COMPACT

    live = [f"live-{i}" for i in range(3000)]
    for client in live:
        store.issue_token(client, "t", 300)
        store.bind_session(client, "t", "server-a", 86400)
    for _ in range(5):
        store.refresh_sessions(live, 86400)
    assert store.size() == 1 + 2 * len(live)
    assert len(store._expiries) <= max(MIN_COMPACT, 2 * store.size())
