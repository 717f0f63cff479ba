"""The subscription endpoints of the notification API (docs/audiences.rst).

``POST /v1/topics/{topic}/subscribers`` with ``{"add": [...], "remove":
[...]}``, ``DELETE /v1/topics/{topic}`` and ``GET
/v1/devices/{clientId}/topics``. Topic names and clientIds follow
``pigeonpush.identifiers``. A request that gets a 4xx writes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.web.resource import Resource
from twisted.web.server import Request

from pigeonpush.http import (
    JsonResource,
    JsonResponse,
    JsonTree,
    checked_identifier,
    echo,
    invalid,
    read_json_object,
)
from pigeonpush.identifiers import CLIENT_ID, TOPIC, is_client_id
from pigeonpush.notification.validate import Invalid
from pigeonpush.store.interface import Store

#: The most clientIds one subscribers request adds and removes together.
DEFAULT_MAX_CHANGES = 1000


@attrs.frozen(slots=True)
class SubscriberChanges:
    """A valid subscribers request."""

    add: tuple[str, ...]
    remove: tuple[str, ...]


def subscriber_changes(data: dict[str, Any], limit: int) -> SubscriberChanges | Invalid:
    """The clientIds to add and remove, or what is wrong (naming its field)."""
    for name in sorted(set(data) - {"add", "remove"}):
        return Invalid(echo(name), f'unknown field "{echo(name)}": send "add" and "remove"')
    lists: dict[str, tuple[str, ...]] = {}
    for name in ("add", "remove"):
        value = data.get(name, [])
        if not isinstance(value, list):
            return Invalid(name, f"{name} must be a list of clientIds")
        for index, client_id in enumerate(value):
            if not is_client_id(client_id):
                return Invalid(f"{name}[{index}]", f"each clientId must be {CLIENT_ID.text}")
        lists[name] = tuple(dict.fromkeys(value))
    total = len(lists["add"]) + len(lists["remove"])
    if total == 0:
        return Invalid("add", "add or remove must name at least one clientId")
    if total > limit:
        return Invalid("add", f"add and remove name {total} clientIds; at most {limit}")
    both = sorted(set(lists["add"]) & set(lists["remove"]))
    if both:
        return Invalid("remove", f"clientId {both[0]} is both added and removed")
    return SubscriberChanges(lists["add"], lists["remove"])


Handler = Callable[[Request], Awaitable[JsonResponse]]


class TopicsApi:
    """The handlers; the notification API mounts them (``topics_tree``,
    ``device_topics_resource``) and wraps each (authorization, error counts)."""

    def __init__(
        self,
        store: Store,
        *,
        max_topics: int,
        max_changes: int = DEFAULT_MAX_CHANGES,
    ) -> None:
        self._store = store
        self._max_topics = max_topics
        self._max_changes = max_changes

    async def update_subscribers(self, request: Request, topic: str, max_body: int) -> JsonResponse:
        _check_topic(topic)
        changes = subscriber_changes(read_json_object(request, max_body), self._max_changes)
        if isinstance(changes, Invalid):
            raise invalid(changes.message, changes.field)
        added, removed = 0, 0
        refused: tuple[str, ...] = ()
        if changes.remove:
            removed = await self._store.unsubscribe(topic, changes.remove)
        if changes.add:
            change = await self._store.subscribe(topic, changes.add, self._max_topics)
            added, refused = change.added, change.refused
        body = {"topic": topic, "added": added, "removed": removed, "refused": list(refused)}
        return JsonResponse(body)

    async def delete_topic(self, request: Request, topic: str) -> JsonResponse:
        _check_topic(topic)
        unsubscribed = await self._store.delete_topic(topic)
        return JsonResponse({"topic": topic, "unsubscribed": unsubscribed})

    async def device_topics(self, request: Request, client_id: str) -> JsonResponse:
        checked_identifier(CLIENT_ID, client_id)
        topics = await self._store.device_topics(client_id)
        return JsonResponse({"clientId": client_id, "topics": topics})


def _check_topic(topic: str) -> None:
    checked_identifier(TOPIC, topic)


class TopicsTree(Resource):
    """``/v1/topics/<topic>`` (DELETE) and ``/v1/topics/<topic>/subscribers`` (POST)."""

    def __init__(self, wrap: Callable[[Handler], Handler], api: TopicsApi, max_body: int) -> None:
        super().__init__()
        self._wrap = wrap
        self._api = api
        self._max_body = max_body

    def render(self, request: Request) -> bytes | int:
        return JsonTree().render(request)

    def getChild(self, path: bytes, request: Request) -> Resource:
        topic = path.decode("utf-8", "replace")

        async def delete(request: Request) -> JsonResponse:
            return await self._api.delete_topic(request, topic)

        async def update(request: Request) -> JsonResponse:
            return await self._api.update_subscribers(request, topic, self._max_body)

        node = _Node({b"DELETE": self._wrap(delete)})
        node.putChild(b"subscribers", JsonResource({b"POST": self._wrap(update)}))
        return node


class _Node(JsonResource):
    """A JsonResource that also has children (``JsonResource`` is a leaf)."""

    isLeaf = False

    def getChild(self, path: bytes, request: Request) -> Resource:
        return JsonTree().getChild(path, request)
