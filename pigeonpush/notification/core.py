"""What the notification API does, without HTTP: validate, stamp, accept, report.

``Notifications.submit`` turns request items into messages (a ULID messageId,
``createdAt`` now, ``expiresAt`` now + TTL) and hands every valid one to one
``store.accept`` call, which writes each message's body, its recipients'
WAIT_ACK entries and its queue entry atomically. Invalid items write nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime

from pigeonpush.ids import MessageIdGenerator, is_message_id
from pigeonpush.notification import metrics
from pigeonpush.notification.validate import Draft, Invalid, Limits, validate
from pigeonpush.store.interface import Store
from pigeonpush.store.model import Accepted, CancelResult, Message, Notification, Receipt
from pigeonpush.store.topic_model import TopicReceipt
from pigeonpush.topics import BROADCAST

#: How many messages a topic's log keeps (``--topic-log-length``).
DEFAULT_LOG_LENGTH = 10_000
#: The most topics one device may be subscribed to (``--max-topics-per-device``).
DEFAULT_MAX_TOPICS = 100


@attrs.frozen(slots=True)
class Published:
    """A notification accepted for a topic or for broadcast: stored once in
    the topic's log, whatever the number of subscribers."""

    message_id: str
    topic: str  #: the topic, or ``topics.BROADCAST``
    #: devices subscribed when it was accepted (None for broadcast: every device)
    targeted: int | None
    #: its idempotency key was seen before: this is the first acceptance's id
    duplicate: bool = False


#: What one submitted item became: accepted (maybe replayed), published, or refused.
Outcome = Accepted | Published | list[Invalid]


@attrs.frozen(slots=True)
class Submission:
    """One item to submit: the decoded JSON and its idempotency key, if any."""

    data: object
    idempotency_key: str | None = None


class Notifications:
    """The notification API's logic over a Store; time comes from ``clock``."""

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        limits: Limits,
        new_id: Callable[[], str] | None = None,
        *,
        log_length: int = DEFAULT_LOG_LENGTH,
        max_topics: int = DEFAULT_MAX_TOPICS,
    ) -> None:
        self.store = store
        self.limits = limits
        self.log_length = log_length
        self.max_topics = max_topics
        self._clock = clock
        self._new_id = new_id if new_id is not None else MessageIdGenerator(clock)

    def submit(self, items: Sequence[Submission]) -> Deferred[list[Outcome]]:
        """Accept every valid item; outcomes in item order. The ``to`` items
        go to one ``store.accept`` call; each topic or broadcast item is one
        ``store.publish`` (one write, whatever its audience's size).

        A store failure fails the whole Deferred (StoreError): the caller
        answers 503, and a retry with the same idempotency keys is safe.
        """
        return ensureDeferred(self._submit(items))

    async def _submit(self, items: Sequence[Submission]) -> list[Outcome]:
        outcomes: list[Outcome | None] = []
        notifications: list[Notification] = []
        published: list[tuple[int, Notification, str]] = []
        now = self._clock.seconds()
        for item in items:
            checked = validate(item.data, self.limits, now)
            if isinstance(checked, list):
                outcomes.append(checked)
                continue
            notification = self._notification(checked, item.idempotency_key, now)
            if checked.topic is not None:
                published.append((len(outcomes), notification, checked.topic))
            else:
                notifications.append(notification)
            outcomes.append(None)
        accepted = iter(await self.store.accept(notifications) if notifications else [])
        for index, notification, topic in published:
            entry = await self.store.publish(
                topic, notification.message, self.log_length, notification.idempotency_key
            )
            targeted = None if topic == BROADCAST else await self.store.subscriber_count(topic)
            outcomes[index] = Published(
                entry.message.message_id, topic, targeted, duplicate=entry.duplicate
            )
            (metrics.REPLAYED if entry.duplicate else metrics.ACCEPTED).inc()
        merged: list[Outcome] = []
        for outcome in outcomes:
            if outcome is None:
                answer = next(accepted)
                if answer.duplicate:
                    metrics.REPLAYED.inc()
                else:
                    metrics.ACCEPTED.inc()
                    metrics.RECIPIENTS.inc(answer.recipients)
                merged.append(answer)
            else:
                merged.append(outcome)
        return merged

    def _notification(self, draft: Draft, idempotency_key: str | None, now: float) -> Notification:
        send_at = draft.send_time(now)
        message = Message(
            message_id=self._new_id(),
            title=draft.title,
            text=draft.text,
            extras=draft.extras,
            created_at=now,
            # A scheduled message's TTL counts from its send time.
            expires_at=(now if send_at is None else send_at) + draft.ttl,
        )
        return Notification(
            message,
            draft.recipients,
            idempotency_key,
            collapse_key=draft.collapse_key,
            send_at=send_at,
        )

    def cancel(self, message_id: str) -> Deferred[CancelResult]:
        """Cancel a scheduled message not sent yet (``Store.cancel``); a
        malformed id is unknown."""
        if not is_message_id(message_id):
            return succeed(CancelResult.UNKNOWN)
        return self.store.cancel(message_id)

    def receipt(self, message_id: str) -> Deferred[Receipt | None]:
        """The receipt (kept for the store's receipt retention after the
        message's TTL), or None when unknown or gone (a malformed id is unknown)."""
        if not is_message_id(message_id):
            return succeed(None)
        return self.store.receipt(message_id)

    def topic_receipt(self, message_id: str) -> Deferred[TopicReceipt | None]:
        """The counts of a topic or broadcast message, or None."""
        if not is_message_id(message_id):
            return succeed(None)
        return self.store.topic_receipt(message_id)
