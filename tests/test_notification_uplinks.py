"""GET /v1/uplinks (cursor, long poll) and /v1/uplinks/dead over real loopback
HTTP, on both store backends, answers checked against the OpenAPI document."""

from __future__ import annotations

import pytest
import pytest_twisted
from test_notification_api import Api, api  # noqa: F401  (the fixture)
from twisted.internet.defer import ensureDeferred
from twisted.web.client import ResponseNeverReceived

from pigeonpush.notification.api import iso8601
from pigeonpush.store import DeadUplink, Uplink
from support.waiting import wait_for

WINDOW = 3600.0


async def add(target: Api, uplink_id: str, client: str = "dev-1", **data: str) -> str:
    from twisted.internet import reactor

    uplink = Uplink(client, uplink_id, data, received_at=reactor.seconds())
    stored = await target.store.add_uplink(uplink, dedup_window=WINDOW, max_len=1000)
    return stored.entry_id


@pytest_twisted.ensureDeferred
async def test_uplinks_are_read_after_a_cursor(api: Api) -> None:  # noqa: F811
    empty = await api.get("/v1/uplinks")
    assert empty.status == 200
    assert empty.json == {"uplinks": [], "next": "0"}
    first = await add(api, "u-1", temp="21.5", note="café")
    second = await add(api, "u-2", client="dev-2")
    answer = await api.get("/v1/uplinks?after=0")
    assert answer.status == 200
    (one, two) = answer.json["uplinks"]
    assert one == {
        "id": first,
        "clientId": "dev-1",
        "uplinkId": "u-1",
        "data": {"temp": "21.5", "note": "café"},
        "receivedAt": one["receivedAt"],
    }
    (stored,) = await api.store.uplinks("0", 1)
    assert one["receivedAt"] == iso8601(stored.received_at)
    assert (two["id"], two["clientId"]) == (second, "dev-2")
    assert answer.json["next"] == second
    # Advancing the cursor is the acknowledgement: nothing new after it.
    assert (await api.get(f"/v1/uplinks?after={second}")).json == {"uplinks": [], "next": second}
    # Reading consumed nothing: another reader starts over.
    assert len((await api.get("/v1/uplinks")).json["uplinks"]) == 2
    page = await api.get("/v1/uplinks?limit=1")
    assert [u["id"] for u in page.json["uplinks"]] == [first]
    assert page.json["next"] == first


@pytest_twisted.ensureDeferred
async def test_a_long_poll_answers_when_an_uplink_arrives(api: Api) -> None:  # noqa: F811
    cursor = await add(api, "u-0")
    waiting = ensureDeferred(api.get(f"/v1/uplinks?after={cursor}&wait=20"))
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.2, lambda: None)
    assert not waiting.called
    entry = await add(api, "u-1")
    answer = await waiting.addTimeout(10, reactor)
    assert [u["id"] for u in answer.json["uplinks"]] == [entry]
    assert answer.json["next"] == entry


@pytest_twisted.ensureDeferred
async def test_a_long_poll_ends_empty_after_wait(api: Api) -> None:  # noqa: F811
    answer = await api.get("/v1/uplinks?after=0&wait=0.3")
    assert answer.status == 200
    assert answer.json == {"uplinks": [], "next": "0"}


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_ends_its_wait(api: Api) -> None:  # noqa: F811
    waiting = ensureDeferred(api.get("/v1/uplinks?wait=30"))
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.2, lambda: None)
    waiting.cancel()
    with pytest.raises(ResponseNeverReceived):
        await waiting
    if api.backend == "memory":
        # The store's reader went with the request.
        readers = api.store._uplinks._readers  # type: ignore[attr-defined]

        async def no_reader() -> bool:
            return not readers

        await wait_for(no_reader, timeout=5, what="the wait is cancelled")
    # The API still answers, and the uplink is not lost to the abandoned wait.
    entry = await add(api, "u-1")

    async def readable() -> bool:
        answer = await api.get("/v1/uplinks")
        return [u["id"] for u in answer.json["uplinks"]] == [entry]

    await wait_for(readable, timeout=5, what="the uplink is readable")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("after=x", "after: a cursor must be a stream entry id"),
        ("after=1-2-3", "after: a cursor must be a stream entry id"),
        ("after=0&after=1", "after is given more than once"),
        ("after=1-74583767560210649390", "after: a cursor's parts must be below 2**64"),
        ("wait=31", "wait must be a number from 0 to 30"),
        ("wait=-1", "wait must be a number from 0 to 30"),
        ("wait=soon", "wait must be a number from 0 to 30"),
        ("limit=0", "limit must be a whole number from 1 to 1000"),
        ("limit=1001", "limit must be a whole number from 1 to 1000"),
        ("limit=2.5", "limit must be a whole number from 1 to 1000"),
        ("limit=", "limit must be a whole number from 1 to 1000"),
        ("limit=%2B5", "limit must be a whole number from 1 to 1000"),
        ("limit=5_0", "limit must be a whole number from 1 to 1000"),
        ("limit=%205", "limit must be a whole number from 1 to 1000"),
        ("wait=", "wait must be a number from 0 to 30"),
        ("wait=nan", "wait must be a number from 0 to 30"),
        ("wait=1e1", "wait must be a number from 0 to 30"),
        ("wiat=20", "unknown query parameter 'wiat'"),
        ("after=0&\x1b=1", "unknown query parameter"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_queries_are_400(api: Api, query: str, message: str) -> None:  # noqa: F811
    answer = await api.get(f"/v1/uplinks?{query}")
    assert answer.status == 400
    assert answer.json["error"] == "invalid"
    assert answer.json["message"].startswith(message)


@pytest_twisted.ensureDeferred
async def test_dead_uplinks_take_only_a_limit(api: Api) -> None:  # noqa: F811
    answer = await api.get("/v1/uplinks/dead?after=0")
    assert answer.status == 400
    assert answer.json["message"] == "unknown query parameter 'after'"
    answer = await api.get("/v1/uplinks/dead?limit=")
    assert answer.status == 400
    assert answer.json["message"] == "limit must be a whole number from 1 to 1000"
    assert (await api.get("/v1/uplinks/dead?limit=3")).status == 200


@pytest_twisted.ensureDeferred
async def test_uplinks_need_an_api_key(api: Api) -> None:  # noqa: F811
    for path in ("/v1/uplinks", "/v1/uplinks/dead"):
        answer = await api.get(path, headers={})
        assert answer.status == 401
        assert answer.json["error"] == "unauthorized"


@pytest_twisted.ensureDeferred
async def test_dead_uplinks_are_listed_newest_first(api: Api) -> None:  # noqa: F811
    assert (await api.get("/v1/uplinks/dead")).json == {"dead": []}
    await add(api, "u-1", k="v")
    (uplink,) = await api.store.uplinks("0", 1)
    await api.store.add_dead_uplink(DeadUplink(uplink, 3, "HTTP 500", 1_733_486_400.0), 100)
    await api.store.add_dead_uplink(DeadUplink(uplink, 4, "timeout", 1_733_486_500.0), 100)
    answer = await api.get("/v1/uplinks/dead")
    assert answer.status == 200
    (newest, oldest) = answer.json["dead"]
    assert (newest["attempts"], newest["error"]) == (4, "timeout")
    assert newest["failedAt"] == "2024-12-06T12:01:40.000Z"
    assert newest["uplink"]["uplinkId"] == "u-1" and newest["uplink"]["data"] == {"k": "v"}
    assert oldest["error"] == "HTTP 500"
    assert len((await api.get("/v1/uplinks/dead?limit=1")).json["dead"]) == 1
