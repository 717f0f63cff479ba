"""Topics and broadcast in the memory backend: the same semantics as the
Redis scripts of ``redis_topics``, on the store's clock."""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime

from pigeonpush.identifiers import check_topic
from pigeonpush.store import checks, topic_checks, topic_keys
from pigeonpush.store.expiring import Expiries, ExpiringTable
from pigeonpush.store.model import Message
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

P = ParamSpec("P")
T = TypeVar("T")


@attrs.define(slots=True)
class _Log:
    """A topic's meta hash and its stream (PIGEON:TOPIC and PIGEON:TOPIC_LOG)."""

    epoch: str
    #: the newest offset trimmed by length (None: nothing was)
    trimmed: str | None = None
    entries: list[tuple[str, Message]] = attrs.field(factory=list)
    last: tuple[int, int] = (0, 0)

    def next_offset(self, now: float) -> str:
        """A stream id: the clock's milliseconds, then a sequence (increasing
        even if the clock stands still or steps back)."""
        ms = int(now * 1000)
        last_ms, last_seq = self.last
        self.last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{self.last[0]}-{self.last[1]}"

    def live(self, now: float) -> None:
        """Drop the expired entries (the Redis log expires with its longest TTL)."""
        self.entries = [(o, m) for o, m in self.entries if m.expires_at > now]


class MemoryTopics:
    """Mixed into ``MemoryStore``: its ``_run`` and ``_clock`` are used."""

    _clock: IReactorTime
    _expiries: Expiries
    _idempotency_ttl: float
    _receipt_retention: float

    if TYPE_CHECKING:

        def _run(
            self, operation: Callable[P, T], *args: P.args, **kwargs: P.kwargs
        ) -> Deferred[T]: ...

    def _init_topics(self) -> None:
        #: clientId -> topic (or BROADCAST) -> stored position ("" before any)
        self._subscriptions: dict[str, dict[str, str]] = {}
        #: topic -> subscribed clientIds (PIGEON:SUBSCRIBERS)
        self._members: dict[str, set[str]] = {}
        self._logs: dict[str, _Log] = {}
        #: PIGEON:TOPIC_FEED: (id, entry), and the readers waiting for the next
        self._feed: collections.deque[tuple[str, FeedItem]] = collections.deque(
            maxlen=topic_keys.FEED_LENGTH
        )
        self._feed_log = _Log("")
        self._feed_readers: list[tuple[Deferred[tuple[str, list[FeedItem]]], str, int]] = []
        #: PIGEON:TOPIC_RECEIPT:{messageId}
        self._topic_receipts: ExpiringTable[TopicReceipt] = ExpiringTable(self._expiries)
        #: PIGEON:IDEMPOTENCY:{topic:name}<key> -> "<messageId> <epoch> <offset>"
        self._topic_idempotency: ExpiringTable[str] = ExpiringTable(self._expiries)

    def _now(self) -> float:
        return float(self._clock.seconds())

    def _log(self, topic: str) -> _Log:
        log = self._logs.get(topic)
        if log is None:
            log = self._logs[topic] = _Log(topic_checks.new_epoch())
        return log

    def _tail(self, topic: str) -> TopicPosition:
        log = self._log(topic)
        log.live(self._now())
        return TopicPosition(log.epoch, log.entries[-1][0] if log.entries else START)

    # -- subscriptions -----------------------------------------------------------

    def subscribe(
        self, topic: str, client_ids: Sequence[str], max_topics: int
    ) -> Deferred[SubscriptionChange]:
        return self._run(self._subscribe, topic, client_ids, max_topics)

    def _subscribe(
        self, topic: str, client_ids: Sequence[str], max_topics: int
    ) -> SubscriptionChange:
        topic, ids = topic_checks.subscription(topic, client_ids)
        checks.positive_count(max_topics, "max_topics")
        tail = self._tail(topic).dump()
        added = 0
        refused = []
        changed: list[str] = []
        for client_id in ids:
            held = self._subscriptions.setdefault(client_id, {})
            if topic in held:
                continue
            if len(held) - (BROADCAST in held) >= max_topics:
                refused.append(client_id)
                continue
            held[topic] = tail
            self._members.setdefault(topic, set()).add(client_id)
            added += 1
            changed.append(client_id)
        self._notify(topic, changed)
        return SubscriptionChange(added, tuple(refused))

    def _notify(self, topic: str, client_ids: Sequence[str]) -> None:
        if client_ids:
            notice = SubscriptionNotice(topic, tuple(client_ids))
            self._feed.append((self._feed_log.next_offset(self._now()), notice))
            self._clock.callLater(0, self._wake_feed_readers)

    def unsubscribe(self, topic: str, client_ids: Sequence[str]) -> Deferred[int]:
        return self._run(self._unsubscribe, topic, client_ids)

    def _unsubscribe(self, topic: str, client_ids: Sequence[str]) -> int:
        topic, ids = topic_checks.subscription(topic, client_ids)
        removed = 0
        members = self._members.get(topic, set())
        for client_id in ids:
            held = self._subscriptions.get(client_id)
            if held is not None and held.pop(topic, None) is not None:
                removed += 1
                if not held:
                    del self._subscriptions[client_id]
            members.discard(client_id)
        if not members:
            self._members.pop(topic, None)
        self._notify(topic, ids)
        return removed

    def device_topics(self, client_id: str) -> Deferred[list[str]]:
        return self._run(self._device_topics, client_id)

    def _device_topics(self, client_id: str) -> list[str]:
        return sorted(t for t in self._subscriptions.get(client_id, {}) if t != BROADCAST)

    def subscriber_count(self, topic: str) -> Deferred[int]:
        return self._run(self._subscriber_count, topic)

    def _subscriber_count(self, topic: str) -> int:
        return len(self._members.get(check_topic(topic), ()))

    def delete_topic(self, topic: str) -> Deferred[int]:
        return self._run(self._delete_topic, topic)

    def _delete_topic(self, topic: str) -> int:
        topic = check_topic(topic)
        members = self._members.pop(topic, set())
        for client_id in members:
            held = self._subscriptions.get(client_id)
            if held is not None:
                held.pop(topic, None)
                if not held:
                    del self._subscriptions[client_id]
        self._logs.pop(topic, None)
        return len(members)

    # -- the log -------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        message: Message,
        max_length: int,
        idempotency_key: str | None = None,
    ) -> Deferred[TopicEntry]:
        return self._run(self._publish, topic, message, max_length, idempotency_key)

    def _publish(
        self, topic: str, message: Message, max_length: int, idempotency_key: str | None
    ) -> TopicEntry:
        now = self._now()
        topic_checks.published(topic, message, max_length, now)
        if idempotency_key is not None:
            first = self._topic_idempotency.get(
                topic_keys.topic_idempotency(topic, idempotency_key), now
            )
            if first is not None:
                return topic_checks.replayed(topic, message, first)
        log = self._log(topic)
        log.live(now)
        message = attrs.evolve(message, extras=dict(message.extras))
        offset = log.next_offset(now)
        log.entries.append((offset, message))
        if len(log.entries) > max_length:
            over = len(log.entries) - max_length
            log.trimmed = log.entries[over - 1][0]
            del log.entries[:over]
        if idempotency_key is not None:
            self._topic_idempotency.set(
                topic_keys.topic_idempotency(topic, idempotency_key),
                f"{message.message_id} {log.epoch} {offset}",
                now + self._idempotency_ttl,
            )
        targeted = None if topic == BROADCAST else len(self._members.get(topic, ()))
        self._topic_receipts.set(
            message.message_id,
            TopicReceipt(
                message.message_id, topic, message.created_at, message.expires_at, targeted, 0
            ),
            message.expires_at + self._receipt_retention,
        )
        entry = TopicEntry(topic, TopicPosition(log.epoch, offset), message)
        self._feed.append((self._feed_log.next_offset(now), entry))
        self._clock.callLater(0, self._wake_feed_readers)
        return entry

    def topic_feed(
        self, after: str | None, count: int, block: float
    ) -> Deferred[tuple[str, list[FeedItem]]]:
        return ensureDeferred(self._topic_feed(after, count, block))

    async def _topic_feed(
        self, after: str | None, count: int, block: float
    ) -> tuple[str, list[FeedItem]]:
        found = await self._run(self._topic_feed_now, after, count, block)
        if after is None or found[1] or block <= 0:
            return found
        reader: Deferred[tuple[str, list[FeedItem]]] = Deferred(self._forget_feed_reader)
        self._feed_readers.append((reader, after, count))
        timer = self._clock.callLater(block, self._feed_timed_out, reader, after)
        try:
            return await reader
        finally:
            if timer.active():
                timer.cancel()

    def _topic_feed_now(
        self, after: str | None, count: int, block: float
    ) -> tuple[str, list[FeedItem]]:
        checks.positive_count(count, "count")
        checks.non_negative_seconds(block, "block")
        if after is None:
            return (self._feed[-1][0] if self._feed else START, [])
        return self._feed_after(after, count)

    def _feed_after(self, after: str, count: int) -> tuple[str, list[FeedItem]]:
        key = offset_key(after)
        found = [(i, e) for i, e in self._feed if offset_key(i) > key][:count]
        return (found[-1][0] if found else after, [e for _, e in found])

    def _wake_feed_readers(self) -> None:
        readers, self._feed_readers = self._feed_readers, []
        for reader, after, count in readers:
            found = self._feed_after(after, count)
            if found[1]:
                reader.callback(found)
            else:
                self._feed_readers.append((reader, after, count))

    def _feed_timed_out(self, reader: Deferred[tuple[str, list[FeedItem]]], after: str) -> None:
        self._forget_feed_reader(reader)
        if not reader.called:
            reader.callback((after, []))

    def _forget_feed_reader(self, reader: Deferred[tuple[str, list[FeedItem]]]) -> None:
        self._feed_readers = [r for r in self._feed_readers if r[0] is not reader]

    def topic_receipt(self, message_id: str) -> Deferred[TopicReceipt | None]:
        return self._run(self._topic_receipts.get, message_id, self._now())

    def count_topic_acks(self, counts: Sequence[tuple[str, int]]) -> Deferred[None]:
        return self._run(self._count_topic_acks, counts)

    def _count_topic_acks(self, counts: Sequence[tuple[str, int]]) -> None:
        now = self._now()
        for message_id, count in counts:
            receipt = self._topic_receipts.get(message_id, now)
            if receipt is not None:
                expires_at = self._topic_receipts.expires_at(message_id, now)
                self._topic_receipts.set(
                    message_id, attrs.evolve(receipt, acked=receipt.acked + count), expires_at
                )

    def catch_up(self, client_id: str, limit: int) -> Deferred[list[CatchUp]]:
        return self._run(self._catch_up, client_id, limit)

    def catch_up_many(
        self,
        client_ids: Sequence[str],
        limit: int,
        known_ends: Mapping[str, TopicPosition] | None = None,
    ) -> Deferred[list[tuple[list[str], list[CatchUp]]]]:
        return self._run(self._catch_up_many, client_ids, limit, known_ends)

    def _catch_up_many(
        self,
        client_ids: Sequence[str],
        limit: int,
        known_ends: Mapping[str, TopicPosition] | None,
    ) -> list[tuple[list[str], list[CatchUp]]]:
        checks.positive_count(limit, "limit")
        return [
            (self._device_topics(client_id), self._catch_up(client_id, limit, known_ends))
            for client_id in client_ids
        ]

    def topic_ends(self, topics: Sequence[str]) -> Deferred[dict[str, TopicPosition]]:
        return self._run(self._topic_ends, topics)

    def _topic_ends(self, topics: Sequence[str]) -> dict[str, TopicPosition]:
        ends = {}
        for topic in topics:
            log = self._logs.get(check_audience(topic))
            if log is not None:
                ends[topic] = TopicPosition(log.epoch, log.entries[-1][0] if log.entries else START)
        return ends

    def _catch_up(
        self,
        client_id: str,
        limit: int,
        known_ends: Mapping[str, TopicPosition] | None = None,
    ) -> list[CatchUp]:
        checks.positive_count(limit, "limit")
        now = self._now()
        held = self._subscriptions.get(client_id, {})
        found = []
        for topic in [BROADCAST, *sorted(t for t in held if t != BROADCAST)]:
            stored = held.get(topic)
            if topic == BROADCAST and topic not in self._logs:
                continue
            position = TopicPosition.load(stored) if stored else None
            if known_ends is not None and at_or_past(position, known_ends.get(topic)):
                continue
            log = self._log(topic)
            newest = log.entries[-1][0] if log.entries else None
            log.live(now)
            missed = position is not None and (
                position.epoch != log.epoch
                or (
                    log.trimmed is not None
                    and offset_key(position.offset) < offset_key(log.trimmed)
                )
            )
            after = (0, 0) if missed or position is None else offset_key(position.offset)
            entries = tuple(
                TopicEntry(topic, TopicPosition(log.epoch, offset), message)
                for offset, message in log.entries
                if offset_key(offset) > after
            )[:limit]
            if missed:
                # Told once: the position moves past what is lost.
                held[topic] = TopicPosition(log.epoch, log.trimmed or START).dump()
            elif not entries and (
                position is None or (newest is not None and offset_key(newest) > after)
            ):
                # Nothing to read but expired entries (or nothing at all, for a
                # device with no position yet): the position moves past them.
                self._subscriptions.setdefault(client_id, held)[topic] = TopicPosition(
                    log.epoch, newest if newest is not None else START
                ).dump()
            if entries or missed:
                found.append(CatchUp(topic, entries, missed))
        return found

    def advance(
        self, client_id: str, positions: Sequence[tuple[str, TopicPosition]]
    ) -> Deferred[None]:
        return self._run(self._advance, client_id, positions)

    def advance_many(
        self, advances: Sequence[tuple[str, Sequence[tuple[str, TopicPosition]]]]
    ) -> Deferred[None]:
        return self._run(self._advance_many, advances)

    def _advance_many(
        self, advances: Sequence[tuple[str, Sequence[tuple[str, TopicPosition]]]]
    ) -> None:
        for _client_id, positions in advances:
            topic_checks.advances(positions)  # all checked before any is written
        for client_id, positions in advances:
            self._advance(client_id, positions)

    def _advance(self, client_id: str, positions: Sequence[tuple[str, TopicPosition]]) -> None:
        topic_checks.advances(positions)
        held = self._subscriptions.get(client_id)
        for topic, position in positions:
            topic = check_audience(topic)
            if held is None or topic not in held:
                if topic != BROADCAST:
                    continue  # unsubscribed meanwhile: nothing to keep
                held = self._subscriptions.setdefault(client_id, {})
            stored = held.get(topic)
            if stored:
                current = TopicPosition.load(stored)
                if current.epoch == position.epoch and offset_key(position.offset) <= offset_key(
                    current.offset
                ):
                    continue  # forward only
            held[topic] = position.dump()
