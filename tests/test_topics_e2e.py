"""Topics and broadcast end to end on ``twistd -n pigeon-standalone`` as a
real process: SDK clients in the test's reactor, subscriptions and sends over
the notification API. Every message reaches its audience once at the
callback, connected devices get it live (well before a heartbeat), and a
device that connects later gets the broadcast still within its TTL."""

from __future__ import annotations

from typing import Any

import pytest
import test_standalone_e2e as standalone_e2e
from test_standalone_e2e import (
    Device,
    Spawner,
    check_no_duplicates,
    online,
    stop_all,
    wait_received,
)

# Starts daemons or many processes: tox runs it in fewer environments.
pytestmark = pytest.mark.slow

#: The standalone of test_standalone_e2e, started and stopped per test.
spawner = standalone_e2e.spawner


async def post(standalone: Any, key: str, path: str, body: Any) -> Any:
    answer = await standalone.api.post(path, body, headers={"Authorization": f"Bearer {key}"})
    assert answer.status in (200, 202), answer.json
    return answer.json


@pytest.mark.timeout(90)
async def test_topic_and_broadcast_reach_their_audiences_once(spawner: Spawner) -> None:
    from twisted.internet import reactor

    # A long heartbeat: what arrives within the test came by the live path.
    standalone = await spawner.start("--heartbeat=120")
    key = standalone.generated_key()
    assert key is not None
    fleet = [Device.create(reactor, standalone.reglog_url, f"device-{n:02d}") for n in range(12)]
    readers, others = fleet[:6], fleet[6:]
    latecomer = Device.create(reactor, standalone.reglog_url, "latecomer")
    try:
        subscribed = await post(
            standalone,
            key,
            "/v1/topics/news/subscribers",
            {"add": [d.client.client_id for d in readers]},
        )
        assert subscribed["added"] == len(readers)
        await online(reactor, fleet)
        news = await post(
            standalone, key, "/v1/notifications", {"topic": "news", "title": "N", "text": "n"}
        )
        assert news["subscribers"] == len(readers)
        everyone = await post(
            standalone, key, "/v1/notifications", {"broadcast": True, "title": "B", "text": "b"}
        )
        await wait_received(readers, [news["messageId"], everyone["messageId"]])
        await wait_received(others, [everyone["messageId"]])
        assert all(news["messageId"] not in d.ids for d in others)
        # The callback's message says which audience it came through.
        topics = {(m.message_id, m.topic) for d in fleet for m in d.received}
        assert topics == {(news["messageId"], "news"), (everyone["messageId"], "*")}

        # Later, within the TTL: the broadcast, not the topic it never joined.
        await online(reactor, [latecomer])
        await wait_received([latecomer], [everyone["messageId"]])
        assert news["messageId"] not in latecomer.ids

        # Reconnecting brings nothing again: the ACKs moved the positions.
        reader = readers[0]
        await stop_all(reactor, [reader])
        again = Device.create(reactor, standalone.reglog_url, reader.client.client_id)
        await online(reactor, [again])
        later = await post(
            standalone, key, "/v1/notifications", {"topic": "news", "title": "N2", "text": ""}
        )
        await wait_received([again], [later["messageId"]])
        assert again.ids == [later["messageId"]]
        check_no_duplicates([*fleet, latecomer, again])
        standalone.check_clean_log()
        await stop_all(reactor, [again])
    finally:
        await stop_all(reactor, [*fleet[1:], latecomer])


@pytest.mark.timeout(60)
async def test_a_device_subscribes_itself_to_an_allowed_topic(spawner: Spawner) -> None:
    from twisted.internet import reactor

    from pigeonpush.sdk import SubscriptionFailed

    standalone = await spawner.start("--heartbeat=120", "--device-topics=public.*")
    key = standalone.generated_key()
    assert key is not None
    device = Device.create(reactor, standalone.reglog_url, "self-service")
    try:
        await online(reactor, [device])
        await device.client.subscribe("public.news")
        try:
            await device.client.subscribe("private.admin")
        except SubscriptionFailed as e:
            assert e.code == "NOT_ALLOWED"
        else:
            raise AssertionError("a topic outside --device-topics was allowed")
        sent = await post(
            standalone, key, "/v1/notifications", {"topic": "public.news", "title": "", "text": ""}
        )
        assert sent["subscribers"] == 1
        await wait_received([device], [sent["messageId"]])
        assert device.received[-1].topic == "public.news"
        listed = await standalone.api.get(
            "/v1/devices/self-service/topics", headers={"Authorization": f"Bearer {key}"}
        )
        assert listed.json["topics"] == ["public.news"]
        await device.client.unsubscribe("public.news")
        standalone.check_clean_log()
    finally:
        await stop_all(reactor, [device])
