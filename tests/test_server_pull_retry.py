"""Failed pulls are retried by the hub: one timer, capped backoff, every client
it failed for in one batch, at once when a delivery node appears (Clock +
the memory store)."""

from __future__ import annotations

import itertools

from test_server_pull_batch import batching_harness

from pigeonpush.rpc import PushItem
from pigeonpush.rpcpool import RpcUnavailable
from pigeonpush.server.hub import PULL_RETRY_MIN
from pigeonpush.server.pull import BATCH_DELAY
from pigeonpush.wire.frames import Ack, Push


def item(client_id: str, n: int) -> PushItem:
    return PushItem(client_id, f"m{n:03d}", f"title {n}", "text")


def push_of(n: int) -> Push:
    return Push(f"m{n:03d}", f"title {n}", "text")


def test_a_failed_pull_is_retried_without_any_trigger_from_the_client() -> None:
    harness, source = batching_harness(heartbeat=30, idle_timeout=90)
    source.error = RpcUnavailable("no delivery node is known")
    alice = harness.login("alice")
    harness.clock.advance(BATCH_DELAY)
    assert len(source.batches) == 1

    harness.pulls.plant(item("alice", 1))
    source.error = None
    harness.clock.advance(PULL_RETRY_MIN)
    harness.clock.advance(BATCH_DELAY)

    assert alice.received() == [push_of(1)]
    assert len(source.batches) == 2
    harness.clock.advance(100)
    assert len(source.batches) == 2  # succeeded: no more retries


def test_failed_pulls_of_many_clients_are_retried_together_with_capped_backoff() -> None:
    harness, source = batching_harness(heartbeat=8, idle_timeout=90)
    source.error = RpcUnavailable("no delivery node answered")
    devices = [harness.login(f"c{n}") for n in range(3)]
    harness.clock.advance(BATCH_DELAY)
    assert len(source.batches) == 1

    times = [harness.clock.seconds()]
    asked = source.pull_many

    def timed(requests):  # type: ignore[no-untyped-def]
        times.append(harness.clock.seconds())
        return asked(requests)

    source.pull_many = timed  # type: ignore[method-assign]
    for _ in range(2000):
        harness.clock.advance(0.01)
    # Every round is one batch with every client.
    assert all(len(batch) == 3 for batch in source.batches)
    delays = [round(b - a - BATCH_DELAY, 1) for a, b in itertools.pairwise(times)]
    # 0.5, 1, 2, then half a heartbeat at most.
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert set(delays[4:]) == {4.0}

    harness.pulls.plant(item("c1", 1))
    source.error = None
    harness.clock.advance(4)
    harness.clock.advance(BATCH_DELAY)
    assert devices[1].received() == [push_of(1)]
    batches = len(source.batches)
    harness.clock.advance(60)
    assert len(source.batches) == batches


def test_a_delivery_node_appearing_retries_at_once() -> None:
    harness, source = batching_harness(heartbeat=30, idle_timeout=90)
    source.error = RpcUnavailable("no delivery node is known")
    alice = harness.login("alice")
    harness.clock.advance(BATCH_DELAY)
    for _ in range(5):  # backoff grows to 15 s
        harness.clock.advance(harness.settings.heartbeat / 2)
    harness.pulls.plant(item("alice", 1))
    source.error = None

    harness.hub.pull_source_ready()
    harness.clock.advance(BATCH_DELAY)

    assert alice.received() == [push_of(1)]


def test_a_client_acking_live_pushes_gets_its_stranded_messages_within_a_heartbeat() -> None:
    """The scenario of the restarted server: the pull on AUTH_OK fails, the
    client never PINGs because it keeps ACKing live messages; once delivery
    answers again, its pending message arrives within one heartbeat."""
    heartbeat = 10.0
    harness, source = batching_harness(heartbeat=heartbeat, idle_timeout=30)
    source.error = RpcUnavailable("no delivery node is known")
    harness.pulls.plant(item("alice", 1))  # stranded: pending, never pushed live
    alice = harness.login("alice")
    harness.clock.advance(BATCH_DELAY)

    live = 100
    fault_clears = harness.clock.seconds() + 45
    delivered_at = None
    while harness.clock.seconds() < fault_clears + 2 * heartbeat:
        if harness.clock.seconds() >= fault_clears:
            source.error = None
        harness.push(item("alice", live))
        for frame in alice.received():
            assert isinstance(frame, Push)
            alice.send(Ack(frame.message_id))
            if frame.message_id == "m001" and delivered_at is None:
                delivered_at = harness.clock.seconds()
        live += 1
        harness.clock.advance(0.5)

    assert delivered_at is not None
    assert delivered_at - fault_clears <= heartbeat


def test_a_live_push_refused_for_a_full_window_is_pulled_when_the_window_drains() -> None:
    harness, _source = batching_harness(ack_window=2, heartbeat=30, idle_timeout=90)
    alice = harness.login("alice")
    harness.clock.advance(BATCH_DELAY)
    harness.push(item("alice", 1), item("alice", 2))
    harness.pulls.plant(item("alice", 3))
    assert harness.push(item("alice", 3))[0].name == "WINDOW_FULL"
    alice.received()

    alice.send(Ack("m001"))
    harness.clock.advance(BATCH_DELAY)

    assert alice.received() == [push_of(3)]


def test_a_stopping_hub_stops_retrying() -> None:
    harness, source = batching_harness()
    source.error = RpcUnavailable("no delivery node is known")
    harness.login("alice")
    harness.clock.advance(BATCH_DELAY)
    assert len(harness.clock.getDelayedCalls()) == 1  # the retry (a fake channel has no timer)

    harness.hub.stop_timers()

    assert harness.clock.getDelayedCalls() == []
