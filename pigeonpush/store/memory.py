"""The memory backend: the store's semantics in one process (pigeon-standalone).

It is a real backend, not a test double: the same contract suite runs against
it and against Redis. Expiry follows the injected clock, so a message's TTL, a
session's TTL and the queue's idle times behave as they do in Redis, and tests
drive them with ``twisted.internet.task.Clock``. Every method answers at once
(an already-fired Deferred), except ``consume`` when it has to wait.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from pigeonpush.store import checks
from pigeonpush.store.expiring import Expiries, ExpiringTable
from pigeonpush.store.interface import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_RECEIPT_RETENTION,
    StoreError,
)
from pigeonpush.store.keys import BOUND
from pigeonpush.store.memory_queue import MemoryQueue
from pigeonpush.store.memory_topics import MemoryTopics
from pigeonpush.store.memory_uplink import MemoryUplinks
from pigeonpush.store.model import (
    Accepted,
    CancelResult,
    DeadUplink,
    DeviceRecord,
    Message,
    Notification,
    QueueEntry,
    Receipt,
    RecipientState,
    Uplink,
    UplinkStored,
    recipient_states,
)

P = ParamSpec("P")
T = TypeVar("T")


@attrs.define(slots=True)
class _ReceiptRecord:
    """What Redis keeps in ``PIGEON:RECEIPT:<messageId>``."""

    recipients: tuple[str, ...]
    created_at: float
    expires_at: float
    outcomes: dict[str, str] = attrs.field(factory=dict)
    send_at: float | None = None
    #: still waiting for its send time (RECEIPT_SCHEDULED)
    scheduled: bool = False


class MemoryStore(MemoryTopics):
    """All shared state in dictionaries, expiring on ``clock``."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        receipt_retention: float = DEFAULT_RECEIPT_RETENTION,
    ) -> None:
        self._clock = clock
        self._idempotency_ttl = checks.positive_seconds(idempotency_ttl, "idempotency_ttl")
        self._receipt_retention = checks.non_negative_seconds(
            receipt_retention, "receipt_retention"
        )
        self._expiries = Expiries()
        self._auth: ExpiringTable[str] = ExpiringTable(self._expiries)
        self._route: ExpiringTable[str] = ExpiringTable(self._expiries)
        self._wait_ack: ExpiringTable[set[str]] = ExpiringTable(self._expiries)
        self._bodies: ExpiringTable[Message] = ExpiringTable(self._expiries)
        self._receipts: ExpiringTable[_ReceiptRecord] = ExpiringTable(self._expiries)
        self._idempotency: ExpiringTable[Accepted] = ExpiringTable(self._expiries)
        self._devices: dict[str, DeviceRecord] = {}
        #: clientId -> messageId -> failed deliveries (PIGEON:FAILED)
        self._failed: ExpiringTable[dict[str, int]] = ExpiringTable(self._expiries)
        #: clientId -> collapseKey -> messageId (PIGEON:COLLAPSE)
        self._collapse: ExpiringTable[dict[str, str]] = ExpiringTable(self._expiries)
        #: messageId -> (send time, the notification) (PIGEON:SCHEDULE)
        self._schedule: dict[str, tuple[float, Notification]] = {}
        self._queue = MemoryQueue(clock)
        self._uplinks = MemoryUplinks(clock, self._expiries)
        self._init_topics()
        self._closed = False

    # -- plumbing ------------------------------------------------------------

    def _run(self, operation: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """Run ``operation`` now; its result or error as a fired Deferred, so
        callers see the same shape of answer as from Redis."""
        if self._closed:
            return fail(StoreError("the store is closed"))
        self._expiries.sweep(self._clock.seconds())
        try:
            return succeed(operation(*args, **kwargs))
        except Exception:
            return fail()

    def size(self) -> int:
        """Live keys, counted as Redis' DBSIZE would (the queue is one key)."""
        now = self._clock.seconds()
        self._expiries.sweep(now)
        tables = (
            self._auth,
            self._route,
            self._wait_ack,
            self._bodies,
            self._receipts,
            self._idempotency,
            self._failed,
            self._collapse,
        )
        live = sum(1 for table in tables for _ in table.keys(now))
        queue = 1 if len(self._queue) else 0
        scheduled = 1 if self._schedule else 0
        return live + len(self._devices) + queue + scheduled + self._uplinks.keys(now)

    # -- sessions ------------------------------------------------------------

    def issue_token(self, client_id: str, token: str, ttl: float) -> Deferred[None]:
        return self._run(self._issue_token, client_id, token, ttl)

    def _issue_token(self, client_id: str, token: str, ttl: float) -> None:
        ttl = checks.positive_seconds(ttl, "ttl")
        checks.issuable_token(token)
        self._auth.set(client_id, token, self._clock.seconds() + ttl)

    def issue_tokens(self, tokens: Sequence[tuple[str, str]], ttl: float) -> Deferred[None]:
        return self._run(self._issue_tokens, tokens, ttl)

    def _issue_tokens(self, tokens: Sequence[tuple[str, str]], ttl: float) -> None:
        ttl = checks.positive_seconds(ttl, "ttl")
        for _, token in tokens:
            checks.issuable_token(token)
        expires = self._clock.seconds() + ttl
        for client_id, token in tokens:
            self._auth.set(client_id, token, expires)

    def token(self, client_id: str) -> Deferred[str | None]:
        return self._run(self._token, client_id)

    def _token(self, client_id: str) -> str | None:
        stored = self._auth.get(client_id, self._clock.seconds())
        return stored.removeprefix(BOUND) if stored is not None else None

    def bind_session(self, client_id: str, token: str, server: str, ttl: float) -> Deferred[bool]:
        return self._run(self._bind_session, client_id, token, server, ttl)

    def _bind_session(self, client_id: str, token: str, server: str, ttl: float) -> bool:
        ttl = checks.positive_seconds(ttl, "ttl")
        now = self._clock.seconds()
        stored = self._auth.get(client_id, now)
        if (
            stored is None
            or stored.startswith(BOUND)  # used: single-use tokens bind one session
            or not hmac.compare_digest(stored.encode(), token.encode())
        ):
            return False
        self._auth.set(client_id, BOUND + token, now + ttl)
        self._route.set(client_id, server, now + ttl)
        return True

    def end_session(self, client_id: str, token: str, server: str) -> Deferred[bool]:
        return self._run(self._end_session, client_id, token, server)

    def _end_session(self, client_id: str, token: str, server: str) -> bool:
        now = self._clock.seconds()
        if self._auth.get(client_id, now) not in (token, BOUND + token):
            return False
        route = self._route.get(client_id, now)
        if route is not None and route != server:
            return False
        self._auth.delete(client_id, now)
        self._route.delete(client_id, now)
        return True

    def refresh_sessions(self, client_ids: Sequence[str], ttl: float) -> Deferred[None]:
        return self._run(self._refresh_sessions, client_ids, ttl)

    def _refresh_sessions(self, client_ids: Sequence[str], ttl: float) -> None:
        ttl = checks.positive_seconds(ttl, "ttl")
        now = self._clock.seconds()
        for client_id in client_ids:
            self._auth.expire(client_id, now + ttl, now)
            self._route.expire(client_id, now + ttl, now)

    def revoke_session(self, client_id: str) -> Deferred[str | None]:
        return self._run(self._revoke_session, client_id)

    def _revoke_session(self, client_id: str) -> str | None:
        now = self._clock.seconds()
        self._auth.delete(client_id, now)
        return self._route.get(client_id, now)

    def drop_route(self, client_id: str, server: str) -> Deferred[bool]:
        return self._run(self._drop_route, client_id, server)

    def _drop_route(self, client_id: str, server: str) -> bool:
        now = self._clock.seconds()
        if self._route.get(client_id, now) != server:
            return False
        return self._route.delete(client_id, now)

    def route(self, client_id: str) -> Deferred[str | None]:
        return self._run(self._route.get, client_id, self._clock.seconds())

    def routes(self, client_ids: Sequence[str]) -> Deferred[list[str | None]]:
        return self._run(self._routes, client_ids)

    def _routes(self, client_ids: Sequence[str]) -> list[str | None]:
        now = self._clock.seconds()
        return [self._route.get(client_id, now) for client_id in client_ids]

    # -- messages --------------------------------------------------------------

    def accept(self, notifications: Sequence[Notification]) -> Deferred[list[Accepted]]:
        return self._run(self._accept, notifications)

    def _accept(self, notifications: Sequence[Notification]) -> list[Accepted]:
        now = self._clock.seconds()
        answers: list[Accepted] = []
        for notification, _remaining in checks.accepted_batch(notifications, now):
            key = notification.idempotency_key
            if key is not None:
                first = self._idempotency.get(key, now)
                if first is not None:
                    answers.append(first)
                    continue
            message = notification.message
            message = attrs.evolve(message, extras=dict(message.extras))
            notification = attrs.evolve(notification, message=message)
            expires_at = message.expires_at
            send_at = notification.send_at
            scheduled = send_at is not None and send_at > now
            self._bodies.set(message.message_id, message, expires_at)
            self._receipts.set(
                message.message_id,
                _ReceiptRecord(
                    notification.recipients,
                    message.created_at,
                    expires_at,
                    send_at=send_at if scheduled else None,
                    scheduled=scheduled,
                ),
                expires_at + self._receipt_retention,
            )
            if scheduled:
                assert send_at is not None
                self._schedule[message.message_id] = (send_at, notification)
            else:
                self._enter(notification, now)
            accepted = Accepted(message.message_id, len(notification.recipients))
            if key is not None:
                self._idempotency.set(
                    key, attrs.evolve(accepted, duplicate=True), now + self._idempotency_ttl
                )
            answers.append(accepted)
        self._queue.wake()
        return answers

    def _enter(self, notification: Notification, now: float) -> None:
        """Add the message to its recipients' WAIT_ACK (collapsing) and queue it."""
        message = notification.message
        expires_at = message.expires_at
        for client_id in notification.recipients:
            pending = self._wait_ack.get(client_id, now)
            if pending is None:
                pending = set()
                self._wait_ack.set(client_id, pending, expires_at)
            if notification.collapse_key is not None:
                self._collapse_into(client_id, notification.collapse_key, message, pending, now)
            pending.add(message.message_id)
            current = self._wait_ack.expires_at(client_id, now)
            if current is None or current < expires_at:
                self._wait_ack.expire(client_id, expires_at, now)
        self._queue.add(
            Notification(
                message,
                notification.recipients,
                notification.idempotency_key,
                collapse_key=notification.collapse_key,
            )
        )

    def _collapse_into(
        self, client_id: str, key: str, message: Message, pending: set[str], now: float
    ) -> None:
        """PIGEON:COLLAPSE: the message last sent to ``client_id`` with ``key``
        is replaced if still pending; ``message`` becomes the latest."""
        latest = self._collapse.get(client_id, now)
        if latest is None:
            latest = {}
            self._collapse.set(client_id, latest, message.expires_at)
        older = latest.get(key)
        if older is not None and older != message.message_id and older in pending:
            pending.discard(older)
            record = self._receipts.get(older, now)
            if record is not None:
                record.outcomes.setdefault(client_id, RecipientState.REPLACED.value)
        latest[key] = message.message_id
        current = self._collapse.expires_at(client_id, now)
        if current is None or current < message.expires_at:
            self._collapse.expire(client_id, message.expires_at, now)

    def release_due(self, limit: int, lease: float) -> Deferred[int]:
        return self._run(self._release_due, limit, lease)

    def _release_due(self, limit: int, lease: float) -> int:
        checks.positive_count(limit, "limit")
        checks.positive_seconds(lease, "lease")
        now = self._clock.seconds()
        due = sorted(
            (send_at, message_id)
            for message_id, (send_at, _) in self._schedule.items()
            if send_at <= now
        )[:limit]
        sent = 0
        for _, message_id in due:
            _, notification = self._schedule.pop(message_id)
            record = self._receipts.get(message_id, now)
            if record is None or not record.scheduled:
                continue  # cancelled, or its receipt is gone
            record.scheduled = False
            if self._bodies.get(message_id, now) is None:
                continue  # expired while it waited: its receipt says so
            self._enter(notification, now)
            sent += 1
        if sent:
            self._queue.wake()
        return sent

    def cancel(self, message_id: str) -> Deferred[CancelResult]:
        return self._run(self._cancel, message_id)

    def _cancel(self, message_id: str) -> CancelResult:
        now = self._clock.seconds()
        record = self._receipts.get(message_id, now)
        if record is None:
            return CancelResult.UNKNOWN
        if not record.scheduled:
            cancelled = RecipientState.CANCELLED.value
            if record.send_at is not None and cancelled in record.outcomes.values():
                return CancelResult.CANCELLED
            return CancelResult.SENT
        record.scheduled = False
        for client_id in record.recipients:
            record.outcomes.setdefault(client_id, RecipientState.CANCELLED.value)
        self._bodies.delete(message_id, now)
        self._schedule.pop(message_id, None)
        return CancelResult.CANCELLED

    def pending_ids(self, client_id: str, limit: int | None = None) -> Deferred[list[str]]:
        return self._run(self._pending_ids, client_id, limit)

    def _pending_ids(self, client_id: str, limit: int | None) -> list[str]:
        limit = checks.optional_limit(limit)
        ids = sorted(self._wait_ack.get(client_id, self._clock.seconds()) or ())
        return ids if limit is None else ids[:limit]

    def pending_ids_many(
        self, client_ids: Sequence[str], limit: int | None = None
    ) -> Deferred[list[list[str]]]:
        return self._run(self._pending_ids_many, client_ids, limit)

    def _pending_ids_many(self, client_ids: Sequence[str], limit: int | None) -> list[list[str]]:
        checks.optional_limit(limit)
        return [self._pending_ids(client_id, limit) for client_id in client_ids]

    def bodies(self, message_ids: Sequence[str]) -> Deferred[list[Message | None]]:
        return self._run(self._messages, message_ids)

    def _messages(self, message_ids: Sequence[str]) -> list[Message | None]:
        now = self._clock.seconds()
        found: list[Message | None] = []
        for message_id in message_ids:
            found.append(self._bodies.get(message_id, now))
        return found

    def ack(self, acks: Sequence[tuple[str, str]]) -> Deferred[None]:
        return self._run(
            self._settle,
            [(client_id, message_id, RecipientState.ACKED) for client_id, message_id in acks],
        )

    def drop_pending(self, drops: Sequence[tuple[str, str, str]]) -> Deferred[None]:
        return self._run(self._drop_pending, drops)

    def _drop_pending(self, drops: Sequence[tuple[str, str, str]]) -> None:
        self._settle(checks.dropped(drops))

    def _settle(self, outcomes: Sequence[tuple[str, str, RecipientState]]) -> None:
        """Remove each pair from WAIT_ACK; where it was there, record its
        outcome in the receipt (the first one recorded stays)."""
        now = self._clock.seconds()
        for client_id, message_id, state in outcomes:
            pending = self._wait_ack.get(client_id, now)
            if pending is None or message_id not in pending:
                continue
            pending.discard(message_id)
            if not pending:  # Redis deletes a set once it is empty
                self._wait_ack.delete(client_id, now)
            record = self._receipts.get(message_id, now)
            if record is not None:
                record.outcomes.setdefault(client_id, state.value)

    def receipt(self, message_id: str) -> Deferred[Receipt | None]:
        return self._run(self._receipt, message_id)

    def _receipt(self, message_id: str) -> Receipt | None:
        now = self._clock.seconds()
        record = self._receipts.get(message_id, now)
        if record is None:
            return None
        states = recipient_states(
            record.recipients, record.outcomes, record.expires_at <= now, record.scheduled
        )
        return Receipt(
            message_id,
            record.created_at,
            record.expires_at,
            record.recipients,
            states,
            send_at=record.send_at,
        )

    def add_failures(self, failures: Sequence[tuple[str, str]], ttl: float) -> Deferred[list[int]]:
        return self._run(self._add_failures, failures, ttl)

    def _add_failures(self, failures: Sequence[tuple[str, str]], ttl: float) -> list[int]:
        expires_at = self._clock.seconds() + checks.positive_seconds(ttl, "ttl")
        now = self._clock.seconds()
        counts = []
        for client_id, message_id in failures:
            table = self._failed.get(client_id, now)
            if table is None:
                table = {}
            table[message_id] = count = table.get(message_id, 0) + 1
            self._failed.set(client_id, table, expires_at)
            counts.append(count)
        return counts

    # -- devices -----------------------------------------------------------------

    def register_device(self, record: DeviceRecord) -> Deferred[bool]:
        return self._run(self._register_device, record)

    def _register_device(self, record: DeviceRecord) -> bool:
        if record.client_id in self._devices:
            return False
        self._devices[record.client_id] = record
        return True

    def device(self, client_id: str) -> Deferred[DeviceRecord | None]:
        return self._run(self._devices.get, client_id)

    # -- queue -------------------------------------------------------------------

    def consume(self, consumer: str, count: int, block: float) -> Deferred[list[QueueEntry]]:
        if self._closed:
            return fail(StoreError("the store is closed"))
        try:
            checks.positive_count(count, "count")
            checks.non_negative_seconds(block, "block")
        except ValueError:
            return fail()
        return self._queue.wait(consumer, count, block)

    def acknowledge(self, entry_ids: Sequence[str]) -> Deferred[None]:
        return self._run(self._queue.acknowledge, entry_ids)

    def reclaim(self, consumer: str, min_idle: float, count: int) -> Deferred[list[QueueEntry]]:
        return self._run(self._reclaim, consumer, min_idle, count)

    def _reclaim(self, consumer: str, min_idle: float, count: int) -> list[QueueEntry]:
        checks.non_negative_seconds(min_idle, "min_idle")
        checks.positive_count(count, "count")
        return self._queue.reclaim(consumer, min_idle, count)

    def queue_lag(self) -> Deferred[int]:
        return self._run(len, self._queue)

    # -- uplinks ------------------------------------------------------------------

    def add_uplink(
        self, uplink: Uplink, *, dedup_window: float, max_len: int
    ) -> Deferred[UplinkStored]:
        return self._run(self._uplinks.add, uplink, dedup_window, max_len)

    def uplinks(self, after: str, count: int, block: float = 0.0) -> Deferred[list[Uplink]]:
        if self._closed:
            return fail(StoreError("the store is closed"))
        try:
            return self._uplinks.wait(after, count, block)
        except ValueError:
            return fail()

    def last_uplink_id(self) -> Deferred[str]:
        return self._run(self._uplinks.last_id)

    def claim_uplinks(self, consumer: str, count: int, block: float) -> Deferred[list[Uplink]]:
        if self._closed:
            return fail(StoreError("the store is closed"))
        try:
            return self._uplinks.claim(consumer, count, block)
        except ValueError:
            return fail()

    def reclaim_uplinks(self, consumer: str, min_idle: float, count: int) -> Deferred[list[Uplink]]:
        return self._run(self._uplinks.reclaim, consumer, min_idle, count)

    def settle_uplinks(self, entry_ids: Sequence[str]) -> Deferred[None]:
        return self._run(self._uplinks.settle, entry_ids)

    def add_dead_uplink(self, dead: DeadUplink, max_len: int) -> Deferred[None]:
        return self._run(self._uplinks.add_dead, dead, max_len)

    def dead_uplinks(self, count: int) -> Deferred[list[DeadUplink]]:
        return self._run(self._uplinks.dead, count)

    # -- lifetime ------------------------------------------------------------------

    def ping(self) -> Deferred[None]:
        return self._run(lambda: None)

    def close(self) -> Deferred[None]:
        if not self._closed:
            self._closed = True
            self._queue.close()
            self._uplinks.close()
        return succeed(None)
