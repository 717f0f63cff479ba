"""AMP commands between delivery workers and push servers.

Delivery calls the server's ``Push`` and ``Kick``; the server calls delivery's
``PullMany`` (the pulls of many clients in one call) or, for one client,
``Pull``. An AMP value holds at most 65,535 bytes, so batches of messages travel
as one compact JSON value each, split by ``encode_batches`` into chunks that
fit; a caller sends one ``Push`` per chunk. Every command declares the errors
``BadRequest`` (AMP code ``BAD_REQUEST``) and ``TemporarilyUnavailable``
(``UNAVAILABLE``); a responder raises those rather than an undeclared error,
which AMP would answer by dropping the connection.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.protocols import amp

from pigeonpush.compactjson import dumps as compact_json

#: Largest AMP value (the protocol's own limit).
MAX_VALUE_BYTES = 0xFFFF


class PushStatus(enum.IntEnum):
    """The server's answer for one item of a ``Push``."""

    WRITTEN = 0  #: written to the client's connection
    OFFLINE = 1  #: no connection here (a stale ROUTE to this server was dropped)
    WINDOW_FULL = 2  #: the connection has its window of un-ACKed PUSHes in flight
    NO_BODY = 3  #: sent without body and MSG_BODY is gone (expired)
    #: the message does not fit the client's frame limit: it can never be written
    TOO_LARGE = 4


#: The extras of an item without any (shared, so read-only).
NO_EXTRAS: Mapping[str, str] = MappingProxyType({})


class PushItem(NamedTuple):
    """One message for one client. ``has_body=False`` means: read MSG_BODY.

    A named tuple rather than an attrs class: a pigeon-server builds one per
    message it receives over AMP, and a frozen attrs instance costs 1.3 us to
    build against 0.2 us for the tuple (``decode_batch`` builds it without
    even the tuple's own ``__new__``). Immutable all the same."""

    client_id: str
    message_id: str
    title: str = ""
    text: str = ""
    extras: Mapping[str, str] = NO_EXTRAS
    has_body: bool = True
    #: the topic it came through (in process only: a topic catch-up; AMP
    #: pushes carry messages to clientIds)
    topic: str = ""


def _item_json(item: PushItem) -> bytes:
    if item.has_body:
        row: list[object] = [item.client_id, item.message_id, item.title, item.text]
        if item.extras:
            row.append(dict(item.extras))
    else:
        row = [item.client_id, item.message_id]
    return compact_json(row).encode()


def encode_batches(
    items: Sequence[PushItem], max_bytes: int = MAX_VALUE_BYTES
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(count, value)``: consecutive runs of ``items`` encoded to fit one
    AMP value. An item that alone exceeds ``max_bytes`` raises ValueError (the
    notification API's size limits keep that from happening)."""
    return _chunk_rows(
        ((_item_json(item), f"message {item.message_id}") for item in items), max_bytes
    )


def _chunk_rows(rows: Iterable[tuple[bytes, str]], max_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Consecutive runs of JSON ``rows`` (each with what to call it in an
    error) joined into JSON arrays of at most ``max_bytes``."""
    parts: list[bytes] = []
    size = 2  # the brackets, plus a comma before every row but the first
    for encoded, what in rows:
        if len(encoded) + 2 > max_bytes:
            raise ValueError(f"{what} is too large for one AMP value")
        if parts and size + 1 + len(encoded) > max_bytes:
            yield len(parts), b"[" + b",".join(parts) + b"]"
            parts, size = [], 2
        size += len(encoded) + (1 if parts else 0)
        parts.append(encoded)
    if parts:
        yield len(parts), b"[" + b",".join(parts) + b"]"


def _json_rows(value: bytes, what: str) -> list[object]:
    """The JSON array in ``value``; ValueError saying it is not ``what``."""
    try:
        rows = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not {what}: {e}") from e
    except RecursionError:
        raise ValueError(f"not {what}: nested too deeply") from None
    if not isinstance(rows, list):
        raise ValueError(f"not {what}: not a list")
    return rows


def decode_batch(value: bytes) -> list[PushItem]:
    """The items of one encoded batch; ValueError if it is not one.

    The server's hot path: a row's fields are checked with ``type(...) is``
    (``json.loads`` builds exact ``str``, ``list`` and ``dict``) and each
    item is built straight from its fields."""
    rows = _json_rows(value, "a message batch")
    items: list[PushItem] = []
    append = items.append
    for row in rows:
        if type(row) is list:
            size = len(row)
            if size == 4:
                client_id, message_id, title, text = row
                extras: Mapping[str, str] = NO_EXTRAS
            elif size == 5:
                client_id, message_id, title, text, extras = row
                if type(extras) is not dict or not all(
                    type(k) is str and type(v) is str for k, v in extras.items()
                ):
                    raise ValueError(f"not a message batch item: {row!r}")
            elif size == 2:
                client_id, message_id = row
                if type(client_id) is str and type(message_id) is str:
                    append(
                        _new_item(PushItem, (client_id, message_id, "", "", NO_EXTRAS, False, ""))
                    )
                    continue
                raise ValueError(f"not a message batch item: {row!r}")
            else:
                raise ValueError(f"not a message batch item: {row!r}")
            if (
                type(client_id) is str
                and type(message_id) is str
                and type(title) is str
                and type(text) is str
            ):
                append(_new_item(PushItem, (client_id, message_id, title, text, extras, True, "")))
                continue
        raise ValueError(f"not a message batch item: {row!r}")
    return items


#: ``PushItem`` from a tuple of all its fields, without ``PushItem.__new__``.
_new_item = tuple.__new__


class BadRequest(Exception):
    """The command's arguments are malformed (AMP error ``BAD_REQUEST``)."""


class TemporarilyUnavailable(Exception):
    """The peer cannot serve the command now, e.g. its store does not answer
    (AMP error ``UNAVAILABLE``); the caller retries later."""


_ERRORS: dict[type[Exception], bytes] = {
    BadRequest: b"BAD_REQUEST",
    TemporarilyUnavailable: b"UNAVAILABLE",
}


class Push(amp.Command):
    """Write messages to clients connected to this server."""

    commandName = b"Push"
    arguments = [(b"batch", amp.String())]  # encode_batches value
    response = [(b"results", amp.String())]  # one PushStatus byte per item, in order
    errors = _ERRORS
    requiresAnswer = True


class Kick(amp.Command):
    """End a client's session with KICK (reason: a wire KickReason value)."""

    commandName = b"Kick"
    arguments = [(b"clientId", amp.Unicode()), (b"reason", amp.Integer())]
    response = [(b"kicked", amp.Boolean())]
    errors = _ERRORS


class Pull(amp.Command):
    """Pending messages for a client, oldest first, with bodies.

    ``inFlight`` lists ids already pushed on the connection and not ACKed yet;
    they are skipped. ``more`` says whether more were pending than returned.
    """

    commandName = b"Pull"
    arguments = [
        (b"clientId", amp.Unicode()),
        (b"limit", amp.Integer()),
        (b"inFlight", amp.ListOf(amp.Unicode())),
    ]
    response = [(b"batch", amp.String()), (b"more", amp.Boolean())]
    errors = _ERRORS


class PullMany(amp.Command):
    """``Pull`` for many clients at once: one call and one store read per batch.

    ``requests`` is ``encode_pull_requests`` rows ``[clientId, limit,
    [inFlight...]]``. The answer's ``batch`` holds as many items as fit one AMP
    value, each client's oldest first; ``more`` lists the clients that have
    more pending than the batch carries (also those whose items did not fit).
    """

    commandName = b"PullMany"
    arguments = [(b"requests", amp.String())]
    response = [(b"batch", amp.String()), (b"more", amp.ListOf(amp.Unicode()))]
    errors = _ERRORS


@attrs.frozen(slots=True)
class PullRequest:
    """One client's pull: at most ``limit`` messages, skipping ``in_flight``."""

    client_id: str
    limit: int
    in_flight: tuple[str, ...] = ()


def _request_json(request: PullRequest) -> bytes:
    row = [request.client_id, request.limit, list(request.in_flight)]
    return compact_json(row).encode()


def encode_pull_requests(
    requests: Sequence[PullRequest], max_bytes: int = MAX_VALUE_BYTES
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(count, value)``: consecutive runs of ``requests`` that fit one
    AMP value each. A request that alone exceeds ``max_bytes`` raises
    ValueError (a window of ids never comes close)."""
    return _chunk_rows(
        ((_request_json(request), f"the pull of {request.client_id}") for request in requests),
        max_bytes,
    )


def decode_pull_requests(value: bytes) -> list[PullRequest]:
    """The requests of one ``encode_pull_requests`` value; ValueError if it is not one."""
    rows = _json_rows(value, "a list of pull requests")
    requests = []
    for row in rows:
        if (
            not isinstance(row, list)
            or len(row) != 3
            or not isinstance(row[0], str)
            or type(row[1]) is not int
            or not isinstance(row[2], list)
            or not all(isinstance(message_id, str) for message_id in row[2])
        ):
            raise ValueError(f"not a pull request: {row!r}")
        requests.append(PullRequest(row[0], row[1], tuple(row[2])))
    return requests


#: One client's answer: its pending messages oldest first, and whether more are pending.
PullAnswer = tuple[list[PushItem], bool]


class PushGateway(Protocol):
    """What delivery needs of one push server. The server implements it in
    process; over the network it is the ``Push``/``Kick`` AMP commands, so the
    all-in-one process calls the same object directly."""

    def push(self, items: Sequence[PushItem]) -> Deferred[list[PushStatus]]:
        """Write each item to its client's connection; a status per item, in order."""

    def kick(self, client_id: str, reason: int) -> Deferred[bool]:
        """End the client's session; False if it has none here."""


class PullSource(Protocol):
    """What a push server needs of delivery: ``Pull`` over AMP, or in process.

    A source may also offer ``pull_many`` (see ``BatchPullSource``): the
    server then batches its pulls."""

    def pull(
        self, client_id: str, limit: int, in_flight: Sequence[str]
    ) -> Deferred[tuple[list[PushItem], bool]]:
        """Pending messages (with bodies) oldest first, skipping ``in_flight``;
        and whether more are pending than returned."""


class BatchPullSource(PullSource, Protocol):
    """A ``PullSource`` that also answers many clients' pulls in one call."""

    def pull_many(self, requests: Sequence[PullRequest]) -> Deferred[list[PullAnswer]]:
        """``pull`` for each request, in order, answered together."""
