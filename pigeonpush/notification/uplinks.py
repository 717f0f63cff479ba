"""``GET /v1/uplinks`` and ``GET /v1/uplinks/dead``: application servers read
what devices sent (docs/uplink.rst).

The pull API is a cursor over the store's uplink stream: a reader asks for
what came after the last entry id it has (``after``) and keeps the ``next``
of the answer; nothing is consumed on the server, so any number of readers
each keep their own position, and a reader that crashed before it stored
``next`` reads the same uplinks again (at least once). ``wait`` makes it a
long poll: with nothing new, the answer comes as soon as an uplink arrives,
or empty after ``wait`` seconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.web.resource import Resource
from twisted.web.server import Request

from pigeonpush.http import ApiError, JsonResource, JsonResponse, JsonTree, echo, invalid
from pigeonpush.notification.api import iso8601
from pigeonpush.store.checks import entry_key
from pigeonpush.store.interface import Store, StoreError
from pigeonpush.store.model import DeadUplink, Uplink

#: Longest ``wait`` of a long poll, in seconds (below any proxy's idle timeout).
MAX_WAIT = 30.0
#: Most uplinks in one answer, and the default.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def uplink_body(uplink: Uplink) -> dict[str, Any]:
    return {
        "id": uplink.entry_id,
        "clientId": uplink.client_id,
        "uplinkId": uplink.uplink_id,
        "data": dict(uplink.data),
        "receivedAt": iso8601(uplink.received_at),
    }


def dead_body(dead: DeadUplink) -> dict[str, Any]:
    return {
        "uplink": uplink_body(dead.uplink),
        "attempts": dead.attempts,
        "error": dead.error,
        "failedAt": iso8601(dead.failed_at),
    }


class UplinkApi:
    """The handlers of ``/v1/uplinks``; ``authorize`` raises ApiError 401."""

    def __init__(
        self,
        store: Store,
        authorize: Callable[[Request], object],
        unavailable: Callable[[StoreError], ApiError],
    ) -> None:
        self._store = store
        self._authorize = authorize
        self._unavailable = unavailable

    def resource(self) -> Resource:
        tree = _UplinksTree(JsonResource({b"GET": self.read}))
        tree.putChild(b"dead", JsonResource({b"GET": self.dead}))
        return tree

    async def read(self, request: Request) -> JsonResponse:
        self._authorize(request)
        _only(request, (b"after", b"wait", b"limit"))
        after = _text(request, b"after", "0")
        try:
            entry_key(after)
        except ValueError as e:
            raise invalid(f"after: {e}", "after") from None
        wait = _number(request, b"wait", 0.0, 0.0, MAX_WAIT, float)
        limit = int(_number(request, b"limit", DEFAULT_LIMIT, 1, MAX_LIMIT, int))
        reading = self._store.uplinks(after, limit, wait)
        # A client that goes away ends its wait (and frees the store's reader).
        request.notifyFinish().addErrback(lambda _: reading.cancel())
        try:
            uplinks = await reading
        except StoreError as e:
            raise self._unavailable(e) from None
        except CancelledError:
            return JsonResponse({"uplinks": [], "next": after})
        return JsonResponse(
            {
                "uplinks": [uplink_body(uplink) for uplink in uplinks],
                "next": uplinks[-1].entry_id if uplinks else after,
            }
        )

    async def dead(self, request: Request) -> JsonResponse:
        self._authorize(request)
        _only(request, (b"limit",))
        limit = int(_number(request, b"limit", DEFAULT_LIMIT, 1, MAX_LIMIT, int))
        try:
            dead = await self._store.dead_uplinks(limit)
        except StoreError as e:
            raise self._unavailable(e) from None
        return JsonResponse({"dead": [dead_body(item) for item in dead]})


class _UplinksTree(JsonTree):
    """``/v1/uplinks`` (a leaf of its own) and its children."""

    def __init__(self, own: Resource) -> None:
        super().__init__()
        self._own = own

    def render(self, request: Request) -> Any:
        return self._own.render(request)

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self._own
        return super().getChild(path, request)


def _only(request: Request, names: tuple[bytes, ...]) -> None:
    """400 for a query parameter this endpoint does not take: a misspelt
    ``wiat`` must not silently mean "do not wait"."""
    unknown = sorted(set(request.args or {}) - set(names))
    if unknown:
        name = unknown[0].decode("utf-8", "replace")
        raise invalid(f"unknown query parameter {echo(name)!r}", echo(name))


def _text(request: Request, name: bytes, default: str) -> str:
    values = (request.args or {}).get(name)
    if not values:
        return default
    if len(values) > 1:
        raise invalid(f"{name.decode()} is given more than once", name.decode())
    try:
        return str(values[0].decode("ascii"))
    except UnicodeDecodeError:
        raise invalid(f"{name.decode()} must be ASCII", name.decode()) from None


_WHOLE = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,6})?")


def _number(
    request: Request,
    name: bytes,
    default: float,
    low: float,
    high: float,
    kind: type[float] | type[int],
) -> float:
    if name not in (request.args or {}):
        return default
    text = _text(request, name, "")
    what = "a whole number" if kind is int else "a number"
    # Plain decimal only: int() and float() would also take "", " 5", "5_0",
    # "+5", "1e3", "nan" and digits of other scripts.
    value: float | None = None
    if (_WHOLE if kind is int else _DECIMAL).fullmatch(text):
        value = kind(text)
    if value is None or not low <= value <= high:
        raise invalid(f"{name.decode()} must be {what} from {low:g} to {high:g}", name.decode())
    return value
