"""Topics and broadcast in the notification API, over real loopback HTTP on
both store backends; every answer is checked against
docs/openapi/notification.json and every 4xx to write nothing."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
import test_notification_api as base
from test_notification_api import AUTH, Api

from pigeonpush.ids import is_message_id
from pigeonpush.topics import BROADCAST

#: The notification API on both backends (the fixture of test_notification_api).
api = base.api


async def subscribers(api: Api, topic: str, **body: Any) -> Any:
    return await api.post(f"/v1/topics/{topic}/subscribers", body)


async def topics_of(api: Api, client_id: str) -> list[str]:
    answer = await api.get(f"/v1/devices/{client_id}/topics")
    assert answer.status == 200
    assert answer.json["clientId"] == client_id
    return list(answer.json["topics"])


@pytest_twisted.ensureDeferred
async def test_subscribe_list_unsubscribe_and_delete(api: Api) -> None:
    answer = await subscribers(api, "news", add=["alice", "bob", "alice"])
    assert answer.status == 200
    assert answer.json == {"topic": "news", "added": 2, "removed": 0, "refused": []}
    await subscribers(api, "news.sport", add=["alice"])
    assert await topics_of(api, "alice") == ["news", "news.sport"]
    assert await topics_of(api, "nobody") == []
    answer = await subscribers(api, "news", add=["carol"], remove=["bob", "dave"])
    assert answer.json == {"topic": "news", "added": 1, "removed": 1, "refused": []}
    assert await topics_of(api, "bob") == []
    answer = await api.client.request("DELETE", "/v1/topics/news", headers=AUTH)
    assert answer.status == 200
    assert answer.json == {"topic": "news", "unsubscribed": 2}
    assert await topics_of(api, "alice") == ["news.sport"]


@pytest_twisted.ensureDeferred
async def test_a_topic_send_is_logged_once_and_answers_counts(api: Api) -> None:
    await subscribers(api, "news", add=["alice", "bob"])
    answer = await api.send(topic="news", ttl=600)
    assert answer.status == 202
    message_id = answer.json["messageId"]
    assert is_message_id(message_id)
    assert answer.json == {"messageId": message_id, "topic": "news", "subscribers": 2}
    # Nothing per subscriber: no WAIT_ACK, one entry in the topic's log.
    assert await api.store.pending_ids("alice") == []
    (caught,) = await api.store.catch_up("alice", 10)
    assert caught.topic == "news"
    assert [e.message.message_id for e in caught.entries] == [message_id]
    assert caught.entries[0].message.title == "Hello"


@pytest_twisted.ensureDeferred
async def test_a_broadcast_reaches_a_device_never_seen(api: Api) -> None:
    answer = await api.send(broadcast=True)
    assert answer.status == 202
    assert answer.json == {"messageId": answer.json["messageId"], "broadcast": True}
    (caught,) = await api.store.catch_up("newcomer", 10)
    assert caught.topic == BROADCAST
    assert [e.message.message_id for e in caught.entries] == [answer.json["messageId"]]


@pytest_twisted.ensureDeferred
async def test_an_idempotent_topic_retry_answers_the_first_message(api: Api) -> None:
    await api.store.subscribe("t", ["x"], 10)
    headers = {"Idempotency-Key": "k-1"}
    first = await api.post("/v1/notifications", {"topic": "t", "title": "", "text": ""}, headers)
    again = await api.post("/v1/notifications", {"topic": "t", "title": "", "text": ""}, headers)
    assert again.status == 202
    assert again.json["messageId"] == first.json["messageId"]
    assert again.header("Idempotent-Replayed") == "true"
    (caught,) = await api.store.catch_up("x", 10)
    assert [e.message.message_id for e in caught.entries] == [first.json["messageId"]]


@pytest_twisted.ensureDeferred
async def test_a_batch_mixes_audiences(api: Api) -> None:
    items = [
        {"to": ["alice"], "title": "a", "text": ""},
        {"topic": "news", "title": "b", "text": ""},
        {"broadcast": True, "title": "c", "text": ""},
    ]
    answer = await api.post("/v1/notifications/batch", {"notifications": items})
    assert answer.status == 200
    first, second, third = answer.json["results"]
    assert first["recipients"] == 1
    assert second["topic"] == "news" and second["subscribers"] == 0
    assert third["broadcast"] is True


REFUSALS = [
    ("POST", "/v1/notifications", {"to": ["a"], "topic": "t", "title": "", "text": ""}, "topic"),
    (
        "POST",
        "/v1/notifications",
        {"topic": "t", "broadcast": True, "title": "", "text": ""},
        "broadcast",
    ),
    ("POST", "/v1/notifications", {"topic": "a b", "title": "", "text": ""}, "topic"),
    ("POST", "/v1/notifications", {"broadcast": 1, "title": "", "text": ""}, "broadcast"),
    ("POST", "/v1/notifications", {"topic": "t", "title": "", "text": "", "delay": 5}, "delay"),
    (
        "POST",
        "/v1/notifications",
        {"broadcast": True, "title": "", "text": "", "collapseKey": "k"},
        "collapseKey",
    ),
    (
        "POST",
        "/v1/notifications",
        {"topic": "t", "title": "", "text": "", "sendAt": "2030-01-31T12:00:00Z"},
        "sendAt",
    ),
    ("POST", "/v1/topics/a%20b/subscribers", {"add": ["alice"]}, "topic"),
    ("POST", "/v1/topics/news/subscribers", {}, "add"),
    ("POST", "/v1/topics/news/subscribers", {"add": []}, "add"),
    ("POST", "/v1/topics/news/subscribers", {"add": ["a b"]}, "add[0]"),
    ("POST", "/v1/topics/news/subscribers", {"add": "alice"}, "add"),
    ("POST", "/v1/topics/news/subscribers", {"remove": [1]}, "remove[0]"),
    ("POST", "/v1/topics/news/subscribers", {"add": ["a"], "remove": ["a"]}, "remove"),
    ("POST", "/v1/topics/news/subscribers", {"add": ["a"], "others": []}, "others"),
    ("POST", "/v1/topics/news/subscribers", {"add": [f"c{i}" for i in range(1001)]}, "add"),
    ("DELETE", "/v1/topics/%7Bx%7D", None, "topic"),
    ("GET", "/v1/devices/a%20b/topics", None, "clientId"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), REFUSALS)
@pytest_twisted.ensureDeferred
async def test_bad_requests_are_400_and_write_nothing(
    api: Api, method: str, path: str, body: Any, field: str
) -> None:
    before = await api.snapshot()
    answer = await api.client.request(method, path, json_body=body, headers=AUTH)
    assert answer.status == 400, answer.json
    assert answer.json["error"] == "invalid"
    assert answer.json["field"] == field
    assert await api.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_topic_endpoints_need_a_key_and_their_methods(api: Api) -> None:
    for method, path in [
        ("POST", "/v1/topics/news/subscribers"),
        ("DELETE", "/v1/topics/news"),
        ("GET", "/v1/devices/alice/topics"),
    ]:
        answer = await api.client.request(method, path, json_body={"add": ["a"]})
        assert answer.status == 401, (method, path)
    for method, path, status in [
        ("GET", "/v1/topics/news/subscribers", 405),
        ("GET", "/v1/topics/news", 405),
        ("POST", "/v1/devices/alice/topics", 405),
        ("GET", "/v1/topics", 404),
        ("GET", "/v1/topics/news/other", 404),
    ]:
        answer = await api.client.request(method, path, headers=AUTH)
        assert answer.status == status, (method, path)


@pytest_twisted.ensureDeferred
async def test_a_topic_receipt_gives_counts(api: Api) -> None:
    await subscribers(api, "news", add=["alice", "bob", "carol"])
    sent = await api.send(topic="news", ttl=600)
    message_id = sent.json["messageId"]
    await api.store.count_topic_acks([(message_id, 2)])
    answer = await api.get(f"/v1/notifications/{message_id}")
    assert answer.status == 200
    body = answer.json
    assert (body["topic"], body["targeted"], body["acked"], body["pending"]) == ("news", 3, 2, 1)
    everyone = await api.send(broadcast=True)
    answer = await api.get(f"/v1/notifications/{everyone.json['messageId']}")
    assert answer.json["broadcast"] is True
    assert (answer.json["targeted"], answer.json["acked"], answer.json["pending"]) == (
        None,
        0,
        None,
    )


@pytest_twisted.ensureDeferred
async def test_a_topic_message_cannot_be_cancelled_and_keeps_its_counts(api: Api) -> None:
    """Topic and broadcast messages are never scheduled: DELETE answers 404,
    as for an unknown messageId, and changes nothing."""
    sent = await api.post("/v1/notifications", {"broadcast": True, "title": "", "text": ""})
    message_id = sent.json["messageId"]
    answer = await api.client.request("DELETE", f"/v1/notifications/{message_id}", headers=AUTH)
    assert answer.status == 404, answer.json
    assert answer.json["error"] == "not_found"
    receipt = await api.get(f"/v1/notifications/{message_id}")
    assert receipt.status == 200 and receipt.json["broadcast"] is True
