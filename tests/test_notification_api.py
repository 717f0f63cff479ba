"""The notification HTTP API over real loopback HTTP, on both store backends.

Every answer is checked against docs/openapi/notification.json. Every 4xx is
checked to write nothing: on Redis by comparing a snapshot of every key
(type, contents, TTL presence) before and after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred

from pigeonpush.delivery.gateway import AmpGateways
from pigeonpush.http import JsonSite
from pigeonpush.identifiers import CLIENT_ID
from pigeonpush.ids import is_message_id
from pigeonpush.notification.api import ApiSettings, NotificationApi, iso8601
from pigeonpush.notification.auth import ApiKeys
from pigeonpush.notification.core import Notifications
from pigeonpush.notification.sessions import DeviceSessions
from pigeonpush.notification.validate import Limits
from pigeonpush.rpcpool import AmpPool
from pigeonpush.store import DropReason, Store, open_store
from pigeonpush.wire.frames import KickReason
from support.identifier_cases import BAD_CLIENT_IDS
from support.openapi import Answer, CheckedClient, OpenAPIDocument
from support.server_double import ServerDouble
from support.servers import free_port
from support.waiting import wait_for

DOCUMENT = OpenAPIDocument.load(Path(__file__).parent.parent / "docs/openapi/notification.json")
KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = Limits(max_recipients=5)
SETTINGS = ApiSettings(max_body=20_000, max_batch=3)
#: How long a receipt outlives its message here (seconds).
RETENTION = 2.0


def parse_redis(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    return host, int(port)


async def redis_snapshot(url: str) -> dict[str, Any]:
    """Every key with its type, contents and whether it expires."""
    import txredisapi

    host, port = parse_redis(url)
    connection = await txredisapi.Connection(host, port, reconnect=False, convertNumbers=False)
    try:
        snapshot: dict[str, Any] = {}
        for key in await connection.keys("*"):
            kind = await connection.type(key)
            if kind == "string":
                value: Any = await connection.get(key)
            elif kind == "hash":
                value = await connection.hgetall(key)
            elif kind == "set":
                value = sorted(await connection.smembers(key))
            elif kind == "stream":
                value = [
                    await connection.execute_command("XLEN", key),
                    await connection.execute_command("XINFO", "GROUPS", key),
                ]
            else:
                value = kind
            has_ttl = (await connection.execute_command("PTTL", key)) > 0
            snapshot[key] = (kind, value, has_ttl)
        return snapshot
    finally:
        await connection.disconnect()


@attrs.define
class Api:
    """A notification API on a loopback port, its store and a checked client."""

    backend: str
    store: Store
    client: CheckedClient
    url: str
    redis_url: str | None
    port: Any
    pool: AmpPool

    async def snapshot(self) -> Any:
        if self.redis_url is not None:
            return await redis_snapshot(self.redis_url)
        size = self.store.size()  # type: ignore[attr-defined]
        return (size, await self.store.queue_lag())

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Answer:
        return await self.client.post(path, body, headers={**AUTH, **(headers or {})})

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return await self.client.get(path, headers=AUTH if headers is None else headers)

    async def send(self, **body: Any) -> Answer:
        body.setdefault("title", "Hello")
        body.setdefault("text", "World")
        return await self.post("/v1/notifications", body)


def start_api(
    store: Store,
    reactor: Any,
    limits: Limits = LIMITS,
    settings: ApiSettings = SETTINGS,
    pool: AmpPool | None = None,
) -> tuple[Any, str]:
    """The API on a loopback port; with ``pool``, kicks reach servers over AMP."""
    notifications = Notifications(store, reactor, limits)
    sessions = None if pool is None else DeviceSessions(store, AmpGateways(pool))
    api = NotificationApi(notifications, ApiKeys([KEY, OTHER_KEY]), settings, sessions)
    site = JsonSite(api.resource(), max_body=settings.max_body, reactor=reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}"


@pytest.fixture(params=["memory", "redis"])
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    from twisted.internet import reactor

    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    store = open_store(
        redis_url or "memory:", reactor, idempotency_ttl=60, receipt_retention=RETENTION
    )
    pool = AmpPool(reactor)
    port, url = start_api(store, reactor, pool=pool)
    client = CheckedClient(reactor, url, DOCUMENT)
    try:
        yield Api(request.param, store, client, url, redis_url, port, pool)
    finally:
        pytest_twisted.blockon(ensureDeferred(client.close()))
        pytest_twisted.blockon(port.stopListening())
        pytest_twisted.blockon(pool.close())
        pytest_twisted.blockon(store.close())


def test_the_document_is_valid_openapi() -> None:
    DOCUMENT.check_document()


# -- accepted notifications -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_notification_is_stored_queued_and_has_a_receipt(api: Api) -> None:
    answer = await api.send(to=["alice", "bob", "alice"], ttl=600, extras={"k": "v"})
    assert answer.status == 202
    message_id = answer.json["messageId"]
    assert is_message_id(message_id)
    assert answer.json == {"messageId": message_id, "recipients": 2}
    assert answer.header("Location") == f"/v1/notifications/{message_id}"
    assert answer.header("Idempotent-Replayed") is None

    assert await api.store.pending_ids("alice") == [message_id]
    assert await api.store.pending_ids("bob") == [message_id]
    assert await api.store.queue_lag() == 1
    (body,) = await api.store.bodies([message_id])
    assert body is not None
    assert (body.title, body.text, dict(body.extras)) == ("Hello", "World", {"k": "v"})
    assert body.expires_at - body.created_at == pytest.approx(600)

    receipt = await api.get(f"/v1/notifications/{message_id}")
    assert receipt.status == 200
    assert receipt.json == {
        "messageId": message_id,
        "createdAt": iso8601(body.created_at),
        "expiresAt": iso8601(body.expires_at),
        "recipients": 2,
        "pending": ["alice", "bob"],
        "acked": 0,
        "ackedBy": [],
        "expired": [],
        "dropped": [],
        "replaced": [],
    }
    await api.store.ack([("alice", message_id)])
    receipt = await api.get(f"/v1/notifications/{message_id}")
    assert (receipt.json["pending"], receipt.json["acked"]) == (["bob"], 1)
    assert receipt.json["ackedBy"] == ["alice"]


@pytest_twisted.ensureDeferred
async def test_default_ttl_and_unicode(api: Api) -> None:
    answer = await api.send(to=["a"], title="Grüße 🐦", text="你好")
    (body,) = await api.store.bodies([answer.json["messageId"]])
    assert body is not None
    assert (body.title, body.text) == ("Grüße 🐦", "你好")
    assert body.expires_at - body.created_at == pytest.approx(LIMITS.default_ttl)


@pytest_twisted.ensureDeferred
async def test_message_ids_are_time_ordered(api: Api) -> None:
    ids = [(await api.send(to=["a"])).json["messageId"] for _ in range(5)]
    assert ids == sorted(ids)
    assert await api.store.pending_ids("a") == ids


@pytest_twisted.ensureDeferred
async def test_an_idempotent_retry_returns_the_first_answer_and_writes_nothing(api: Api) -> None:
    body = {"to": ["a", "b"], "title": "t", "text": "x"}
    first = await api.post("/v1/notifications", body, {"Idempotency-Key": "order-42"})
    before = await api.snapshot()
    again = await api.post(
        "/v1/notifications", {**body, "text": "changed"}, {"Idempotency-Key": "order-42"}
    )
    assert again.status == 202
    assert again.json == first.json
    assert again.header("Idempotent-Replayed") == "true"
    assert await api.snapshot() == before
    # The key is scoped to the API key: another key's "order-42" is another request.
    other = await api.client.post(
        "/v1/notifications",
        body,
        headers={"Authorization": f"Bearer {OTHER_KEY}", "Idempotency-Key": "order-42"},
    )
    assert other.json["messageId"] != first.json["messageId"]
    assert await api.store.queue_lag() == 2


# -- batches ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_batch_with_a_bad_item_accepts_the_good_ones(api: Api) -> None:
    answer = await api.post(
        "/v1/notifications/batch",
        {
            "notifications": [
                {"to": ["a"], "title": "one", "text": "x"},
                {"to": ["b"], "title": "two", "text": "x", "ttl": 0},
                {"to": ["c", "d"], "title": "three", "text": "x", "ttl": 60},
            ]
        },
    )
    assert answer.status == 200
    first, bad, third = answer.json["results"]
    assert bad == {
        "error": "invalid",
        "message": "ttl must be a whole number of seconds from 1 to 2419200",
        "field": "ttl",
    }
    assert first["recipients"] == 1 and third["recipients"] == 2
    assert first["messageId"] < third["messageId"]
    assert await api.store.pending_ids("a") == [first["messageId"]]
    assert await api.store.pending_ids("b") == []
    assert await api.store.pending_ids("d") == [third["messageId"]]
    assert await api.store.queue_lag() == 2


@pytest_twisted.ensureDeferred
async def test_a_batch_of_only_bad_items_answers_each_and_writes_nothing(api: Api) -> None:
    before = await api.snapshot()
    answer = await api.post(
        "/v1/notifications/batch",
        {"notifications": [{"to": []}, "not an object"]},
    )
    assert answer.status == 200
    assert [r["field"] for r in answer.json["results"]] == ["to", ""]
    assert await api.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_an_idempotent_batch_retry_returns_the_same_results(api: Api) -> None:
    batch = {
        "notifications": [
            {"to": ["a"], "title": "one", "text": "x"},
            {"to": ["b"], "title": "two", "text": "x", "ttl": -1},
            {"to": ["c"], "title": "three", "text": "x"},
        ]
    }
    first = await api.post("/v1/notifications/batch", batch, {"Idempotency-Key": "run-7"})
    before = await api.snapshot()
    again = await api.post("/v1/notifications/batch", batch, {"Idempotency-Key": "run-7"})
    assert again.json == first.json
    assert await api.snapshot() == before
    # The single endpoint's key space is separate from the batch's.
    single = await api.post(
        "/v1/notifications", batch["notifications"][0], {"Idempotency-Key": "run-7"}
    )
    assert single.json["messageId"] != first.json["results"][0]["messageId"]


# -- receipts -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_receipt_reports_every_state_with_its_reason(api: Api) -> None:
    answer = await api.send(to=["ann", "ben", "cat", "dan", "eve"], ttl=600)
    message_id = answer.json["messageId"]
    await api.store.ack([("ben", message_id)])
    await api.store.drop_pending(
        [
            ("cat", message_id, DropReason.TOO_LARGE.value),
            ("dan", message_id, DropReason.FAILED.value),
            ("eve", message_id, DropReason.EXPIRED.value),
        ]
    )
    receipt = await api.get(f"/v1/notifications/{message_id}")
    assert receipt.status == 200
    assert {k: v for k, v in receipt.json.items() if k not in ("createdAt", "expiresAt")} == {
        "messageId": message_id,
        "recipients": 5,
        "pending": ["ann"],
        "acked": 1,  # dropped recipients do not count as ACKed
        "ackedBy": ["ben"],
        "expired": ["eve"],
        "dropped": [
            {"clientId": "cat", "reason": "too_large"},
            {"clientId": "dan", "reason": "failed"},
        ],
        "replaced": [],
    }


@pytest_twisted.ensureDeferred
async def test_an_expired_message_keeps_its_receipt_for_the_retention(api: Api) -> None:
    answer = await api.send(to=["a", "b"], ttl=1)
    message_id = answer.json["messageId"]
    path = f"/v1/notifications/{message_id}"
    await api.store.ack([("b", message_id)])
    assert (await api.get(path)).json["pending"] == ["a"]

    async def expired() -> bool:
        return (await api.get(path)).json["expired"] == ["a"]

    await wait_for(expired, timeout=5, interval=0.1, what="the receipt to say expired")
    receipt = await api.get(path)
    assert (receipt.json["pending"], receipt.json["ackedBy"]) == ([], ["b"])

    async def body_gone() -> bool:
        return await api.store.bodies([message_id]) == [None]

    await wait_for(body_gone, timeout=5, interval=0.1, what="the body to go at the TTL")

    async def gone() -> bool:
        return (await api.get(path)).status == 404

    await wait_for(gone, timeout=RETENTION + 5, interval=0.1, what="the receipt to go")
    final = await api.get(path)
    assert final.json["error"] == "not_found"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "message_id", ["01HZX3JQ6Q4V8Y2N7K5M9T1B3C", "not-an-id", "01hzx3jq6q4v8y2n7k5m9t1b3c"]
)
async def test_unknown_or_malformed_ids_are_404(api: Api, message_id: str) -> None:
    answer = await api.get(f"/v1/notifications/{message_id}")
    assert answer.status == 404
    assert answer.json["error"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_a_receipt_needs_a_key(api: Api) -> None:
    message_id = (await api.send(to=["a"])).json["messageId"]
    answer = await api.get(f"/v1/notifications/{message_id}", headers={})
    assert answer.status == 401


# -- collapse keys and scheduled sends -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_collapse_key_replaces_the_pending_older_notification(api: Api) -> None:
    older = (await api.send(to=["a", "b"], collapseKey="score")).json["messageId"]
    await api.store.ack([("b", older)])
    newer = (await api.send(to=["a", "b"], collapseKey="score")).json["messageId"]
    assert await api.store.pending_ids("a") == [newer]
    receipt = await api.get(f"/v1/notifications/{older}")
    assert (receipt.json["replaced"], receipt.json["ackedBy"]) == (["a"], ["b"])
    assert "sendAt" not in receipt.json


@pytest_twisted.ensureDeferred
async def test_a_scheduled_notification_waits_and_can_be_cancelled(api: Api) -> None:
    answer = await api.send(to=["a", "b"], delay=3600, ttl=60)
    assert answer.status == 202
    message_id = answer.json["messageId"]
    assert await api.store.pending_ids("a") == []
    assert await api.store.queue_lag() == 0
    receipt = (await api.get(f"/v1/notifications/{message_id}")).json
    assert receipt["scheduled"] == ["a", "b"]
    assert (receipt["pending"], receipt["cancelled"]) == ([], [])
    (body,) = await api.store.bodies([message_id])
    assert body is not None
    # The TTL counts from the send time.
    assert body.expires_at - body.created_at == pytest.approx(3660, abs=1)
    assert receipt["sendAt"] == iso8601(body.expires_at - 60)

    path = f"/v1/notifications/{message_id}"
    for _ in range(2):  # cancelling again is harmless
        cancelled = await api.client.request("DELETE", path, headers=AUTH)
        assert cancelled.status == 200
        assert cancelled.json == {"messageId": message_id, "cancelled": True}
    receipt = (await api.get(path)).json
    assert (receipt["scheduled"], receipt["cancelled"]) == ([], ["a", "b"])
    assert await api.store.release_due(10, 30.0) == 0


@pytest_twisted.ensureDeferred
async def test_a_sent_notification_cannot_be_cancelled(api: Api) -> None:
    send_at = iso8601(api_now() - 10)  # already past: sent now
    message_id = (await api.send(to=["a"], sendAt=send_at)).json["messageId"]
    assert await api.store.pending_ids("a") == [message_id]
    path = f"/v1/notifications/{message_id}"
    answer = await api.client.request("DELETE", path, headers=AUTH)
    assert answer.status == 409
    assert answer.json["error"] == "already_sent"
    for unknown in ("01HZX3JQ6Q4V8Y2N7K5M9T1B3C", "not-an-id"):
        answer = await api.client.request("DELETE", f"/v1/notifications/{unknown}", headers=AUTH)
        assert (answer.status, answer.json["error"]) == (404, "not_found")
    answer = await api.client.request("DELETE", path, headers={})
    assert answer.status == 401


def api_now() -> float:
    from twisted.internet import reactor

    return float(reactor.seconds())


# -- every refusal writes nothing -----------------------------------------------------------

BIG = "x" * 30_000


@attrs.frozen
class Refusal:
    path: str
    body: Any
    status: int
    code: str
    headers: dict[str, str] = attrs.field(factory=lambda: dict(AUTH))
    raw: bytes | None = None
    field: str | None = None


REFUSALS = {
    "no key": Refusal("/v1/notifications", {"to": ["a"], "title": "", "text": ""}, 401,
                      "unauthorized", headers={}),
    "wrong key": Refusal("/v1/notifications", {"to": ["a"], "title": "", "text": ""}, 401,
                         "unauthorized", headers={"Authorization": "Bearer not-a-key-000000000"}),
    "basic auth": Refusal("/v1/notifications", {"to": ["a"], "title": "", "text": ""}, 401,
                          "unauthorized", headers={"Authorization": f"Basic {KEY}"}),
    "bad json": Refusal("/v1/notifications", None, 400, "bad_json", raw=b'{"to": ['),
    "empty body": Refusal("/v1/notifications", None, 400, "bad_json", raw=b""),
    "nan": Refusal("/v1/notifications", None, 400, "bad_json",
                   raw=b'{"to": ["a"], "title": "", "text": "", "ttl": NaN}'),
    "array body": Refusal("/v1/notifications", [1, 2], 400, "invalid"),
    "no recipients": Refusal("/v1/notifications", {"to": [], "title": "", "text": ""}, 400,
                             "invalid", field="to"),
    "too many recipients": Refusal(
        "/v1/notifications", {"to": ["a", "b", "c", "d", "e", "f"], "title": "", "text": ""},
        400, "invalid", field="to"),
    "bad client id": Refusal("/v1/notifications", {"to": ["a", "b/c"], "title": "", "text": ""},
                             400, "invalid", field="to[1]"),
    "title wrong type": Refusal("/v1/notifications", {"to": ["a"], "title": 1, "text": ""}, 400,
                                "invalid", field="title"),
    "text missing": Refusal("/v1/notifications", {"to": ["a"], "title": ""}, 400, "invalid",
                            field="text"),
    "oversize title": Refusal("/v1/notifications", {"to": ["a"], "title": "t" * 257, "text": ""},
                              400, "invalid", field="title"),
    "oversize extras": Refusal(
        "/v1/notifications", {"to": ["a"], "title": "", "text": "", "extras": {"k": "v" * 2000}},
        400, "invalid", field="extras"),
    "ttl too long": Refusal("/v1/notifications",
                            {"to": ["a"], "title": "", "text": "", "ttl": 2419201}, 400,
                            "invalid", field="ttl"),
    "unknown field": Refusal("/v1/notifications",
                             {"to": ["a"], "title": "", "text": "", "priority": 1}, 400,
                             "invalid", field="priority"),
    "bad idempotency key": Refusal("/v1/notifications", {"to": ["a"], "title": "", "text": ""},
                                   400, "invalid",
                                   headers={**AUTH, "Idempotency-Key": "has space"},
                                   field="Idempotency-Key"),
    "body too large": Refusal("/v1/notifications",
                              {"to": ["a"], "title": "", "text": BIG}, 413, "body_too_large"),
    "not json content": Refusal("/v1/notifications", None, 415, "unsupported_media_type",
                                headers={**AUTH, "Content-Type": "text/plain"},
                                raw=b'{"to": ["a"], "title": "", "text": ""}'),
    "batch no key": Refusal("/v1/notifications/batch", {"notifications": []}, 401,
                            "unauthorized", headers={}),
    "batch not a list": Refusal("/v1/notifications/batch", {"notifications": {}}, 400,
                                "invalid"),
    "batch empty": Refusal("/v1/notifications/batch", {"notifications": []}, 400, "invalid"),
    "batch too long": Refusal(
        "/v1/notifications/batch",
        {"notifications": [{"to": ["a"], "title": "", "text": ""}] * 4}, 400, "invalid"),
    "batch unknown field": Refusal("/v1/notifications/batch", {"notifications": [], "x": 1}, 400,
                                   "invalid"),
    "lone surrogate field name": Refusal(
        "/v1/notifications", {"to": ["a"], "title": "", "text": "", "\ud800": 1}, 400,
        "invalid", field="\\ud800"),
    "lone surrogate extras key": Refusal(
        "/v1/notifications", {"to": ["a"], "title": "", "text": "", "extras": {"\ud800": "v"}},
        400, "invalid", field="extras.\\ud800"),
    "lone surrogate extras key, value not a string": Refusal(
        "/v1/notifications", {"to": ["a"], "title": "", "text": "", "extras": {"\udfff": 1}},
        400, "invalid", field="extras.\\udfff"),
    "control characters in a field name": Refusal(
        "/v1/notifications", {"to": ["a"], "title": "", "text": "", "a\nb\x1b": 1}, 400,
        "invalid", field="a\\nb\\u001b"),
    "extras null": Refusal("/v1/notifications",
                           {"to": ["a"], "title": "", "text": "", "extras": None}, 400,
                           "invalid", field="extras"),
    "bad collapse key": Refusal("/v1/notifications",
                                {"to": ["a"], "title": "", "text": "", "collapseKey": "a b"},
                                400, "invalid", field="collapseKey"),
    "long collapse key": Refusal("/v1/notifications",
                                 {"to": ["a"], "title": "", "text": "", "collapseKey": "k" * 65},
                                 400, "invalid", field="collapseKey"),
    "sendAt without offset": Refusal(
        "/v1/notifications",
        {"to": ["a"], "title": "", "text": "", "sendAt": "2030-01-01T00:00:00"},
        400, "invalid", field="sendAt"),
    "sendAt not a date": Refusal(
        "/v1/notifications",
        {"to": ["a"], "title": "", "text": "", "sendAt": "2030-02-30T00:00:00Z"},
        400, "invalid", field="sendAt"),
    "sendAt beyond the max TTL": Refusal(
        "/v1/notifications",
        {"to": ["a"], "title": "", "text": "", "sendAt": "2999-01-01T00:00:00Z"},
        400, "invalid", field="sendAt"),
    "delay too long": Refusal("/v1/notifications",
                              {"to": ["a"], "title": "", "text": "", "delay": 2419201}, 400,
                              "invalid", field="delay"),
    "delay and sendAt": Refusal(
        "/v1/notifications",
        {"to": ["a"], "title": "", "text": "", "delay": 5, "sendAt": "2030-01-01T00:00:00Z"},
        400, "invalid", field="delay"),
    "batch lone surrogate field name": Refusal("/v1/notifications/batch",
                                               {"notifications": [], "\ud800": 1}, 400,
                                               "invalid"),
    "batch too large": Refusal("/v1/notifications/batch",
                               {"notifications": [{"to": ["a"], "title": "", "text": BIG}]},
                               413, "body_too_large"),
}  # fmt: skip


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
async def test_every_refusal_writes_nothing(api: Api, case: Refusal) -> None:
    await api.send(to=["a"])  # something already there, so "nothing changed" means something
    before = await api.snapshot()
    headers = dict(case.headers)
    if case.raw is not None:
        headers.setdefault("Content-Type", "application/json")
        answer = await api.client.request("POST", case.path, data=case.raw, headers=headers)
    else:
        answer = await api.client.post(case.path, case.body, headers=headers)
    assert answer.status == case.status
    assert answer.json["error"] == case.code
    if case.field is not None:
        assert answer.json["field"] == case.field
    if case.status == 401:
        assert answer.header("WWW-Authenticate") == 'Bearer realm="pigeonpush"'
    assert await api.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_wrong_methods_and_paths(api: Api) -> None:
    for method, path, status in [
        ("GET", "/v1/notifications", 405),
        ("GET", "/v1/notifications/batch", 405),
        ("POST", "/v1/notifications/01HZX3JQ6Q4V8Y2N7K5M9T1B3C", 405),
        ("GET", "/v2/notifications", 404),
        ("GET", "/v1/notifications/01HZX3JQ6Q4V8Y2N7K5M9T1B3C/extra", 404),
        ("POST", "/metrics", 405),
        ("DELETE", "/metrics", 405),
    ]:
        answer = await api.client.request(method, path, headers=AUTH)
        assert answer.status == status, (method, path)
        assert answer.json["error"] in ("not_found", "method_not_allowed"), (method, path)


# -- kicking a device -----------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def push_server() -> AsyncIterator[tuple[ServerDouble, str]]:
    """A push server stand-in answering Kick over AMP on a loopback port."""
    from twisted.internet import reactor

    double = ServerDouble()
    address = await double.listen(reactor)
    try:
        yield double, address
    finally:
        await double.stop()


async def connected(api: Api, client_id: str, server: str) -> None:
    """The store as reglog and a push server leave it for a connected device."""
    await api.store.issue_token(client_id, "token-" + client_id, 60)
    assert await api.store.bind_session(client_id, "token-" + client_id, server, 60)


async def kick(api: Api, client_id: str, headers: dict[str, str] | None = None) -> Answer:
    return await api.client.request(
        "DELETE", f"/v1/devices/{client_id}/session", headers=AUTH if headers is None else headers
    )


@pytest_twisted.ensureDeferred
async def test_a_kick_revokes_the_token_and_disconnects_the_device(
    api: Api, push_server: tuple[ServerDouble, str]
) -> None:
    double, address = push_server
    double.online.add("dev:1")
    await connected(api, "dev:1", address)

    answer = await kick(api, "dev:1")

    assert answer.status == 200
    assert answer.json == {"clientId": "dev:1", "disconnected": True}
    assert double.kicks == [("dev:1", KickReason.POLICY)]
    assert await api.store.token("dev:1") is None
    assert not await api.store.bind_session("dev:1", "token-dev:1", address, 60)


@pytest_twisted.ensureDeferred
async def test_a_kick_without_a_session_answers_disconnected_false(
    api: Api, push_server: tuple[ServerDouble, str]
) -> None:
    double, address = push_server
    # A token issued but never bound: revoked, and no server to ask.
    await api.store.issue_token("fresh", "token-fresh", 60)
    answer = await kick(api, "fresh")
    assert answer.json == {"clientId": "fresh", "disconnected": False}
    assert await api.store.token("fresh") is None
    assert double.kicks == []
    # A route left by a server that no longer holds the device.
    await connected(api, "gone", address)
    answer = await kick(api, "gone")
    assert answer.json == {"clientId": "gone", "disconnected": False}
    assert double.kicks == [("gone", KickReason.POLICY)]
    # Nothing at all, and a repeated kick: still 200.
    assert (await kick(api, "never-seen")).json["disconnected"] is False
    assert (await kick(api, "gone")).status == 200


@pytest_twisted.ensureDeferred
async def test_a_kick_whose_server_is_down_is_503_with_the_token_revoked(api: Api) -> None:
    await connected(api, "stranded", f"127.0.0.1:{free_port()}")
    answer = await kick(api, "stranded")
    assert answer.status == 503
    assert answer.json["error"] == "server_unavailable"
    assert answer.header("Retry-After") == "1"
    assert await api.store.token("stranded") is None
    metrics = (await api.client.get("/metrics")).json
    assert 'pigeonpush_notification_rejected_total{reason="server_unavailable"}' in metrics


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("client_id", ["with%20space", "caf%C3%A9", "x" * 129, "a%2Fb"])
async def test_a_kick_of_a_malformed_client_id_is_400_and_writes_nothing(
    api: Api, client_id: str
) -> None:
    before = await api.snapshot()
    answer = await kick(api, client_id)
    assert answer.status == 400
    assert (answer.json["error"], answer.json["field"]) == ("invalid", "clientId")
    assert await api.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_the_api_refuses_the_client_ids_reglog_refuses(api: Api) -> None:
    before = await api.snapshot()
    for client_id in BAD_CLIENT_IDS:
        answer = await api.client.post(
            "/v1/notifications", {"to": ["a", client_id], "title": "", "text": ""}, headers=AUTH
        )
        assert answer.status == 400, client_id
        assert answer.json == {
            "error": "invalid",
            "message": f"each clientId must be {CLIENT_ID.text}",
            "field": "to[1]",
        }
        if client_id:  # (an empty path segment is another path)
            answer = await kick(api, quote(client_id, safe=""))
            assert answer.status == 400, client_id
            assert answer.json == {
                "error": "invalid",
                "message": f"clientId must be {CLIENT_ID.text}",
                "field": "clientId",
            }
    assert await api.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_a_kick_needs_a_key_and_the_delete_method(api: Api) -> None:
    await api.store.issue_token("kept", "token-kept", 60)
    assert (await kick(api, "kept", headers={})).status == 401
    assert (await kick(api, "kept", headers={"Authorization": "Bearer nope"})).status == 401
    assert (await api.get("/v1/devices/kept/session")).status == 405
    assert (await api.get("/v1/devices/kept")).status == 404
    assert await api.store.token("kept") == "token-kept"


# -- operations ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_health_and_metrics(api: Api) -> None:
    await api.send(to=["a"])
    health = await api.client.get("/health")
    assert health.json == {"status": "ok", "queueLag": 1}
    metrics = await api.client.get("/metrics")
    assert "pigeonpush_notification_accepted_total" in metrics.json


@pytest_twisted.ensureDeferred
async def test_a_store_outage_is_503_and_says_to_retry() -> None:
    from twisted.internet import reactor

    store = open_store(f"redis://127.0.0.1:{free_port()}/0", reactor)
    pool = AmpPool(reactor)
    port, url = start_api(store, reactor, pool=pool)
    client = CheckedClient(reactor, url, DOCUMENT)
    try:
        body = {"to": ["a"], "title": "", "text": ""}
        answer = await client.post("/v1/notifications", body, headers=AUTH)
        assert answer.status == 503
        assert answer.json["error"] == "store_unavailable"
        assert answer.header("Retry-After") == "1"
        batch = await client.post(
            "/v1/notifications/batch", {"notifications": [body]}, headers=AUTH
        )
        assert batch.status == 503
        receipt = await client.get("/v1/notifications/01HZX3JQ6Q4V8Y2N7K5M9T1B3C", headers=AUTH)
        assert receipt.status == 503
        assert (await client.get("/health")).status == 503
        kicked = await client.request("DELETE", "/v1/devices/a/session", headers=AUTH)
        assert (kicked.status, kicked.json["error"]) == (503, "store_unavailable")
    finally:
        await client.close()
        await port.stopListening()
        await pool.close()
        await store.close()
