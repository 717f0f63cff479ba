"""Topics and broadcast in the Redis backend (mixed into ``RedisStore``).

A call that spans a topic and its devices runs one script per slot (the
topic's, then each device's) in as few round trips as it can; it is not
atomic as a whole. The device's SUBSCRIPTIONS hash is what delivery reads;
the topic's SUBSCRIBERS set is an index for counts and DELETE, written after
the devices' hashes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred

from pigeonpush.identifiers import check_topic
from pigeonpush.store import checks, topic_checks, topic_keys, topic_scripts
from pigeonpush.store.interface import StoreError
from pigeonpush.store.model import Message
from pigeonpush.store.redis_codec import DecodeError, dump_json, dump_time, load_message
from pigeonpush.store.redis_connection import Command, RedisConnection, Reply, Script, is_error
from pigeonpush.store.topic_model import (
    START,
    CatchUp,
    FeedItem,
    SubscriptionChange,
    SubscriptionNotice,
    TopicEntry,
    TopicPosition,
    TopicReceipt,
    at_or_past,
    offset_key,
)
from pigeonpush.topics import BROADCAST, check_audience

if TYPE_CHECKING:
    from pigeonpush.store.redis_cluster import ClusterConnection

T = TypeVar("T")

#: Devices popped from a topic's subscriber set per round of ``delete_topic``.
DELETE_BATCH = 1000


class RedisTopics:
    """Uses ``RedisStore``'s ``_call``, ``_one``, ``_script``, ``_main`` and ``_reactor``."""

    _main: RedisConnection | ClusterConnection
    _reactor: Any
    _idempotency_ms: int
    _receipt_retention: float

    if TYPE_CHECKING:

        def _call(
            self, operation: Callable[..., Coroutine[Any, Any, T]], *args: Any
        ) -> Deferred[T]: ...

        async def _one(self, *command: str) -> Reply: ...

        async def _script(
            self, script: Script, script_keys: list[str], args: list[str]
        ) -> Reply: ...

        async def _blocking(
            self, key: str, command: Sequence[str], block: float, *, abort_on_cancel: bool = True
        ) -> Reply: ...

    async def _scripts(
        self, calls: Sequence[tuple[Script, Sequence[str], Sequence[str]]]
    ) -> list[Reply]:
        return await self._main.run_scripts(calls)

    # -- subscriptions -------------------------------------------------------------

    def subscribe(
        self, topic: str, client_ids: Sequence[str], max_topics: int
    ) -> Deferred[SubscriptionChange]:
        return self._call(self._subscribe, topic, client_ids, max_topics)

    async def _subscribe(
        self, topic: str, client_ids: Sequence[str], max_topics: int
    ) -> SubscriptionChange:
        topic, ids = topic_checks.subscription(topic, client_ids)
        checks.positive_count(max_topics, "max_topics")
        epoch, offset = await self._script(
            topic_scripts.TOPIC_TAIL,
            [topic_keys.topic_meta(topic), topic_keys.topic_log(topic)],
            [topic_checks.new_epoch()],
        )
        start = TopicPosition(epoch, offset).dump()
        replies = await self._scripts(
            [
                (
                    topic_scripts.SUBSCRIBE_DEVICE,
                    [topic_keys.subscriptions(client_id)],
                    [topic, start, str(max_topics), BROADCAST],
                )
                for client_id in ids
            ]
        )
        added = [c for c, reply in zip(ids, replies, strict=True) if _int(reply) == 1]
        refused = tuple(c for c, reply in zip(ids, replies, strict=True) if _int(reply) == -1)
        if added:
            await self._one("SADD", topic_keys.subscribers(topic), *added)
            await self._notify(topic, added)
        return SubscriptionChange(len(added), refused)

    async def _notify(self, topic: str, client_ids: Sequence[str]) -> None:
        """A SubscriptionNotice in the feed (one entry per call)."""
        await self._one(
            "XADD", topic_keys.TOPIC_FEED, "MAXLEN", "~", str(topic_keys.FEED_LENGTH), "*",
            "topic", topic, "clientIds", dump_json(list(client_ids)),
        )  # fmt: skip

    def unsubscribe(self, topic: str, client_ids: Sequence[str]) -> Deferred[int]:
        return self._call(self._unsubscribe, topic, client_ids)

    async def _unsubscribe(self, topic: str, client_ids: Sequence[str]) -> int:
        topic, ids = topic_checks.subscription(topic, client_ids)
        if not ids:
            return 0
        commands: list[Command] = [
            ("HDEL", topic_keys.subscriptions(client_id), topic) for client_id in ids
        ]
        commands.append(("SREM", topic_keys.subscribers(topic), *ids))
        replies = await self._main.execute(commands)
        await self._notify(topic, ids)
        return sum(_int(reply) for reply in replies[:-1])

    def device_topics(self, client_id: str) -> Deferred[list[str]]:
        return self._call(self._device_topics, client_id)

    async def _device_topics(self, client_id: str) -> list[str]:
        found = await self._one("HKEYS", topic_keys.subscriptions(client_id))
        return sorted(str(topic) for topic in found if topic != BROADCAST)

    def subscriber_count(self, topic: str) -> Deferred[int]:
        return self._call(self._subscriber_count, topic)

    async def _subscriber_count(self, topic: str) -> int:
        return _int(await self._one("SCARD", topic_keys.subscribers(check_topic(topic))))

    def delete_topic(self, topic: str) -> Deferred[int]:
        return self._call(self._delete_topic, topic)

    async def _delete_topic(self, topic: str) -> int:
        topic = check_topic(topic)
        removed = 0
        while True:
            popped = await self._one("SPOP", topic_keys.subscribers(topic), str(DELETE_BATCH))
            if not popped:
                break
            removed += len(popped)
            await self._main.execute(
                [("HDEL", topic_keys.subscriptions(str(c)), topic) for c in popped]
            )
        await self._one("DEL", topic_keys.topic_meta(topic), topic_keys.topic_log(topic))
        return removed

    # -- the log -----------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        message: Message,
        max_length: int,
        idempotency_key: str | None = None,
    ) -> Deferred[TopicEntry]:
        return self._call(self._publish, topic, message, max_length, idempotency_key)

    async def _publish(
        self, topic: str, message: Message, max_length: int, idempotency_key: str | None
    ) -> TopicEntry:
        now = float(self._reactor.seconds())
        remaining = topic_checks.published(topic, message, max_length, now)
        meta = topic_keys.topic_meta(topic)
        key = (
            meta
            if idempotency_key is None
            else topic_keys.topic_idempotency(topic, idempotency_key)
        )
        first, second, *count = await self._script(
            topic_scripts.PUBLISH,
            [meta, topic_keys.topic_log(topic), key, topic_keys.subscribers(topic)],
            [
                topic_checks.new_epoch(),
                str(max_length),
                repr(now),
                str(checks.milliseconds(remaining)),
                message.message_id,
                message.title,
                message.text,
                dump_json(dict(message.extras)),
                dump_time(message.created_at),
                dump_time(message.expires_at),
                "0" if idempotency_key is None else "1",
                str(self._idempotency_ms),
            ],
        )
        if first == 0:
            return topic_checks.replayed(topic, message, str(second))
        epoch, offset = str(first), str(second)
        targeted = "" if topic == BROADCAST else str(count[0])
        receipt = topic_keys.topic_receipt(message.message_id)
        await self._main.execute(
            [
                (
                    "HSET", receipt, "topic", topic, "targeted", targeted,
                    "createdAt", dump_time(message.created_at),
                    "expiresAt", dump_time(message.expires_at), "acked", "0",
                ),
                (
                    "PEXPIRE", receipt,
                    str(checks.milliseconds(remaining + self._receipt_retention)),
                ),
            ]
        )  # fmt: skip
        # The live fan-out's copy: a second key (its own slot). If this write
        # fails, the message is still in the log: devices get it at their
        # next heartbeat's catch-up instead of now.
        await self._one(
            "XADD", topic_keys.TOPIC_FEED, "MAXLEN", "~", str(topic_keys.FEED_LENGTH), "*",
            "topic", topic, "epoch", epoch, "offset", offset,
            *_fields(message),
        )  # fmt: skip
        stored = Message(
            message.message_id,
            message.title,
            message.text,
            dict(message.extras),
            message.created_at,
            message.expires_at,
        )
        return TopicEntry(topic, TopicPosition(epoch, offset), stored)

    def topic_receipt(self, message_id: str) -> Deferred[TopicReceipt | None]:
        return self._call(self._topic_receipt, message_id)

    async def _topic_receipt(self, message_id: str) -> TopicReceipt | None:
        flat = await self._one("HGETALL", topic_keys.topic_receipt(message_id))
        fields = {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
        if not fields:
            return None
        try:
            return TopicReceipt(
                message_id,
                fields["topic"],
                float(fields["createdAt"]),
                float(fields["expiresAt"]),
                int(fields["targeted"]) if fields["targeted"] else None,
                int(fields["acked"]),
            )
        except (KeyError, ValueError) as e:
            raise StoreError(f"bad TOPIC_RECEIPT for {message_id}: {e}") from e

    def count_topic_acks(self, counts: Sequence[tuple[str, int]]) -> Deferred[None]:
        return self._call(self._count_topic_acks, counts)

    async def _count_topic_acks(self, counts: Sequence[tuple[str, int]]) -> None:
        if not counts:
            return
        replies = await self._scripts(
            [(topic_scripts.COUNT_ACKS, [topic_keys.topic_receipt(m)], [str(n)]) for m, n in counts]
        )
        for reply in replies:
            _checked(reply, "topic_count_acks")

    def topic_feed(
        self, after: str | None, count: int, block: float
    ) -> Deferred[tuple[str, list[FeedItem]]]:
        return self._call(self._topic_feed, after, count, block)

    async def _topic_feed(
        self, after: str | None, count: int, block: float
    ) -> tuple[str, list[FeedItem]]:
        checks.positive_count(count, "count")
        block = checks.non_negative_seconds(block, "block")
        if after is None:
            last = await self._one("XREVRANGE", topic_keys.TOPIC_FEED, "+", "-", "COUNT", "1")
            return (str(last[0][0]) if last else START, [])
        offset_key(after)
        command = ["XREAD", "COUNT", str(count)]
        if block > 0:
            command += ["BLOCK", str(checks.milliseconds(block))]
        command += ["STREAMS", topic_keys.TOPIC_FEED, after]
        if block > 0:
            # On a connection of its own (the feed's node on a cluster).
            reply = await self._blocking(topic_keys.TOPIC_FEED, command, block)
        else:
            reply = await self._one(*command)
        if not reply:
            return (after, [])
        raw = reply[0][1]
        entries: list[FeedItem] = []
        for entry_id, flat in raw:
            fields = dict(zip(flat[::2], flat[1::2], strict=False))
            if "clientIds" in fields:
                entries.append(_notice(fields))
                continue
            position = TopicPosition(str(fields.get("epoch")), str(fields.get("offset")))
            message = _entry((entry_id, flat))
            entries.append(TopicEntry(str(fields.get("topic")), position, message))
        return (str(raw[-1][0]), entries)

    def catch_up(self, client_id: str, limit: int) -> Deferred[list[CatchUp]]:
        return self._call(self._catch_up, client_id, limit)

    async def _catch_up(self, client_id: str, limit: int) -> list[CatchUp]:
        [(_topics, found)] = await self._catch_up_many([client_id], limit)
        return found

    def catch_up_many(
        self,
        client_ids: Sequence[str],
        limit: int,
        known_ends: Mapping[str, TopicPosition] | None = None,
    ) -> Deferred[list[tuple[list[str], list[CatchUp]]]]:
        return self._call(self._catch_up_many, client_ids, limit, known_ends)

    def topic_ends(self, topics: Sequence[str]) -> Deferred[dict[str, TopicPosition]]:
        return self._call(self._topic_ends, topics)

    async def _topic_ends(self, topics: Sequence[str]) -> dict[str, TopicPosition]:
        names = [check_audience(topic) for topic in topics]
        replies = await self._scripts(
            [
                (topic_scripts.TOPIC_END, [topic_keys.topic_meta(t), topic_keys.topic_log(t)], [])
                for t in names
            ]
        )
        ends = {}
        for topic, reply in zip(names, replies, strict=True):
            reply = _checked(reply, topic_scripts.TOPIC_END.name)
            if reply:
                epoch, offset = reply
                ends[topic] = TopicPosition(str(epoch), str(offset))
        return ends

    async def _catch_up_many(
        self,
        client_ids: Sequence[str],
        limit: int,
        known_ends: Mapping[str, TopicPosition] | None = None,
    ) -> list[tuple[list[str], list[CatchUp]]]:
        """Three round trips for any number of devices: every device's
        positions (its topics are their keys), every log read (but where the
        device is at a known end), every reset."""
        checks.positive_count(limit, "limit")
        if not client_ids:
            return []
        keys = [topic_keys.subscriptions(client_id) for client_id in client_ids]
        flats = await self._main.execute([("HGETALL", key) for key in keys])
        now = repr(float(self._reactor.seconds()))
        calls = []
        devices: list[tuple[dict[str, str], list[str], list[str]]] = []
        for flat in flats:
            flat = _checked(flat, "HGETALL")
            held = {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
            topics = [BROADCAST, *sorted(t for t in held if t != BROADCAST)]
            read: list[str] = []
            devices.append((held, topics, read))
            for topic in topics:
                position = TopicPosition.load(held[topic]) if topic in held else None
                if known_ends is not None and at_or_past(position, known_ends.get(topic)):
                    continue
                read.append(topic)
                calls.append(
                    (
                        topic_scripts.READ_AFTER,
                        [topic_keys.topic_meta(topic), topic_keys.topic_log(topic)],
                        [
                            topic_checks.new_epoch(),
                            position.epoch if position else "",
                            position.offset if position else START,
                            str(limit),
                            now,
                        ],
                    )
                )
        replies = iter(await self._scripts(calls))
        answers: list[tuple[list[str], list[CatchUp]]] = []
        advances = []
        for key, (held, topics, read) in zip(keys, devices, strict=True):
            found = []
            resets: list[str] = [BROADCAST]
            for topic in read:
                epoch, missed, trimmed, raw, passed = _checked(next(replies), "topic_read_after")
                entries = tuple(
                    TopicEntry(topic, TopicPosition(str(epoch), str(entry[0])), _entry(entry))
                    for entry in raw
                )
                if missed == 1:
                    reset = TopicPosition(str(epoch), str(trimmed) or START)
                    resets += [topic, reset.epoch, reset.offset, "1", held[topic]]
                elif passed:
                    # Only expired entries after the position: it moves past
                    # them (forward only), so the next heartbeat, at the log's
                    # end, reads nothing.
                    resets += [topic, str(epoch), str(passed), "0", ""]
                if entries or missed == 1:
                    found.append(CatchUp(topic, entries, missed == 1))
            if len(resets) > 1:
                advances.append((topic_scripts.ADVANCE, [key], resets))
            answers.append((topics[1:], found))
        if advances:
            for reply in await self._scripts(advances):
                _checked(reply, topic_scripts.ADVANCE.name)
        return answers

    def advance(
        self, client_id: str, positions: Sequence[tuple[str, TopicPosition]]
    ) -> Deferred[None]:
        return self._call(self._advance, client_id, positions)

    async def _advance(
        self, client_id: str, positions: Sequence[tuple[str, TopicPosition]]
    ) -> None:
        await self._advance_many([(client_id, positions)])

    def advance_many(
        self, advances: Sequence[tuple[str, Sequence[tuple[str, TopicPosition]]]]
    ) -> Deferred[None]:
        return self._call(self._advance_many, advances)

    async def _advance_many(
        self, advances: Sequence[tuple[str, Sequence[tuple[str, TopicPosition]]]]
    ) -> None:
        """One pipelined ``ADVANCE`` per device (each in the device's slot)."""
        calls = []
        for client_id, positions in advances:
            topic_checks.advances(positions)
            if not positions:
                continue
            args = [BROADCAST]
            for topic, position in positions:
                args += [topic, position.epoch, position.offset, "0", ""]
            calls.append((topic_scripts.ADVANCE, [topic_keys.subscriptions(client_id)], args))
        if calls:
            for reply in await self._scripts(calls):
                _checked(reply, topic_scripts.ADVANCE.name)


def _int(reply: Reply) -> int:
    if is_error(reply):
        raise StoreError(f"Redis refused a topic command: {reply}")
    return int(reply)


def _checked(reply: Reply, what: str) -> Reply:
    if is_error(reply):
        raise StoreError(f"Redis refused {what}: {reply}")
    return reply


def _fields(message: Message) -> list[str]:
    """TOPIC_FIELDS with their values, in order."""
    values = (
        message.message_id,
        message.title,
        message.text,
        dump_json(dict(message.extras)),
        dump_time(message.created_at),
        dump_time(message.expires_at),
    )
    return [item for pair in zip(topic_keys.TOPIC_FIELDS, values, strict=True) for item in pair]


def _entry(entry: Sequence[Any]) -> Message:
    fields = dict(zip(entry[1][::2], entry[1][1::2], strict=False))
    message_id = str(fields.get("messageId", ""))
    try:
        message = load_message(
            message_id, [fields.get(name) for name in topic_keys.TOPIC_FIELDS[1:]]
        )
    except DecodeError as e:
        raise StoreError(str(e)) from e
    if message is None:
        raise StoreError(f"a topic log entry {entry[0]} without a title")
    return message


def _notice(fields: dict[Any, Any]) -> SubscriptionNotice:
    try:
        client_ids = json.loads(str(fields["clientIds"]))
        return SubscriptionNotice(str(fields["topic"]), tuple(str(c) for c in client_ids))
    except (KeyError, ValueError, TypeError) as e:
        raise StoreError(f"a topic feed notice does not decode: {e}") from e
