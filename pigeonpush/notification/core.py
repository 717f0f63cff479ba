"""What the notification API does, without HTTP: validate, stamp, accept, report.

``Notifications.submit`` turns request items into messages (a ULID messageId,
``createdAt`` now, ``expiresAt`` now + TTL) and hands every valid one to one
``store.accept`` call, which writes each message's body, its recipients'
WAIT_ACK entries and its queue entry atomically. Invalid items write nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from pigeonpush.ids import MessageIdGenerator, is_message_id
from pigeonpush.notification import metrics
from pigeonpush.notification.validate import Draft, Invalid, Limits, validate
from pigeonpush.store.interface import Store
from pigeonpush.store.model import Accepted, CancelResult, Message, Notification, Receipt

#: What one submitted item became: accepted (maybe replayed) or refused.
Outcome = Accepted | list[Invalid]


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
    ) -> None:
        self.store = store
        self.limits = limits
        self._clock = clock
        self._new_id = new_id if new_id is not None else MessageIdGenerator(clock)

    def submit(self, items: Sequence[Submission]) -> Deferred[list[Outcome]]:
        """Accept every valid item in one store call; outcomes in item order.

        A store failure fails the whole Deferred (StoreError): the caller
        answers 503, and a retry with the same idempotency keys is safe.
        """
        outcomes: list[Outcome | None] = []
        notifications: list[Notification] = []
        now = self._clock.seconds()
        for item in items:
            checked = validate(item.data, self.limits, now)
            if isinstance(checked, list):
                outcomes.append(checked)
                continue
            notifications.append(self._notification(checked, item.idempotency_key, now))
            outcomes.append(None)
        if not notifications:
            return succeed([outcome for outcome in outcomes if outcome is not None])

        def merge(accepted: list[Accepted]) -> list[Outcome]:
            answers = iter(accepted)
            merged: list[Outcome] = []
            for outcome in outcomes:
                if outcome is None:
                    answer = next(answers)
                    if answer.duplicate:
                        metrics.REPLAYED.inc()
                    else:
                        metrics.ACCEPTED.inc()
                        metrics.RECIPIENTS.inc(answer.recipients)
                    merged.append(answer)
                else:
                    merged.append(outcome)
            return merged

        return self.store.accept(notifications).addCallback(merge)

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
