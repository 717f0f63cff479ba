"""The store contract for topics and broadcast: every test runs against the
memory, the Redis and the Redis Cluster backend (``store_case``, 3 masters and
3 replicas), so every script of a topic or a device touches one slot."""

from __future__ import annotations

import pytest
import pytest_twisted

from pigeonpush.store import keys
from pigeonpush.store.redis_cluster import key_slot
from pigeonpush.store.topic_checks import MAX_BATCH
from pigeonpush.store.topic_keys import (
    subscribers,
    subscriptions,
    topic_idempotency,
    topic_log,
    topic_meta,
)
from pigeonpush.store.topic_model import CatchUp, TopicPosition
from pigeonpush.topics import BROADCAST
from support.stores import StoreCase


async def publish(
    case: StoreCase, topic: str, text: str, *, ttl: float | None = None, max_length: int = 100
):  # type: ignore[no-untyped-def]
    notification = case.notification(["-"], text=text, ttl=ttl)
    return await case.store.publish(topic, notification.message, max_length)


def texts(found: list[CatchUp]) -> dict[str, list[str]]:
    return {c.topic: [e.message.text for e in c.entries] for c in found}


def missed(found: list[CatchUp]) -> set[str]:
    return {c.topic for c in found if c.missed}


async def ack_all(case: StoreCase, client_id: str, found: list[CatchUp]) -> None:
    await case.store.advance(
        client_id, [(c.topic, c.entries[-1].position) for c in found if c.entries]
    )


@pytest_twisted.ensureDeferred
async def test_subscribe_lists_and_counts(store_case: StoreCase) -> None:
    store = store_case.store
    change = await store.subscribe("news", ["alice", "bob", "alice"], 10)
    assert change.added == 2 and change.refused == ()
    assert (await store.subscribe("news", ["alice"], 10)).added == 0
    await store.subscribe("sport", ["alice"], 10)
    assert await store.device_topics("alice") == ["news", "sport"]
    assert await store.device_topics("carol") == []
    assert await store.subscriber_count("news") == 2
    assert await store.unsubscribe("news", ["alice", "carol"]) == 1
    assert await store.device_topics("alice") == ["sport"]
    assert await store.subscriber_count("news") == 1
    assert await store.subscriber_count("nothing") == 0


@pytest_twisted.ensureDeferred
async def test_a_device_holds_at_most_max_topics(store_case: StoreCase) -> None:
    store = store_case.store
    for topic in ("a", "b"):
        await store.subscribe(topic, ["alice"], 2)
    # Broadcast does not count as a topic.
    await publish(store_case, BROADCAST, "hello")
    found = await store.catch_up("alice", 10)
    await ack_all(store_case, "alice", found)
    change = await store.subscribe("c", ["alice", "bob"], 2)
    assert change.added == 1 and change.refused == ("alice",)
    assert await store.device_topics("alice") == ["a", "b"]
    assert await store.subscriber_count("c") == 1


@pytest_twisted.ensureDeferred
async def test_a_subscriber_gets_what_is_published_after_it_subscribed(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    await publish(store_case, "news", "before")
    await store.subscribe("news", ["alice"], 10)
    assert await store.catch_up("alice", 10) == []
    first = await publish(store_case, "news", "one")
    await publish(store_case, "news", "two")
    await publish(store_case, "other", "not subscribed")
    found = await store.catch_up("alice", 10)
    assert texts(found) == {"news": ["one", "two"]}
    assert found[0].entries[0].position == first.position
    assert found[0].entries[0].message.message_id == first.message.message_id
    assert missed(found) == set()


@pytest_twisted.ensureDeferred
async def test_acks_move_the_position_forward_only(store_case: StoreCase) -> None:
    store = store_case.store
    await store.subscribe("news", ["alice"], 10)
    entries = [await publish(store_case, "news", f"m{i}") for i in range(5)]
    await store.advance("alice", [("news", entries[2].position)])
    assert texts(await store.catch_up("alice", 10)) == {"news": ["m3", "m4"]}
    # An older ACK (a late duplicate) does not move it back.
    await store.advance("alice", [("news", entries[0].position)])
    assert texts(await store.catch_up("alice", 10)) == {"news": ["m3", "m4"]}
    assert texts(await store.catch_up("alice", 1)) == {"news": ["m3"]}
    await store.advance("alice", [("news", entries[4].position)])
    assert await store.catch_up("alice", 10) == []


@pytest_twisted.ensureDeferred
async def test_an_ack_for_a_topic_left_is_ignored(store_case: StoreCase) -> None:
    store = store_case.store
    await store.subscribe("news", ["alice"], 10)
    entry = await publish(store_case, "news", "one")
    await store.unsubscribe("news", ["alice"])
    await store.advance("alice", [("news", entry.position)])
    assert await store.device_topics("alice") == []


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_devices_never_seen_within_the_ttl(store_case: StoreCase) -> None:
    store = store_case.store
    assert await store.catch_up("newcomer", 10) == []
    await publish(store_case, BROADCAST, "short", ttl=store_case.ttl)
    await publish(store_case, BROADCAST, "long", ttl=100 * store_case.ttl)
    found = await store.catch_up("newcomer", 10)
    assert texts(found) == {BROADCAST: ["short", "long"]}
    assert missed(found) == set()

    async def only_long() -> bool:
        return texts(await store.catch_up("other", 10)) == {BROADCAST: ["long"]}

    await store_case.eventually(only_long, within=store_case.ttl, what="short one expired")
    await ack_all(store_case, "newcomer", found)
    assert await store.catch_up("newcomer", 10) == []


@pytest_twisted.ensureDeferred
async def test_broadcast_comes_first_then_topics_in_order(store_case: StoreCase) -> None:
    store = store_case.store
    await store.subscribe("b", ["alice"], 10)
    await store.subscribe("a", ["alice"], 10)
    await publish(store_case, "b", "b1")
    await publish(store_case, BROADCAST, "all")
    await publish(store_case, "a", "a1")
    found = await store.catch_up("alice", 10)
    assert [c.topic for c in found] == [BROADCAST, "a", "b"]
    # Each message comes once, through the one audience it was sent to.
    ids = [e.message.message_id for c in found for e in c.entries]
    assert len(ids) == len(set(ids)) == 3


@pytest_twisted.ensureDeferred
async def test_trimmed_past_the_position_is_missed_and_told_once(store_case: StoreCase) -> None:
    store = store_case.store
    await store.subscribe("news", ["alice", "bob"], 10)
    first = await publish(store_case, "news", "m0", max_length=3)
    await store.advance("bob", [("news", first.position)])
    for i in range(1, 5):
        await publish(store_case, "news", f"m{i}", max_length=3)
    found = await store.catch_up("alice", 10)
    assert texts(found) == {"news": ["m2", "m3", "m4"]}
    assert missed(found) == {"news"}
    # bob ACKed m0, and m1 was trimmed: missed too.
    assert missed(await store.catch_up("bob", 10)) == {"news"}
    # Said once: the next read gives what is left, without the flag.
    again = await store.catch_up("alice", 10)
    assert texts(again) == {"news": ["m2", "m3", "m4"]}
    assert missed(again) == set()


@pytest_twisted.ensureDeferred
async def test_catch_up_many_is_each_devices_topics_and_catch_up(store_case: StoreCase) -> None:
    store = store_case.store
    await store.subscribe("news", ["alice", "bob"], 10)
    await store.subscribe("sport", ["alice"], 10)
    first = await publish(store_case, "news", "m0", max_length=3)
    await store.advance("bob", [("news", first.position)])
    for i in range(1, 5):
        await publish(store_case, "news", f"m{i}", max_length=3)
    await publish(store_case, BROADCAST, "all")

    answers = await store.catch_up_many(["alice", "bob", "nobody"], 10)

    assert [topics for topics, _ in answers] == [["news", "sport"], ["news"], []]
    alice, bob, nobody = (found for _, found in answers)
    assert texts(alice) == {BROADCAST: ["all"], "news": ["m2", "m3", "m4"]}
    assert texts(bob) == texts(alice)
    assert missed(alice) == missed(bob) == {"news"}
    assert texts(nobody) == {BROADCAST: ["all"]}
    # The losses were told, and each position moved past them, as catch_up does.
    assert missed(await store.catch_up("alice", 10)) == set()
    assert missed(await store.catch_up("bob", 10)) == set()
    assert await store.catch_up_many([], 10) == []
    with pytest.raises(ValueError):
        await store.catch_up_many(["alice"], 0)


@pytest_twisted.ensureDeferred
async def test_topic_ends_are_each_logs_newest_entry_and_create_nothing(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    assert await store.topic_ends([BROADCAST, "news", "empty"]) == {}
    await store.subscribe("empty", ["alice"], 10)  # gives the topic an epoch, no entry
    await publish(store_case, "news", "m0")
    last = await publish(store_case, "news", "m1")
    everyone = await publish(store_case, BROADCAST, "all")

    ends = await store.topic_ends([BROADCAST, "news", "empty", "unknown"])

    assert ends[BROADCAST] == everyone.position
    assert ends["news"] == last.position
    assert ends["empty"].offset == "0-0"
    assert "unknown" not in ends
    # Nothing was created for the unknown topic: its first publish is its epoch.
    assert "unknown" not in await store.topic_ends(["unknown"])
    with pytest.raises(ValueError):
        await store.topic_ends(["not a topic"])


@pytest_twisted.ensureDeferred
async def test_catch_up_many_skips_a_topic_where_the_device_is_at_the_known_end(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    await store.subscribe("news", ["alice"], 10)
    await publish(store_case, "news", "n0")
    await publish(store_case, BROADCAST, "b0")
    found = await store.catch_up("alice", 10)
    await ack_all(store_case, "alice", found)
    ends = await store.topic_ends([BROADCAST, "news"])
    # At the ends: nothing to read, with or without them.
    assert (await store.catch_up_many(["alice"], 10, ends))[0] == (["news"], [])
    later = await publish(store_case, "news", "n1")

    # Ends the caller has not seen move yet: the device is at them, not read.
    assert (await store.catch_up_many(["alice"], 10, ends))[0] == (["news"], [])
    # Told the new end (by the feed or topic_ends), it is read.
    fresh = {**ends, "news": later.position}
    [(_topics, found)] = await store.catch_up_many(["alice"], 10, fresh)
    assert texts(found) == {"news": ["n1"]}
    # A device with no broadcast position, and a known end of another epoch,
    # are read whatever the ends say.
    [(_topics, found)] = await store.catch_up_many(["bob"], 10, ends)
    assert texts(found) == {BROADCAST: ["b0"]}
    other_epoch = {"news": TopicPosition("another-epoch", later.position.offset)}
    await store.advance("alice", [("news", later.position)])
    stale = await publish(store_case, "news", "n2")
    [(_topics, found)] = await store.catch_up_many(["alice"], 10, other_epoch)
    assert texts(found) == {"news": ["n2"]} and stale.position.offset > later.position.offset


@pytest_twisted.ensureDeferred
async def test_a_catch_up_that_finds_only_expired_entries_moves_the_position_past_them(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    await store.subscribe("news", ["alice"], 10)
    found = [await publish(store_case, "news", "long", ttl=600)]
    await store.advance("alice", [("news", found[0].position)])
    await publish(store_case, "news", "short", ttl=store_case.ttl)
    await publish(store_case, BROADCAST, "b-short", ttl=store_case.ttl)
    await store_case.advance(store_case.ttl + 1)  # both expire unread (alice was away)
    ends = await store.topic_ends([BROADCAST, "news"])

    # Nothing to deliver, in news (after its position) or broadcast (none yet)...
    assert await store.catch_up("alice", 10) == []
    # ...and alice now stands past the expired entries, at the known ends: a
    # heartbeat reads neither log (a read would bring what is published next).
    await publish(store_case, "news", "next")
    await publish(store_case, BROADCAST, "b-next")
    assert await store.catch_up_many(["alice"], 10, ends) == [(["news"], [])]
    assert texts(await store.catch_up("alice", 10)) == {BROADCAST: ["b-next"], "news": ["next"]}


@pytest_twisted.ensureDeferred
async def test_advance_many_moves_each_devices_positions_in_one_call(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    await store.subscribe("news", ["alice", "bob"], 10)
    entries = [await publish(store_case, "news", f"n{i}") for i in range(3)]
    everyone = await publish(store_case, BROADCAST, "all")

    await store.advance_many(
        [
            ("alice", [("news", entries[1].position), (BROADCAST, everyone.position)]),
            ("bob", [("news", entries[2].position)]),
            ("carol", [("news", entries[2].position)]),  # not subscribed: ignored
            ("dave", []),
        ]
    )

    assert texts(await store.catch_up("alice", 10)) == {"news": ["n2"]}
    assert texts(await store.catch_up("bob", 10)) == {BROADCAST: ["all"]}
    assert await store.device_topics("carol") == []
    # Forward only, as advance: an older position changes nothing.
    await store.advance_many([("alice", [("news", entries[0].position)])])
    assert texts(await store.catch_up("alice", 10)) == {"news": ["n2"]}
    await store.advance_many([])
    with pytest.raises(ValueError):
        await store.advance_many([("alice", [("not a topic", entries[0].position)])])


@pytest_twisted.ensureDeferred
async def test_a_position_at_the_trimmed_edge_missed_nothing(store_case: StoreCase) -> None:
    store = store_case.store
    await store.subscribe("news", ["alice"], 10)
    entries = [await publish(store_case, "news", f"m{i}", max_length=2) for i in range(2)]
    await store.advance("alice", [("news", entries[1].position)])
    await publish(store_case, "news", "m2", max_length=2)
    found = await store.catch_up("alice", 10)
    assert texts(found) == {"news": ["m2"]} and missed(found) == set()


@pytest_twisted.ensureDeferred
async def test_a_deleted_topic_unsubscribes_and_starts_a_new_epoch(store_case: StoreCase) -> None:
    store = store_case.store
    await store.subscribe("news", ["alice", "bob"], 10)
    old = await publish(store_case, "news", "old")
    assert await store.delete_topic("news") == 2
    assert await store.device_topics("alice") == []
    assert await store.subscriber_count("news") == 0
    assert await store.delete_topic("news") == 0
    await store.subscribe("news", ["alice"], 10)
    new = await publish(store_case, "news", "new")
    assert new.position.epoch != old.position.epoch
    # An ACK of the old epoch (in flight across the delete) replaces the
    # position: the device is told it may have missed messages (the safe side).
    await store.advance("alice", [("news", old.position)])
    found = await store.catch_up("alice", 10)
    assert texts(found) == {"news": ["new"]} and missed(found) == {"news"}


@pytest_twisted.ensureDeferred
async def test_topic_arguments_are_checked(store_case: StoreCase) -> None:
    store = store_case.store
    message = store_case.notification(["-"]).message
    calls = [
        lambda: store.subscribe("bad topic", ["alice"], 10),
        lambda: store.subscribe("{x}", ["alice"], 10),
        lambda: store.subscribe(BROADCAST, ["alice"], 10),
        lambda: store.subscribe("news", [""], 10),
        lambda: store.subscribe("news", ["alice"], 0),
        lambda: store.subscribe("news", [f"c{i}" for i in range(MAX_BATCH + 1)], 10),
        lambda: store.unsubscribe("x" * 129, ["alice"]),
        lambda: store.delete_topic(""),
        lambda: store.publish("a:b", message, 10),
        lambda: store.publish("news", message, 0),
        lambda: store.catch_up("alice", 0),
        lambda: store.advance("alice", [("news", TopicPosition("e", "nope"))]),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            await call()
    assert await store.device_topics("alice") == []


def test_topic_keys_share_one_slot_per_topic_and_per_device() -> None:
    for key in (topic_meta("news"), topic_log("news"), subscribers("news")):
        assert key.endswith("{topic:news}")
    assert subscriptions("alice").endswith("{alice}")
    # What one PUBLISH script touches: the idempotency key (whatever braces
    # the caller's key holds) lands in the topic's slot too.
    for idempotency_key in ("key-1", "{other}", "}{"):
        published = (
            topic_meta("news"),
            topic_log("news"),
            topic_idempotency("news", idempotency_key),
            subscribers("news"),
        )
        assert {key_slot(key) for key in published} == {key_slot(topic_meta("news"))}
    # A device's subscriptions share the slot of its session keys.
    assert key_slot(subscriptions("alice")) == key_slot(keys.auth("alice"))
    # Topics are spread: not every topic in one slot.
    assert len({key_slot(topic_log(f"t{n}")) for n in range(20)}) > 1


@pytest_twisted.ensureDeferred
async def test_an_idempotency_key_makes_a_repeated_publish_a_no_op(store_case: StoreCase) -> None:
    store = store_case.store
    await store.subscribe("news", ["alice"], 10)
    first_message = store_case.notification(["-"], text="one").message
    first = await store.publish("news", first_message, 100, "key-1")
    assert not first.duplicate
    retry = store_case.notification(["-"], text="one").message
    again = await store.publish("news", retry, 100, "key-1")
    assert again.duplicate
    assert again.message.message_id == first_message.message_id
    assert again.position == first.position
    # The same key on another topic is another request.
    other = await store.publish("sport", retry, 100, "key-1")
    assert not other.duplicate
    assert texts(await store.catch_up("alice", 10)) == {"news": ["one"]}

    async def forgotten() -> bool:
        later = store_case.notification(["-"], text="two").message
        return not (await store.publish("news", later, 100, "key-1")).duplicate

    await store_case.eventually(forgotten, within=store_case.ttl, what="key forgotten")


@pytest_twisted.ensureDeferred
async def test_the_feed_gives_every_topic_message_once_from_now(store_case: StoreCase) -> None:
    store = store_case.store
    await publish(store_case, "news", "before")
    start, entries = await store.topic_feed(None, 10, 0)
    assert entries == []
    one = await publish(store_case, "news", "one")
    two = await publish(store_case, BROADCAST, "two")
    after, entries = await store.topic_feed(start, 10, 0)
    assert [(e.topic, e.message.text) for e in entries] == [("news", "one"), (BROADCAST, "two")]
    assert [e.position for e in entries] == [one.position, two.position]
    assert entries[0].message.message_id == one.message.message_id
    assert await store.topic_feed(after, 10, 0) == (after, [])
    first, entries = await store.topic_feed(start, 1, 0)
    assert [e.message.text for e in entries] == ["one"]
    _, entries = await store.topic_feed(first, 10, 0)
    assert [e.message.text for e in entries] == ["two"]


@pytest_twisted.ensureDeferred
async def test_a_feed_reader_waits_for_the_next_message(store_case: StoreCase) -> None:
    store = store_case.store
    start, _ = await store.topic_feed(None, 10, 0)
    waiting = store.topic_feed(start, 10, 30)
    assert not waiting.called
    await publish(store_case, "news", "one")
    if store_case.clock is not None:
        store_case.clock.advance(0)
    _, entries = await store_case.settle(waiting)
    assert [e.message.text for e in entries] == ["one"]


@pytest_twisted.ensureDeferred
async def test_a_feed_reader_gives_up_after_block_seconds(store_case: StoreCase) -> None:
    store = store_case.store
    start, _ = await store.topic_feed(None, 10, 0)
    waiting = store.topic_feed(start, 10, 0.2)
    if store_case.clock is not None:
        store_case.clock.advance(0.2)
    assert await store_case.settle(waiting) == (start, [])
    with pytest.raises(ValueError):
        await store.topic_feed("nope", 10, 0)
    with pytest.raises(ValueError):
        await store.topic_feed(start, 0, 0)


@pytest_twisted.ensureDeferred
async def test_the_feed_tells_of_changed_subscriptions(store_case: StoreCase) -> None:
    from pigeonpush.store.topic_model import SubscriptionNotice

    store = store_case.store
    start, _ = await store.topic_feed(None, 10, 0)
    await store.subscribe("news", ["alice", "bob"], 10)
    await store.subscribe("news", ["alice"], 10)  # nothing added: no notice
    await store.unsubscribe("news", ["bob"])
    _, items = await store.topic_feed(start, 10, 0)
    assert items == [
        SubscriptionNotice("news", ("alice", "bob")),
        SubscriptionNotice("news", ("bob",)),
    ]


@pytest_twisted.ensureDeferred
async def test_a_topic_receipt_counts_targets_and_acks(store_case: StoreCase) -> None:
    store = store_case.store
    await store.subscribe("news", ["alice", "bob"], 10)
    entry = await publish(store_case, "news", "one", ttl=store_case.ttl)
    everyone = await publish(store_case, BROADCAST, "all")
    receipt = await store.topic_receipt(entry.message.message_id)
    assert receipt is not None
    assert (receipt.topic, receipt.targeted, receipt.acked) == ("news", 2, 0)
    assert receipt.expires_at == entry.message.expires_at
    await store.count_topic_acks([(entry.message.message_id, 1), (everyone.message.message_id, 3)])
    await store.count_topic_acks([(entry.message.message_id, 1), ("unknown", 1)])
    receipt = await store.topic_receipt(entry.message.message_id)
    assert receipt is not None and receipt.acked == 2
    broadcast = await store.topic_receipt(everyone.message.message_id)
    assert broadcast is not None
    assert (broadcast.topic, broadcast.targeted, broadcast.acked) == (BROADCAST, None, 3)
    assert await store.topic_receipt("unknown") is None

    async def gone() -> bool:
        return await store.topic_receipt(entry.message.message_id) is None

    await store_case.eventually(
        gone, within=store_case.ttl + store_case.retention, what="receipt gone"
    )
