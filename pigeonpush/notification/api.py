"""The notification HTTP API: twisted.web resources over ``Notifications``.

``POST /v1/notifications``, ``POST /v1/notifications/batch``,
``GET /v1/notifications/<messageId>``, ``DELETE /v1/notifications/<messageId>``
(cancel a scheduled one), ``DELETE /v1/devices/<clientId>/session``,
``GET /v1/uplinks`` and ``GET /v1/uplinks/dead`` (``uplinks``), plus
``GET /health`` and ``/metrics``.
Every answer is JSON; every error has the project's shape (``error``,
``message``; ``field`` too when one field of a notification is wrong). A
request that gets a 4xx writes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from pigeonpush.http import (
    ApiError,
    JsonResource,
    JsonResponse,
    JsonTree,
    checked_identifier,
    echo,
    error_body,
    invalid,
    read_json_object,
)
from pigeonpush.identifiers import CLIENT_ID, IDEMPOTENCY_KEY
from pigeonpush.metrics import MetricsResource
from pigeonpush.notification import metrics
from pigeonpush.notification.auth import ApiKeys
from pigeonpush.notification.core import Notifications, Outcome, Published, Submission
from pigeonpush.notification.sessions import DeviceSessions
from pigeonpush.notification.topics_api import TopicsApi, TopicsTree
from pigeonpush.notification.validate import Invalid
from pigeonpush.rpcpool import RpcUnavailable
from pigeonpush.store.interface import StoreError
from pigeonpush.store.model import Accepted, CancelResult, Receipt, RecipientState
from pigeonpush.store.topic_model import TopicReceipt
from pigeonpush.topics import BROADCAST

log = Logger()
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="pigeonpush"'}


def refused(problem: Invalid) -> ApiError:
    """400 ``invalid`` naming the field that is wrong."""
    return invalid(problem.message, problem.field)


def iso8601(seconds: float) -> str:
    """UTC, millisecond precision, ``Z`` suffix: ``2025-01-31T12:00:00.000Z``."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def receipt_body(receipt: Receipt) -> dict[str, Any]:
    """The receipt as the API reports it: ``pending`` and ``acked`` (a count)
    as before, then who ACKed, who it expired for and who it was dropped for,
    with the reason; who a newer message with its collapse key replaced it
    for; for a scheduled message its send time, and who it waits for
    (``scheduled``) or was cancelled for."""
    dropped = [
        {"clientId": client_id, "reason": state.value}
        for client_id, state in zip(receipt.recipients, receipt.states, strict=True)
        if state in DROPPED
    ]
    body: dict[str, Any] = {
        "messageId": receipt.message_id,
        "createdAt": iso8601(receipt.created_at),
        "expiresAt": iso8601(receipt.expires_at),
        "recipients": len(receipt.recipients),
        "pending": list(receipt.pending),
        "acked": receipt.acked,
        "ackedBy": list(receipt.with_state(RecipientState.ACKED)),
        "expired": list(receipt.with_state(RecipientState.EXPIRED)),
        "dropped": dropped,
        "replaced": list(receipt.with_state(RecipientState.REPLACED)),
    }
    if receipt.send_at is not None:
        body["sendAt"] = iso8601(receipt.send_at)
        body["scheduled"] = list(receipt.with_state(RecipientState.SCHEDULED))
        body["cancelled"] = list(receipt.with_state(RecipientState.CANCELLED))
    return body


def topic_receipt_body(receipt: TopicReceipt) -> dict[str, Any]:
    """A topic or broadcast message's receipt: counts, never lists of devices.
    ``pending`` is the targeted devices not counted as ACKed yet (None for
    broadcast, whose audience is every device)."""
    body: dict[str, Any] = {
        "messageId": receipt.message_id,
        "createdAt": iso8601(receipt.created_at),
        "expiresAt": iso8601(receipt.expires_at),
    }
    if receipt.topic == BROADCAST:
        body["broadcast"] = True
    else:
        body["topic"] = receipt.topic
    pending = None if receipt.targeted is None else max(receipt.targeted - receipt.acked, 0)
    body.update(targeted=receipt.targeted, acked=receipt.acked, pending=pending)
    return body


#: States of a recipient the server gave up on (the receipt's ``dropped``).
DROPPED = frozenset({RecipientState.TOO_LARGE, RecipientState.FAILED})


def accepted_body(accepted: Accepted | Published) -> dict[str, Any]:
    if isinstance(accepted, Published):
        if accepted.topic == BROADCAST:
            return {"messageId": accepted.message_id, "broadcast": True}
        return {
            "messageId": accepted.message_id,
            "topic": accepted.topic,
            "subscribers": accepted.targeted,
        }
    return {"messageId": accepted.message_id, "recipients": accepted.recipients}


@attrs.frozen(slots=True)
class ApiSettings:
    """Request-level limits (the per-notification ones are in ``Limits``)."""

    max_body: int
    max_batch: int = 500


class NotificationApi:
    """The handlers; ``resource()`` builds the tree to serve."""

    def __init__(
        self,
        notifications: Notifications,
        keys: ApiKeys,
        settings: ApiSettings,
        sessions: DeviceSessions | None = None,
    ) -> None:
        self._notifications = notifications
        self._keys = keys
        self._settings = settings
        #: Without it there is no ``/v1/devices/<clientId>/session`` (an API
        #: with no way to reach servers).
        self._sessions = sessions
        self.topics = TopicsApi(notifications.store, max_topics=notifications.max_topics)

    @property
    def has_sessions(self) -> bool:
        return self._sessions is not None

    def resource(self) -> Resource:
        root = JsonTree()
        v1 = JsonTree()
        root.putChild(b"v1", v1)
        v1.putChild(b"notifications", _NotificationsTree(self))
        from pigeonpush.notification.uplinks import UplinkApi  # it uses this module's helpers

        uplinks = UplinkApi(self._notifications.store, self._authorize, _unavailable)
        v1.putChild(b"uplinks", uplinks.resource())
        v1.putChild(b"devices", _DevicesTree(self))
        v1.putChild(b"topics", TopicsTree(self.guarded, self.topics, self._settings.max_body))
        root.putChild(b"health", JsonResource({b"GET": self.health}))
        root.putChild(b"metrics", MetricsResource())
        return root

    # -- handlers --------------------------------------------------------------

    async def submit(self, request: Request) -> JsonResponse:
        scope = self._authorize(request)
        key = _idempotency_key(request)
        data = read_json_object(request, self._settings.max_body)
        item = Submission(data, None if key is None else f"{scope}:1:{key}")
        (outcome,) = await self._accept([item])
        if isinstance(outcome, list):
            raise refused(outcome[0])
        headers = {"Location": f"/v1/notifications/{outcome.message_id}"}
        if outcome.duplicate:
            headers["Idempotent-Replayed"] = "true"
        return JsonResponse(accepted_body(outcome), 202, headers)

    async def submit_batch(self, request: Request) -> JsonResponse:
        scope = self._authorize(request)
        key = _idempotency_key(request)
        data = read_json_object(request, self._settings.max_body)
        unknown = sorted(set(data) - {"notifications"})
        if unknown:
            raise invalid(
                f'unknown field "{echo(unknown[0])}": send {{"notifications": [...]}}',
                echo(unknown[0]),
            )
        entries = data.get("notifications")
        limit = self._settings.max_batch
        if not isinstance(entries, list) or not 1 <= len(entries) <= limit:
            raise invalid(
                f"notifications must be a list of 1 to {limit} notifications", "notifications"
            )
        items = [
            Submission(entry, None if key is None else f"{scope}:b{index}:{key}")
            for index, entry in enumerate(entries)
        ]
        outcomes = await self._accept(items)
        results = [_result(outcome) for outcome in outcomes]
        refused = sum(1 for outcome in outcomes if isinstance(outcome, list))
        if refused:
            metrics.REJECTED.labels("invalid").inc(refused)
        return JsonResponse({"results": results}, 200)

    async def receipt(self, request: Request, message_id: str) -> JsonResponse:
        self._authorize(request)
        try:
            receipt = await self._notifications.receipt(message_id)
            if receipt is None:
                counted = await self._notifications.topic_receipt(message_id)
                if counted is not None:
                    return JsonResponse(topic_receipt_body(counted))
        except StoreError as e:
            raise _unavailable(e) from None
        if receipt is None:
            raise ApiError(
                404, "not_found", "no such notification: unknown, or its receipt retention ended"
            )
        return JsonResponse(receipt_body(receipt))

    async def cancel(self, request: Request, message_id: str) -> JsonResponse:
        """Cancel a scheduled notification before its send time: 200; 409
        once it was sent (or if it was never scheduled); 404 if unknown."""
        self._authorize(request)
        try:
            result = await self._notifications.cancel(message_id)
        except StoreError as e:
            raise _unavailable(e) from None
        if result is CancelResult.UNKNOWN:
            raise ApiError(
                404, "not_found", "no such notification: unknown, or its receipt retention ended"
            )
        if result is CancelResult.SENT:
            raise ApiError(
                409,
                "already_sent",
                "the notification was sent already (or was not scheduled): it cannot be "
                "cancelled; its receipt says what became of it",
            )
        return JsonResponse({"messageId": message_id, "cancelled": True})

    async def kick(self, request: Request, client_id: str) -> JsonResponse:
        """Revoke the device's token and disconnect it; 200 either way, with
        ``disconnected`` saying whether a connection was closed."""
        self._authorize(request)
        checked_identifier(CLIENT_ID, client_id)
        assert self._sessions is not None
        try:
            kicked = await self._sessions.kick(client_id)
        except StoreError as e:
            raise _unavailable(e) from None
        except RpcUnavailable as e:
            log.warn(
                "Could not reach the push server of {client_id}: {why}",
                client_id=client_id,
                why=str(e),
            )
            raise ApiError(
                503,
                "server_unavailable",
                "the token is revoked, but the push server holding the device did not "
                "answer; retry later",
                {"Retry-After": "1"},
            ) from None
        return JsonResponse({"clientId": client_id, "disconnected": kicked})

    async def health(self, request: Request) -> JsonResponse:
        try:
            lag = await self._notifications.store.queue_lag()
        except StoreError as e:
            raise _unavailable(e) from None
        return JsonResponse({"status": "ok", "queueLag": lag})

    # -- helpers ---------------------------------------------------------------

    def guarded(self, handler: Handler) -> Handler:
        """``handler`` behind the API key, with store failures answered 503
        and every error counted."""

        async def guarded(request: Request) -> JsonResponse:
            self._authorize(request)
            try:
                return await handler(request)
            except StoreError as e:
                raise _unavailable(e) from None

        return _counting(guarded)

    def _authorize(self, request: Request) -> str:
        scope = self._keys.check(request.getHeader(b"authorization"))
        if scope is None:
            raise ApiError(
                401,
                "unauthorized",
                "a valid API key is required: Authorization: Bearer <key>",
                UNAUTHORIZED_HEADERS,
            )
        return scope

    async def _accept(self, items: Sequence[Submission]) -> list[Outcome]:
        try:
            return await self._notifications.submit(items)
        except StoreError as e:
            raise _unavailable(e) from None


def _idempotency_key(request: Request) -> str | None:
    raw = request.getHeader(b"idempotency-key")
    if raw is None:
        return None
    key = raw.decode("latin-1")
    if not IDEMPOTENCY_KEY.matches(key):
        raise invalid(f"Idempotency-Key must be {IDEMPOTENCY_KEY.text}", "Idempotency-Key")
    return key


def _result(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, list):
        return error_body("invalid", outcome[0].message, outcome[0].field)
    return accepted_body(outcome)


def _unavailable(error: StoreError) -> ApiError:
    log.warn("The store failed a request: {why}", why=str(error))
    return ApiError(
        503,
        "store_unavailable",
        "the message store is unavailable; retry later (with the same Idempotency-Key)",
        {"Retry-After": "1"},
    )


Handler = Callable[[Request], Awaitable[JsonResponse]]


def _counting(handler: Handler) -> Handler:
    """Count every error answer by its code (store outages separately; a push
    server a kick could not reach counts as ``server_unavailable``)."""

    async def counted(request: Request) -> JsonResponse:
        try:
            return await handler(request)
        except ApiError as e:
            if e.code == "store_unavailable":
                metrics.STORE_ERRORS.inc()
            else:
                metrics.REJECTED.labels(e.code).inc()
            raise

    return counted


class _NotificationsTree(Resource):
    """``/v1/notifications``, ``/v1/notifications/batch``, ``/v1/notifications/<id>``."""

    def __init__(self, api: NotificationApi) -> None:
        super().__init__()
        self._api = api
        self._submit = JsonResource({b"POST": _counting(api.submit)})
        self._batch = JsonResource({b"POST": _counting(api.submit_batch)})

    def render(self, request: Request) -> bytes | int:
        return self._submit.render(request)

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"batch":
            return self._batch
        message_id = path.decode("ascii", "replace")

        async def receipt(request: Request) -> JsonResponse:
            return await self._api.receipt(request, message_id)

        async def cancel(request: Request) -> JsonResponse:
            return await self._api.cancel(request, message_id)

        return JsonResource({b"GET": _counting(receipt), b"DELETE": _counting(cancel)})


class _DevicesTree(Resource):
    """``/v1/devices/<clientId>/session`` and ``/v1/devices/<clientId>/topics``."""

    def __init__(self, api: NotificationApi) -> None:
        super().__init__()
        self._api = api

    def render(self, request: Request) -> bytes | int:
        return JsonTree().render(request)

    def getChild(self, path: bytes, request: Request) -> Resource:
        client_id = path.decode("utf-8", "replace")

        async def kick(request: Request) -> JsonResponse:
            return await self._api.kick(request, client_id)

        async def topics(request: Request) -> JsonResponse:
            return await self._api.topics.device_topics(request, client_id)

        device = JsonTree()
        if self._api.has_sessions:
            device.putChild(b"session", JsonResource({b"DELETE": _counting(kick)}))
        device.putChild(b"topics", JsonResource({b"GET": self._api.guarded(topics)}))
        return device
