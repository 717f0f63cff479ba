"""Failed deliveries: the ACK timeout, NACK, redelivery with backoff on the same
connection, the window that never stays full, and giving up after
--max-attempts failures counted across connections (Clock + the memory store)."""

from __future__ import annotations

import itertools

from pigeonpush.delivery.pull import PendingMessages
from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.server.hub import RETRY_AFTER_MAX
from pigeonpush.server.pull import BATCH_DELAY
from pigeonpush.store.model import Message, Notification
from pigeonpush.wire.frames import (
    PING,
    PONG,
    Ack,
    Auth,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    Nack,
    Push,
)
from support.server_harness import Device, Harness, result_of


def item(client_id: str, n: int) -> PushItem:
    return PushItem(client_id, f"m{n:03d}", f"title {n}", "text")


def push_of(n: int) -> Push:
    return Push(f"m{n:03d}", f"title {n}", "text")


def harness(**settings: object) -> Harness:
    """Pulls answered by delivery's own source over the store (so ACKs and
    drops change what they return); quiet connections stay open for the
    whole test (no PINGs needed)."""
    values: dict[str, object] = {"heartbeat": 30, "idle_timeout": 100_000, "ack_timeout": 10}
    values.update(settings)
    h = Harness(**values)  # type: ignore[arg-type]
    h.hub.pull_source = PendingMessages(h.store, h.clock)
    return h


def plant(h: Harness, *numbers: int) -> None:
    """Messages m<n> pending for alice, in the store."""
    now = h.clock.seconds()
    notes = [
        Notification(Message(f"m{n:03d}", f"title {n}", "text", {}, now, now + 100_000), ("alice",))
        for n in numbers
    ]
    result_of(h.store.accept(notes))


def login(h: Harness, client_id: str) -> tuple[Device, list[str]]:
    """A connection that authenticated, and the ids pushed right after AUTH_OK."""
    token = h.issue(client_id)
    device = h.connect()
    device.send(Auth(client_id, token))
    frames = device.received()
    assert isinstance(frames[0], AuthOk), frames
    h.clock.advance(BATCH_DELAY)
    frames += device.received()
    return device, [frame.message_id for frame in frames[1:] if isinstance(frame, Push)]


def pushed_ids(device: Device) -> list[str]:
    return [frame.message_id for frame in device.received() if isinstance(frame, Push)]


def run(h: Harness, device: Device, seconds: float) -> list[tuple[float, str]]:
    """Advance the clock in 10 ms steps; every PUSH received, with the time
    it came (rounded to 10 ms)."""
    seen = []
    start = h.clock.seconds()
    for step in range(1, round(seconds * 100) + 1):
        h.clock.advance(start + step / 100 - h.clock.seconds())
        seen += [(round(h.clock.seconds(), 2), message_id) for message_id in pushed_ids(device)]
    return seen


def failed_drops(h: Harness) -> list[tuple[str, str, str]]:
    return [drop for batch in h.store.dropped for drop in batch if drop[2] == "failed"]


def test_a_push_not_acked_in_time_is_written_again_with_backoff_until_it_is_dropped() -> None:
    h = harness(ack_timeout=10, max_attempts=5)
    plant(h, 1)
    alice, first = login(h, "alice")
    assert first == ["m001"]

    seen = run(h, alice, 200)

    # Each PUSH times out after 10 s (found by the next check, within 1 s)
    # and is written again 2, 4, 8, 16 s later; the fifth failure drops it.
    assert [message_id for _, message_id in seen] == ["m001"] * 4
    gaps = [b - a for a, b in itertools.pairwise([0.0] + [at for at, _ in seen])]
    for gap, backoff in zip(gaps, [2, 4, 8, 16], strict=True):
        assert 10 + backoff <= gap <= 10 + backoff + 1.05
    assert failed_drops(h) == [("alice", "m001", "failed")]
    assert h.metrics.counts["ack_timeouts"] == 5
    assert h.metrics.counts["failed"] == 1
    assert not alice.closing


def test_the_window_never_stays_full_of_failing_messages() -> None:
    """40 messages whose callback always fails, window 32: the good messages
    behind them still arrive, and the failing ones are dropped in the end."""
    h = harness(ack_window=32, ack_timeout=10, max_attempts=3)
    plant(h, *range(1, 41))
    alice, first = login(h, "alice")
    assert len(first) == 32
    plant(h, *range(41, 46))
    assert h.push(item("alice", 41))[0] is PushStatus.WINDOW_FULL

    good: dict[str, float] = {}
    for _ in range(400):
        h.clock.advance(0.5)
        for message_id in pushed_ids(alice):
            if message_id > "m040":
                good.setdefault(message_id, h.clock.seconds())
                alice.send(Ack(message_id))
    assert sorted(good) == [f"m{n:03d}" for n in range(41, 46)]
    assert max(good.values()) <= 12  # right after the first ACK timeouts
    assert sorted(drop[1] for drop in failed_drops(h)) == [f"m{n:03d}" for n in range(1, 41)]
    assert alice.session.in_flight == {}
    assert alice.session.waiting == {}


def test_a_nack_frees_the_window_at_once_and_honours_retry_after() -> None:
    h = harness(ack_window=1)
    plant(h, 1, 2)
    alice, first = login(h, "alice")
    assert first == ["m001"]

    alice.send(Nack("m001", 30))
    h.clock.advance(1)
    assert pushed_ids(alice) == ["m002"]  # the window was free at once
    alice.send(Ack("m002"))

    seen = run(h, alice, 40)
    [(at, message_id)] = seen
    assert message_id == "m001"
    assert 30 <= at <= 31.05  # NACKed at 0, retry after 30 s (and the next check)
    assert h.metrics.counts["nacks"] == 1


def test_retry_after_is_kept_within_bounds() -> None:
    h = harness(ack_timeout=100_000)
    plant(h, 1)
    alice, _ = login(h, "alice")

    alice.send(Nack("m001", 0.001))
    h.clock.advance(0.99)
    assert pushed_ids(alice) == []  # at least 1 s
    assert [message_id for _, message_id in run(h, alice, 1.1)] == ["m001"]

    alice.send(Nack("m001", 10 * RETRY_AFTER_MAX))
    h.clock.advance(RETRY_AFTER_MAX - 0.01)
    assert pushed_ids(alice) == []  # at most an hour
    assert [message_id for _, message_id in run(h, alice, 1.1)] == ["m001"]


def test_a_nack_without_retry_after_uses_the_backoff() -> None:
    h = harness(ack_timeout=100_000, max_attempts=10)
    plant(h, 1)
    alice, _ = login(h, "alice")
    for backoff in (2, 4, 8, 16):
        alice.send(Nack("m001"))
        h.clock.advance(backoff - 0.01)
        assert pushed_ids(alice) == []
        assert [message_id for _, message_id in run(h, alice, 1.1)] == ["m001"]


def test_failures_are_counted_across_reconnects() -> None:
    """After a reconnect the same failing message does not start over: it is
    dropped once its failures on every connection reach --max-attempts."""
    h = harness(max_attempts=3)
    plant(h, 1, 2)
    alice, first = login(h, "alice")
    assert first == ["m001", "m002"]
    alice.send(Ack("m002"))
    alice.send(Nack("m001"))
    assert [message_id for _, message_id in run(h, alice, 3.1)] == ["m001"]
    alice.send(Nack("m001"))
    alice.lose()

    again, first = login(h, "alice")
    assert first == ["m001"]
    again.send(Nack("m001"))
    h.clock.advance(0)

    assert failed_drops(h) == [("alice", "m001", "failed")]
    assert run(h, again, 60) == []
    assert h.pending("alice") == []


def test_an_ack_after_the_timeout_ends_the_redelivery() -> None:
    h = harness(ack_timeout=10)
    plant(h, 1)
    alice, _ = login(h, "alice")
    h.clock.advance(11.5)
    assert alice.session.in_flight == {}

    alice.send(Ack("m001"))  # the callback was slow, not failed

    assert run(h, alice, 60) == []
    assert alice.session.waiting == {}
    assert h.store.acked[-1] == [("alice", "m001")]


def test_pulls_and_pushes_leave_a_waiting_message_alone_until_its_time() -> None:
    h = harness(heartbeat=5, ack_timeout=100_000)
    plant(h, 1)
    alice, _ = login(h, "alice")
    alice.send(Nack("m001", 60))

    h.clock.advance(5)
    alice.send(PING)
    h.clock.advance(BATCH_DELAY)
    assert alice.received() == [PONG]  # the PING's pull skipped it
    assert h.push(item("alice", 1)) == [PushStatus.WRITTEN]  # and not written by Push
    assert alice.received() == []


def test_a_store_failure_while_counting_still_redelivers() -> None:
    h = harness()
    h.store.failing.add("add_failures")
    plant(h, 1)
    alice, _ = login(h, "alice")

    alice.send(Nack("m001"))

    assert [message_id for _, message_id in run(h, alice, 3.1)] == ["m001"]


def test_a_failed_drop_is_tried_again_at_the_next_failure() -> None:
    h = harness(max_attempts=1)
    h.store.failing.add("drop_pending")
    plant(h, 1)
    alice, _ = login(h, "alice")

    alice.send(Nack("m001"))
    assert [message_id for _, message_id in run(h, alice, 3.1)] == ["m001"]
    h.store.failing.discard("drop_pending")
    alice.send(Nack("m001"))
    h.clock.advance(0)

    assert len(failed_drops(h)) == 2
    assert h.pending("alice") == []


def test_a_nack_in_a_version_1_session_is_unexpected() -> None:
    h = harness(tcp=True)  # the TCP transport refuses it
    token = h.issue("alice")
    alice = h.connect()
    alice.send(Auth("alice", token, 1))
    assert isinstance(alice.received()[0], AuthOk)

    alice.send(Nack("m001"))

    frames: list[Frame] = alice.received()
    assert frames == [Error(ErrorCode.UNEXPECTED, "NACK is not allowed in protocol version 1")]
    assert alice.closing


def test_a_nack_of_an_id_not_in_flight_is_ignored() -> None:
    h = harness()
    alice = h.login("alice")
    alice.send(Nack("m999"))
    h.clock.advance(0)
    assert alice.session.waiting is None
    assert not alice.closing


def test_a_client_whose_socket_is_full_does_not_time_out() -> None:
    h = harness(ack_timeout=10)
    plant(h, 1)
    alice, _ = login(h, "alice")
    alice.pause()
    h.clock.advance(30)
    assert list(alice.session.in_flight or {}) == ["m001"]
    alice.resume()
    h.clock.advance(1)
    assert alice.session.in_flight == {}


def test_the_timer_stops_when_nothing_is_in_flight() -> None:
    h = harness()
    plant(h, 1)
    alice, _ = login(h, "alice")
    alice.send(Ack("m001"))
    h.clock.advance(5)
    assert h.clock.getDelayedCalls() == []  # (a fake channel has no idle timer)


def test_a_drain_leaves_no_timer_behind() -> None:
    h = harness()
    plant(h, 1)
    alice, _ = login(h, "alice")
    alice.send(Nack("m001"))
    draining = h.hub.drain(0)
    alice.lose()
    h.clock.advance(0)
    assert result_of(draining) is None
    assert h.clock.getDelayedCalls() == []
