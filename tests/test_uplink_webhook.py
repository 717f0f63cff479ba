"""--uplink-webhook: signed POSTs to a real HTTP receiver on a loopback port,
retries with backoff, the dead-letter list, senders sharing one position; on
the memory store and on Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock

from pigeonpush.notification.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    UplinkWebhook,
    WebhookSettings,
    sign,
    treq_poster,
    verify,
)
from pigeonpush.store import Store, Uplink, open_store
from pigeonpush.store.memory import MemoryStore
from support.servers import free_port
from support.waiting import wait_for
from support.webhook_receiver import WebhookReceiver

SECRET = b"webhook-secret-0123456789"
FAST = {"backoff": 0.05, "max_backoff": 0.1, "timeout": 2.0, "lease": 30.0, "block": 0.5}


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    from twisted.internet import reactor

    url = request.getfixturevalue("redis_url") if request.param == "redis" else "memory:"
    opened = open_store(url, reactor)
    try:
        yield opened
    finally:
        pytest_twisted.blockon(opened.close())


class Senders:
    """Webhook services on the real reactor, stopped (and their pools closed) at the end."""

    def __init__(self) -> None:
        self.running: list[tuple[UplinkWebhook, Any]] = []

    def start(self, store: Store, url: str, **settings: Any) -> UplinkWebhook:
        from twisted.internet import reactor

        config = WebhookSettings(url, SECRET, **{**FAST, **settings})
        post, close = treq_poster(reactor, config.timeout)
        sender = UplinkWebhook(store, reactor, config, post)
        sender.startService()
        self.running.append((sender, close))
        return sender

    async def stop(self) -> None:
        for sender, close in self.running:
            await sender.stopService()
            await close()


@pytest.fixture
def senders() -> Iterator[Senders]:
    running = Senders()
    try:
        yield running
    finally:
        pytest_twisted.blockon(ensureDeferred(running.stop()))


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    from twisted.internet import reactor

    hook = WebhookReceiver(reactor)
    try:
        yield hook
    finally:
        pytest_twisted.blockon(hook.stop())


async def add(store: Store, uplink_id: str, **data: str) -> str:
    from twisted.internet import reactor

    uplink = Uplink("dev-1", uplink_id, data, received_at=reactor.seconds())
    return (await store.add_uplink(uplink, dedup_window=60, max_len=1000)).entry_id


@pytest_twisted.ensureDeferred
async def test_an_uplink_is_posted_signed_after_retries(
    store: Store, senders: Senders, receiver: WebhookReceiver
) -> None:
    from twisted.internet import reactor

    receiver.statuses.extend([500, 503])
    entry = await add(store, "u-1", temp="21.5")
    sender = senders.start(store, receiver.url)
    await wait_for(lambda: sender.sent == 1, timeout=10, what="the uplink was sent")
    assert len(receiver.received) == 3
    bodies = {hook.body for hook in receiver.received}
    assert len(bodies) == 1  # the same body every time
    last = receiver.received[-1]
    assert verify(
        SECRET,
        last.body,
        last.header(TIMESTAMP_HEADER),
        last.header(SIGNATURE_HEADER),
        reactor.seconds(),
    )
    assert not verify(
        b"another-secret-0123456",
        last.body,
        last.header(TIMESTAMP_HEADER),
        last.header(SIGNATURE_HEADER),
        reactor.seconds(),
    )
    assert last.header("Content-Type") == "application/json"
    (uplink,) = json.loads(last.body)["uplinks"]
    assert uplink["id"] == entry
    assert (uplink["clientId"], uplink["uplinkId"], uplink["data"]) == (
        "dev-1",
        "u-1",
        {"temp": "21.5"},
    )
    # Settled: nothing left for another sender to take over.
    assert await store.reclaim_uplinks("other", 0, 10) == []
    assert await store.dead_uplinks(10) == []


@pytest_twisted.ensureDeferred
async def test_an_uplink_failing_every_attempt_is_dead_lettered(
    store: Store, senders: Senders, receiver: WebhookReceiver
) -> None:
    receiver.default = 500
    await add(store, "u-1")
    sender = senders.start(store, receiver.url, attempts=3)
    await wait_for(lambda: sender.dead == 1, timeout=10, what="the uplink was dead-lettered")
    assert len(receiver.received) == 3
    (dead,) = await store.dead_uplinks(10)
    assert (dead.uplink.uplink_id, dead.attempts, dead.error) == ("u-1", 3, "HTTP 500")
    # The sender goes on with the next uplink.
    receiver.default = 200
    await add(store, "u-2")
    await wait_for(lambda: sender.sent == 1, timeout=10, what="the next uplink was sent")


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_is_not_there_is_a_failure(store: Store, senders: Senders) -> None:
    await add(store, "u-1")
    url = f"http://127.0.0.1:{free_port()}/hook"
    sender = senders.start(store, url, attempts=2)
    await wait_for(lambda: sender.dead == 1, timeout=10, what="dead-lettered")
    (dead,) = await store.dead_uplinks(10)
    assert "ConnectionRefused" in dead.error


@pytest_twisted.ensureDeferred
async def test_two_senders_post_each_uplink_once(
    store: Store, senders: Senders, receiver: WebhookReceiver
) -> None:
    one = senders.start(store, receiver.url)
    two = senders.start(store, receiver.url)
    for n in range(20):
        await add(store, f"u-{n}")
    await wait_for(lambda: one.sent + two.sent == 20, timeout=10, what="all sent")
    ids = [json.loads(hook.body)["uplinks"][0]["uplinkId"] for hook in receiver.received]
    assert sorted(ids) == sorted(f"u-{n}" for n in range(20))


@pytest_twisted.ensureDeferred
async def test_a_crashed_senders_uplinks_are_taken_over_after_the_lease(
    store: Store, senders: Senders, receiver: WebhookReceiver
) -> None:
    await add(store, "u-1")
    # A sender took it and died before settling it.
    (taken,) = await store.claim_uplinks("crashed", 10, 0)
    sender = senders.start(store, receiver.url, attempts=2, timeout=0.5, lease=1.5)
    await wait_for(lambda: sender.sent == 1, timeout=10, what="taken over and sent")
    (hook,) = receiver.received
    assert json.loads(hook.body)["uplinks"][0]["id"] == taken.entry_id


def test_signatures() -> None:
    body = b'{"uplinks":[]}'
    signature = sign(SECRET, "1700000000", body)
    assert signature.startswith("v1=") and len(signature) == 3 + 64
    assert verify(SECRET, body, "1700000000", signature, 1_700_000_100)
    assert not verify(SECRET, body + b" ", "1700000000", signature, 1_700_000_100)
    assert not verify(SECRET, body, "1700000001", signature, 1_700_000_100)
    assert not verify(SECRET, body, "1700000000", signature, 1_700_000_301)  # too old
    assert not verify(SECRET, body, None, signature, 1_700_000_000)
    assert not verify(SECRET, body, "-5", signature, 1_700_000_000)


def test_backoff_is_capped_and_the_lease_outlasts_the_retries() -> None:
    settings = WebhookSettings("http://h/", SECRET, attempts=8, backoff=1, max_backoff=20)
    assert settings.delays() == [1, 2, 4, 8, 16, 20, 20]
    assert settings.worst_case() == 8 * 10 + 71
    with pytest.raises(ValueError, match="lease"):
        WebhookSettings("http://h/", SECRET, lease=100).check()
    with pytest.raises(ValueError, match="at least 16 bytes"):
        WebhookSettings("http://h/", b"short").check()
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookSettings("ftp://h/", SECRET).check()
    with pytest.raises(ValueError, match="1 to 100"):
        WebhookSettings("http://h/", SECRET, attempts=0).check()


def test_a_stopped_sender_stops_waiting() -> None:
    clock = Clock()
    store = open_store("memory:", clock)
    sender = UplinkWebhook(
        store, clock, WebhookSettings("http://h/", SECRET), lambda *args: pytest.fail("no POST")
    )
    sender.startService()
    stopped = sender.stopService()
    assert stopped.called
    clock.advance(60)
    assert sender.sent == 0


class BrokenOnce(MemoryStore):
    """The memory store whose first reclaim_uplinks fails with a bug."""

    broken = True

    def reclaim_uplinks(self, consumer: str, min_idle: float, count: int) -> Deferred[Any]:
        if self.broken:
            self.broken = False
            return fail(RuntimeError("a bug"))
        return super().reclaim_uplinks(consumer, min_idle, count)


def test_a_bug_is_logged_and_the_sender_goes_on(logged_failures: Any) -> None:
    clock = Clock()
    store = BrokenOnce(clock)
    posted: list[bytes] = []

    def post(url: str, body: bytes, headers: Any) -> Deferred[int]:
        posted.append(body)
        return succeed(200)

    sender = UplinkWebhook(store, clock, WebhookSettings("http://h/", SECRET), post)
    sender.startService()
    assert len(logged_failures.flush(RuntimeError)) == 1
    uplink = Uplink("dev-1", "u-1", {}, received_at=clock.seconds())
    store.add_uplink(uplink, dedup_window=60, max_len=10)
    clock.advance(1.0)
    assert sender.sent == 1 and len(posted) == 1
    sender.stopService()
