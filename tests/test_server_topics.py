"""Topic and broadcast messages on the push server: catch-up from the logs on
AUTH_OK and on the heartbeat, positions moved by ACKs without gaps (a hub on
a Clock and the memory store)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.server.session import Session
from pigeonpush.server.topics import BATCH_DELAY, TopicFeed
from pigeonpush.store.memory import MemoryStore
from pigeonpush.store.model import Message
from pigeonpush.topics import BROADCAST
from pigeonpush.wire.frames import Ack, Auth, AuthOk, Nack, Ping, Push
from support.fake_channel import FakeChannel
from support.logcheck import FailureCollector
from support.server_harness import Harness, result_of


def publish(harness: Harness, topic: str, message_id: str, ttl: float = 600) -> None:
    now = harness.clock.seconds()
    message = Message(message_id, f"title {message_id}", "text", {}, now, now + ttl)
    result_of(harness.store.publish(topic, message, 100))


def login(harness: Harness, client_id: str) -> tuple[Any, list[str]]:
    """A device that authenticated, and the messageIds pushed after AUTH_OK."""
    device = harness.connect()
    device.send(Auth(client_id, harness.issue(client_id)))
    frames = device.received()
    assert isinstance(frames[0], AuthOk), frames
    return device, [f.message_id for f in frames[1:] if isinstance(f, Push)]


def pushed(device: object) -> list[str]:
    return [f.message_id for f in device.received() if isinstance(f, Push)]  # type: ignore[attr-defined]


def test_a_device_gets_its_topics_and_broadcast_at_auth_ok() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    publish(harness, "news", "n1")
    publish(harness, BROADCAST, "b1")
    publish(harness, "other", "o1")
    alice, first = login(harness, "alice")
    assert first == ["b1", "n1"]
    assert alice.session.in_flight is not None and list(alice.session.in_flight) == ["b1", "n1"]


def test_acks_move_the_positions_so_a_new_session_gets_nothing_again() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    publish(harness, "news", "n1")
    publish(harness, "news", "n2")
    alice, first = login(harness, "alice")
    assert first == ["n1", "n2"]
    alice.send(Ack("n1"))
    alice.send(Ack("n2"))
    harness.clock.advance(BATCH_DELAY)  # the positions written
    assert result_of(harness.store.catch_up("alice", 10)) == []
    alice.lose()
    _again, first = login(harness, "alice")
    assert first == []


def test_a_position_never_passes_an_entry_not_acked() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    for message_id in ("n1", "n2", "n3"):
        publish(harness, "news", message_id)
    alice, first = login(harness, "alice")
    assert first == ["n1", "n2", "n3"]
    alice.send(Ack("n2"))
    harness.clock.advance(BATCH_DELAY)  # the positions written
    # n1 is not ACKed: the position stays before it, n2 included.
    (caught,) = result_of(harness.store.catch_up("alice", 10))
    assert [e.message.message_id for e in caught.entries] == ["n1", "n2", "n3"]
    alice.send(Ack("n1"))
    harness.clock.advance(BATCH_DELAY)  # the positions written
    (caught,) = result_of(harness.store.catch_up("alice", 10))
    assert [e.message.message_id for e in caught.entries] == ["n3"]


def test_the_heartbeat_reads_what_was_published_meanwhile() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    alice, first = login(harness, "alice")
    assert first == []
    publish(harness, "news", "n1")
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())
    harness.clock.advance(BATCH_DELAY)
    assert pushed(alice) == ["n1"]
    # Still in flight: the next heartbeat does not write it again.
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())
    harness.clock.advance(BATCH_DELAY)
    assert pushed(alice) == []


def test_a_device_at_the_known_ends_is_not_read_and_a_silent_append_comes_within_two_beats() -> (
    None
):
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    publish(harness, "news", "n0")
    publish(harness, BROADCAST, "b0")
    alice, first = login(harness, "alice")
    assert first == ["b0", "n0"]
    for message_id in first:
        alice.send(Ack(message_id))

    def heartbeat() -> list[str]:
        harness.clock.advance(harness.settings.heartbeat)
        alice.send(Ping())
        harness.clock.advance(BATCH_DELAY)
        return pushed(alice)

    # The first heartbeat reads everything (no end known yet), then the ends.
    assert heartbeat() == []
    assert harness.store.known_ends[-1] == {}
    ends = result_of(harness.store.topic_ends([BROADCAST, "news"]))
    # An append the feed never told this server (its feed write failed).
    publish(harness, "news", "n1")
    # At the ends it knows, the device is not read in broadcast or news...
    assert heartbeat() == []
    assert harness.store.known_ends[-1] == ends
    # ...and the ends read at that heartbeat bring n1 at the next.
    assert heartbeat() == ["n1"]


def test_a_feed_entry_moves_the_known_end() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    alice, _ = login(harness, "alice")
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())
    harness.clock.advance(BATCH_DELAY)  # the ends are read: news is empty
    now = harness.clock.seconds()
    message = Message("n1", "t", "x", {}, now, now + 600)
    entry = result_of(harness.store.publish("news", message, 100))
    harness.hub.topics.live([entry])
    assert pushed(alice) == ["n1"]
    alice.send(Ack("n1"))
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())
    harness.clock.advance(BATCH_DELAY)
    # The next heartbeat knows the end the feed told: the device, there, is not read.
    assert harness.store.known_ends[-1]["news"] == entry.position
    assert pushed(alice) == []


def test_the_heartbeats_of_many_devices_share_one_read() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["c1", "c3"], 10))
    devices = [login(harness, f"c{n}")[0] for n in range(5)]
    publish(harness, "news", "n1")
    publish(harness, BROADCAST, "b1")
    reads = harness.store.calls.get("catch_up", 0)
    harness.clock.advance(harness.settings.heartbeat)
    for device in devices:
        device.send(Ping())
    assert harness.store.calls.get("catch_up", 0) == reads  # waiting for the others
    devices[2].lose()  # closed meanwhile: left out

    harness.clock.advance(BATCH_DELAY)

    assert harness.store.calls["catch_up"] == reads + 1
    assert [pushed(device) for device in devices] == [
        ["b1"],
        ["b1", "n1"],
        [],
        ["b1", "n1"],
        ["b1"],
    ]


def test_a_heartbeat_read_that_fails_is_logged_and_made_again_next_heartbeat() -> None:
    harness = Harness(pulls=False)
    alice, _ = login(harness, "alice")
    bob, _ = login(harness, "bob")
    publish(harness, BROADCAST, "b1")
    harness.store.failing.add("catch_up")
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())
    bob.send(Ping())
    harness.clock.advance(BATCH_DELAY)
    assert pushed(alice) == pushed(bob) == []

    harness.store.failing.discard("catch_up")
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())
    bob.send(Ping())
    harness.clock.advance(BATCH_DELAY)
    assert pushed(alice) == pushed(bob) == ["b1"]


def test_a_stopping_hub_drops_the_heartbeat_reads_waiting() -> None:
    harness = Harness(pulls=False)
    alice, _ = login(harness, "alice")
    publish(harness, BROADCAST, "b1")
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())

    harness.hub.stop_timers()
    harness.clock.advance(BATCH_DELAY)

    assert pushed(alice) == []


def test_a_nacked_entry_comes_again_and_one_given_up_on_is_passed() -> None:
    harness = Harness(pulls=False, max_attempts=1)
    publish(harness, BROADCAST, "b1")
    publish(harness, BROADCAST, "b2")
    alice, first = login(harness, "alice")
    assert first == ["b1", "b2"]
    alice.send(Nack("b1"))
    alice.send(Ack("b2"))
    harness.clock.advance(BATCH_DELAY)  # the positions written
    # One attempt only: b1 is given up on, and the position moves past both.
    assert result_of(harness.store.catch_up("alice", 10)) == []


def entry_of(harness: Harness, topic: str, message_id: str) -> Any:
    now = harness.clock.seconds()
    message = Message(message_id, f"title {message_id}", "text", {}, now, now + 600)
    return result_of(harness.store.publish(topic, message, 100))


def test_a_live_entry_reaches_the_subscribed_sessions_encoded_once() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice", "bob"], 10))
    alice, _ = login(harness, "alice")
    bob, _ = login(harness, "bob")
    carol, _ = login(harness, "carol")
    news = entry_of(harness, "news", "n1")
    everyone = entry_of(harness, BROADCAST, "b1")
    harness.hub.topics.live([news, everyone])
    assert pushed(alice) == ["n1", "b1"]
    assert pushed(bob) == ["n1", "b1"]
    assert pushed(carol) == ["b1"]
    # Again (the feed re-read after a failure): in flight, not written twice.
    harness.hub.topics.live([news])
    assert pushed(alice) == []
    # Counted once per entry, as writes.
    assert harness.metrics.counts["pushes.written"] == 5


def test_acks_of_live_entries_move_the_position() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    alice, _ = login(harness, "alice")
    first = entry_of(harness, "news", "n1")
    second = entry_of(harness, "news", "n2")
    harness.hub.topics.live([first, second])
    assert pushed(alice) == ["n1", "n2"]
    alice.send(Ack("n2"))
    harness.clock.advance(BATCH_DELAY)  # the positions written
    (caught,) = result_of(harness.store.catch_up("alice", 10))
    assert [e.message.message_id for e in caught.entries] == ["n1", "n2"]
    alice.send(Ack("n1"))
    harness.clock.advance(BATCH_DELAY)  # the positions written
    assert result_of(harness.store.catch_up("alice", 10)) == []


def test_a_live_entry_after_an_incomplete_catch_up_does_not_move_the_position() -> None:
    harness = Harness(pulls=False)
    harness.hub.topics._limit = 2  # a catch-up that cannot read everything
    result_of(harness.store.subscribe("news", ["alice"], 10))
    for message_id in ("n1", "n2", "n3"):
        entry_of(harness, "news", message_id)
    alice, first = login(harness, "alice")
    assert first == ["n1", "n2"]
    live = entry_of(harness, "news", "n4")
    harness.hub.topics.live([live])
    # Written now, n4 would overtake n3: it waits for a read.
    assert pushed(alice) == []
    for message_id in ("n1", "n2"):
        alice.send(Ack(message_id))
    harness.clock.advance(BATCH_DELAY)  # the positions written
    (caught,) = result_of(harness.store.catch_up("alice", 10))
    assert [e.message.message_id for e in caught.entries] == ["n3", "n4"]
    # The window freed: the catch-up went on without waiting for a heartbeat.
    assert pushed(alice) == ["n3", "n4"]


def test_a_catch_up_larger_than_the_window_goes_on_as_acks_free_it() -> None:
    harness = Harness(pulls=False, ack_window=4)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    published = [f"n{i}" for i in range(10)]
    for message_id in published:
        publish(harness, "news", message_id)
    alice, received = login(harness, "alice")
    assert received == published[:4]

    # No PING: every ACK that leaves half the window free continues the read.
    for _ in range(10):
        in_flight = list(alice.session.in_flight or {})
        for message_id in in_flight:
            alice.send(Ack(message_id))
        harness.clock.advance(BATCH_DELAY)
        received += pushed(alice)

    assert received == published
    assert not alice.session.in_flight


def test_a_catch_up_held_back_by_a_full_socket_goes_on_when_it_drains() -> None:
    harness = Harness(pulls=False, ack_window=4)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    alice, _ = login(harness, "alice")
    alice.pause()  # the device does not read: its socket is full
    for message_id in ("n1", "n2"):
        publish(harness, "news", message_id)
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())
    harness.clock.advance(BATCH_DELAY)
    assert pushed(alice) == []

    alice.resume()
    harness.clock.advance(BATCH_DELAY)

    assert pushed(alice) == ["n1", "n2"]


def test_live_entries_wait_while_the_first_read_is_on_its_way() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    entry_of(harness, "news", "n1")
    harness.store.gated.add("catch_up")
    alice, first = login(harness, "alice")
    assert first == []
    # n2 comes live before the read of n1 has come back: it must not overtake it.
    harness.hub.topics.live([entry_of(harness, "news", "n2")])
    harness.hub.topics.live([entry_of(harness, BROADCAST, "b1")])
    assert pushed(alice) == []
    harness.store.open("catch_up")
    # The read (made now) has all three, in log order, broadcast first.
    assert pushed(alice) == ["b1", "n1", "n2"]


def test_a_session_is_indexed_by_its_topics_until_it_closes() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    alice, _ = login(harness, "alice")
    # Subscribed while connected: the next heartbeat's catch-up indexes it.
    result_of(harness.store.subscribe("sport", ["alice"], 10))
    harness.hub.topics.live([entry_of(harness, "sport", "s1")])
    assert pushed(alice) == []
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())
    harness.clock.advance(BATCH_DELAY)
    assert pushed(alice) == ["s1"]
    harness.hub.topics.live([entry_of(harness, "sport", "s2")])
    assert pushed(alice) == ["s2"]
    alice.lose()
    harness.hub.topics.live([entry_of(harness, "sport", "s3")])
    assert harness.hub.topics._subscribers == {}


def test_the_feed_reader_hands_new_entries_to_the_hub() -> None:
    from pigeonpush.server.topics import FeedReader

    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    alice, _ = login(harness, "alice")
    reader = FeedReader(harness.store, harness.clock, harness.hub.topics.live, block=5.0)
    reader.startService()
    entry_of(harness, "news", "n1")
    harness.clock.advance(BATCH_DELAY)  # the positions written
    assert pushed(alice) == ["n1"]
    harness.clock.advance(5.0)  # a read that timed out is read again
    entry_of(harness, "news", "n2")
    harness.clock.advance(BATCH_DELAY)  # the positions written
    assert pushed(alice) == ["n2"]
    stopping = reader.stopService()
    assert stopping is not None and stopping.called


def test_the_feed_reader_retries_after_a_store_failure() -> None:
    from pigeonpush.server.topics import FeedReader

    harness = Harness(pulls=False)
    delivered: list[Any] = []
    reader = FeedReader(harness.store, harness.clock, delivered.extend, retry=1.0)
    failing = [True]
    real = harness.store.topic_feed

    def topic_feed(after: Any, count: int, block: float) -> Any:
        if failing[0]:
            from twisted.internet.defer import fail

            from pigeonpush.store.interface import StoreError

            return fail(StoreError("Redis is away"))
        return real(after, count, block)

    harness.store.topic_feed = topic_feed  # type: ignore[method-assign]
    reader.startService()
    failing[0] = False
    harness.clock.advance(1.0)
    entry_of(harness, "news", "n1")
    harness.clock.advance(BATCH_DELAY)  # the positions written
    assert [e.message.message_id for e in delivered] == ["n1"]
    reader.stopService()


def test_a_subscription_made_while_connected_takes_effect_at_its_notice() -> None:
    from pigeonpush.store.topic_model import SubscriptionNotice

    harness = Harness(pulls=False)
    alice, _ = login(harness, "alice")
    result_of(harness.store.subscribe("news", ["alice"], 10))
    harness.hub.topics.live([SubscriptionNotice("news", ("alice", "nobody-here"))])
    harness.hub.topics.live([entry_of(harness, "news", "n1")])
    assert pushed(alice) == ["n1"]
    result_of(harness.store.unsubscribe("news", ["alice"]))
    harness.hub.topics.live([SubscriptionNotice("news", ("alice",))])
    harness.hub.topics.live([entry_of(harness, "news", "n2")])
    assert pushed(alice) == []


def test_acks_are_counted_in_the_receipt_once_per_device() -> None:
    harness = Harness(pulls=False, max_attempts=1)
    result_of(harness.store.subscribe("news", ["alice", "bob"], 10))
    entry = entry_of(harness, "news", "n1")
    alice, first = login(harness, "alice")
    bob, _ = login(harness, "bob")
    assert first == ["n1"]
    alice.send(Ack("n1"))
    alice.send(Ack("n1"))  # a repeated ACK counts once
    bob.send(Nack("n1"))  # given up on: not an ACK
    harness.clock.advance(BATCH_DELAY)  # the positions written
    receipt = result_of(harness.store.topic_receipt(entry.message.message_id))
    assert (receipt.targeted, receipt.acked) == (2, 1)


def test_a_push_says_its_topic_to_version_3_sessions_only() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["new", "old"], 10))
    entry_of(harness, "news", "n1")
    new, _ = login(harness, "new")
    old = harness.connect()
    old.send(Auth("old", harness.issue("old"), 2))
    caught_up = [f for f in old.received() if isinstance(f, Push)]
    assert [(p.message_id, p.topic) for p in caught_up] == [("n1", "")]
    harness.hub.topics.live([entry_of(harness, "news", "n2"), entry_of(harness, BROADCAST, "b1")])
    frames = [f for f in new.received() if isinstance(f, Push)]
    assert [(p.message_id, p.topic) for p in frames] == [("n2", "news"), ("b1", BROADCAST)]
    frames = [f for f in old.received() if isinstance(f, Push)]
    assert [(p.message_id, p.topic) for p in frames] == [("n2", ""), ("b1", "")]
    # The catch-up of a version 3 session says it too.
    result_of(harness.store.subscribe("sport", ["late"], 10))
    entry_of(harness, "sport", "s1")
    _, first = login(harness, "late")
    assert first == ["b1", "s1"]


def test_a_version_3_session_is_told_once_what_it_missed() -> None:
    from pigeonpush.wire.frames import Missed

    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice", "old"], 10))
    for n in range(4):
        now = harness.clock.seconds()
        message = Message(f"n{n}", "t", "x", {}, now, now + 600)
        result_of(harness.store.publish("news", message, 2))  # the log keeps 2
    device = harness.connect()
    device.send(Auth("alice", harness.issue("alice")))
    frames = device.received()
    assert Missed("news") in frames
    assert [f.message_id for f in frames if isinstance(f, Push)] == ["n2", "n3"]
    old = harness.connect()
    old.send(Auth("old", harness.issue("old"), 2))
    assert not [f for f in old.received() if isinstance(f, Missed)]


def test_devices_subscribe_themselves_only_to_allowed_topics() -> None:
    from pigeonpush.wire.frames import Subscribe, Subscription, SubscriptionCode, Unsubscribe

    harness = Harness(pulls=False, device_topics=("public.*",), max_topics_per_device=1)
    alice, _ = login(harness, "alice")
    alice.send(Subscribe(1, "private.admin"))
    alice.send(Subscribe(2, "public.news"))
    alice.send(Subscribe(3, "public.sport"))  # one topic at most
    assert alice.received() == [
        Subscription(
            1, SubscriptionCode.NOT_ALLOWED, "devices may not choose this topic (--device-topics)"
        ),
        Subscription(2, SubscriptionCode.OK),
        Subscription(3, SubscriptionCode.TOO_MANY, "at most 1 topics per device"),
    ]
    assert result_of(harness.store.device_topics("alice")) == ["public.news"]
    # Indexed at once: the next live message of the topic comes now.
    harness.hub.topics.live([entry_of(harness, "public.news", "p1")])
    assert pushed(alice) == ["p1"]
    alice.send(Unsubscribe(4, "public.news"))
    assert alice.received() == [Subscription(4, SubscriptionCode.OK)]
    assert result_of(harness.store.device_topics("alice")) == []


def test_a_subscription_the_store_cannot_take_is_unavailable() -> None:
    from pigeonpush.wire.frames import Subscribe, Subscription, SubscriptionCode

    harness = Harness(pulls=False, device_topics=("*",))
    alice, _ = login(harness, "alice")

    def down(*args: Any) -> Any:
        from twisted.internet.defer import fail

        from pigeonpush.store.interface import StoreError

        return fail(StoreError("Redis is away"))

    harness.store.subscribe = down  # type: ignore[method-assign]
    alice.send(Subscribe(9, "news"))
    assert alice.received() == [Subscription(9, SubscriptionCode.UNAVAILABLE, "try again later")]


def test_by_default_no_topic_is_open_to_devices() -> None:
    from pigeonpush.wire.frames import Subscribe, Subscription, SubscriptionCode

    harness = Harness(pulls=False)
    alice, _ = login(harness, "alice")
    alice.send(Subscribe(1, "news"))
    (answer,) = alice.received()
    assert isinstance(answer, Subscription) and answer.code is SubscriptionCode.NOT_ALLOWED


def test_over_tcp_subscribe_needs_version_3() -> None:
    from pigeonpush.wire.frames import Error, ErrorCode, Subscribe, Subscription

    harness = Harness(pulls=False, tcp=True, device_topics=("*",))
    new = harness.connect()
    new.send(Auth("new", harness.issue("new")))
    new.received()
    new.send(Subscribe(1, "news"))
    assert next(f for f in new.received() if isinstance(f, Subscription)).request_id == 1
    old = harness.connect()
    old.send(Auth("old", harness.issue("old"), 2))
    old.received()
    old.send(Subscribe(1, "news"))
    (error,) = [f for f in old.received() if isinstance(f, Error)]
    assert error.code is ErrorCode.UNEXPECTED


def test_an_ack_of_a_topic_entry_costs_no_wait_ack_write() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    entry_of(harness, "news", "n1")
    alice, first = login(harness, "alice")
    assert first == ["n1"]
    alice.send(Ack("n1"))
    alice.send(Ack("unicast-id"))  # not a topic entry: WAIT_ACK as always
    harness.clock.advance(BATCH_DELAY)  # the positions written
    assert harness.store.acked == [[("alice", "unicast-id")]]


def test_a_device_whose_catch_up_fails_is_logged_and_the_others_still_get_theirs(
    logged_failures: FailureCollector,
) -> None:
    clock = Clock()
    store = MemoryStore(clock)
    now = clock.seconds()
    result_of(store.publish(BROADCAST, Message("b1", "title", "text", {}, now, now + 600), 100))
    pushed: list[str] = []

    def push(items: Sequence[PushItem]) -> Deferred[list[PushStatus]]:
        if items[0].client_id == "broken":
            raise RuntimeError("this device cannot take it")
        pushed.extend(f"{item.client_id}:{item.message_id}" for item in items)
        return succeed([PushStatus.WRITTEN] * len(items))

    sessions: dict[str, Session] = {}
    for client_id in ("alice", "broken", "carol"):
        session = sessions[client_id] = Session(FakeChannel())
        session.client_id = client_id
    feed = TopicFeed(store, clock, push, lambda *_: PushStatus.WRITTEN, sessions)
    for session in sessions.values():
        feed.catch_up(session, heartbeat=True)
    clock.advance(BATCH_DELAY)

    assert pushed == ["alice:b1", "carol:b1"]
    [failure] = logged_failures.flush(RuntimeError)
    assert str(failure.value) == "this device cannot take it"


def test_a_read_that_left_before_the_acks_were_stored_pushes_nothing_again() -> None:
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    publish(harness, "news", "n1")
    publish(harness, "news", "n2")
    alice, first = login(harness, "alice")
    assert first == ["n1", "n2"]
    harness.store.gated.add("advance")  # the positions' write is slow
    alice.send(Ack("n1"))
    alice.send(Ack("n2"))
    harness.clock.advance(BATCH_DELAY)
    assert harness.store.held["advance"]
    # A heartbeat's read sees the old positions: n1 and n2 come back from the
    # log, ACKed here already: not pushed again.
    harness.clock.advance(harness.settings.heartbeat)
    alice.send(Ping())
    harness.clock.advance(BATCH_DELAY)
    assert harness.store.calls["catch_up"] >= 2
    assert pushed(alice) == []
    harness.store.release_one("advance")
    assert result_of(harness.store.catch_up("alice", 10)) == []


def test_an_idle_session_keeps_no_topic_containers() -> None:
    # Every connection has a track (broadcast reaches them all): one with
    # nothing in flight holds no dict or set of its own, before its topic
    # entries come and once they are all ACKed (docs/benchmarks.rst, the
    # memory per connection).
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("news", ["alice"], 10))
    bob, first = login(harness, "bob")
    assert first == []
    carol, _ = login(harness, "carol")
    bob_track = harness.hub.topics._tracks[bob.session]
    assert (bob_track.topic_of, bob_track.order, bob_track.settled, bob_track.acked) == (
        None,
        None,
        None,
        None,
    )
    # Their sets of topics (none) and of complete topics (broadcast) are shared.
    carol_track = harness.hub.topics._tracks[carol.session]
    assert bob_track.topics == frozenset() and bob_track.topics is carol_track.topics
    assert bob_track.complete == {BROADCAST} and bob_track.complete is carol_track.complete
    publish(harness, "news", "n1")
    publish(harness, BROADCAST, "b1")
    alice, first = login(harness, "alice")
    assert first == ["n1", "b1"] or first == ["b1", "n1"]
    track = harness.hub.topics._tracks[alice.session]
    assert track.topic_of and track.order
    alice.send(Ack("n1"))
    alice.send(Ack("b1"))
    assert (track.topic_of, track.order, track.settled) == (None, None, None)
    assert track.complete == {"news", BROADCAST}
    bob_complete = harness.hub.topics._tracks[bob.session].complete
    harness.clock.advance(harness.settings.heartbeat)
    bob.send(Ping())
    harness.clock.advance(BATCH_DELAY)
    assert harness.hub.topics._tracks[bob.session].complete is bob_complete


def test_a_topic_entry_that_comes_after_a_first_read_left_is_read_again() -> None:
    """A device's first read left (and found nothing) before a message to its
    topic was appended; the live entry comes before the read's answer, when
    the device is in no topic's index yet. It is read again once the answer
    is in, not at the next heartbeat."""
    harness = Harness(pulls=False)
    result_of(harness.store.subscribe("scores", ["tom"], 10))
    store: Any = harness.store
    original = store.catch_up_many
    held: list[tuple[Deferred[Any], Deferred[Any]]] = []

    def answered_now_delivered_later(*args: Any, **kwargs: Any) -> Deferred[Any]:
        waiting: Deferred[Any] = Deferred()
        held.append((original(*args, **kwargs), waiting))
        return waiting

    store.catch_up_many = answered_now_delivered_later
    tom, first = login(harness, "tom")
    assert first == [] and len(held) == 1
    harness.hub.topics.live([entry_of(harness, "scores", "s1")])
    store.catch_up_many = original

    answer, waiting = held.pop()
    answer.chainDeferred(waiting)

    assert pushed(tom) == ["s1"]
