"""Direct streams (``?direct_streams=1``): the store side against real Redis,
the reader under a Clock, and the whole path with real daemons."""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from test_e2e_cluster import BACKOFF, DOCUMENT, HEARTBEAT, Api, Device, Fleet
from test_store_redis import _notification, _reactor
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.task import Clock

from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.sdk import PushClient
from pigeonpush.server.direct import RETRY_MIN, TRIM_ENTRIES, TRIM_INTERVAL, DirectReader
from pigeonpush.store import keys
from pigeonpush.store.address import parse_redis_url, parse_store_address
from pigeonpush.store.direct import direct
from pigeonpush.store.interface import StoreError
from pigeonpush.store.model import Message, Notification
from pigeonpush.store.redis import RedisStore
from support.cluster import Cluster
from support.logcheck import FailureCollector
from support.openapi import CheckedClient
from support.rawredis import Raw
from support.waiting import wait_for

SERVER = "127.0.0.1:4001"


@pytest.fixture
def direct_store(redis_url: str) -> Iterator[RedisStore]:
    store = RedisStore(parse_redis_url(redis_url + "?direct_streams=1"), _reactor())
    try:
        yield store
    finally:
        pytest_twisted.blockon(store.close())


def test_the_url_option_is_off_by_default_and_refused_on_a_cluster() -> None:
    assert not parse_redis_url("redis://h:1/0").direct_streams
    assert parse_redis_url("redis://h:1/0?direct_streams=1").direct_streams
    with pytest.raises(ValueError, match="direct_streams must be 0 or 1, not 'yes'"):
        parse_redis_url("redis://h:1/0?direct_streams=yes")
    with pytest.raises(ValueError, match="direct_streams is for one Redis"):
        parse_store_address("redis+cluster://h:1,h:2?direct_streams=1")


@pytest_twisted.ensureDeferred
async def test_a_unicast_to_an_online_device_goes_to_its_servers_stream(
    direct_store: RedisStore, raw: Raw
) -> None:
    await direct_store.issue_token("online", "t", 60)
    assert await direct_store.bind_session("online", "t", SERVER, 60)
    to_online = _notification(["online"])
    to_offline = _notification(["offline"])
    to_both = _notification(["online", "offline"])
    await direct_store.accept([to_online, to_offline, to_both])
    # WAIT_ACK is written as always: it stays the truth.
    assert set(await direct_store.pending_ids("online")) == {
        to_online.message.message_id,
        to_both.message.message_id,
    }
    after, read = await direct_store.read_direct(SERVER, "0-0", 100, 0.1)
    assert [n.message.message_id for n in read] == [to_online.message.message_id]
    assert read[0].recipients == ("online",)
    queued = await raw("XRANGE", keys.queue(0), "-", "+")
    ids = [dict(zip(f[::2], f[1::2], strict=True))["messageId"] for _, f in queued]
    assert ids == [to_offline.message.message_id, to_both.message.message_id]
    # The next read trims what was read (all but the last entry) and waits.
    later = _notification(["online"])
    await direct_store.accept([later])
    after, read = await direct_store.read_direct(SERVER, after, 100, 0.1)
    assert [n.message.message_id for n in read] == [later.message.message_id]
    await direct_store.read_direct(SERVER, after, 100, 0.05)
    assert await raw("XLEN", direct(SERVER)) == 1
    await direct_store.clear_direct(SERVER)
    assert await raw("EXISTS", direct(SERVER)) == 0


@pytest_twisted.ensureDeferred
async def test_without_the_option_every_notification_is_queued(redis_url: str, raw: Raw) -> None:
    store = RedisStore(parse_redis_url(redis_url), _reactor())
    try:
        assert not store.direct_streams
        await store.issue_token("online", "t", 60)
        assert await store.bind_session("online", "t", SERVER, 60)
        await store.accept([_notification(["online"])])
        assert await raw("XLEN", keys.queue(0)) == 1
        assert await raw("EXISTS", direct(SERVER)) == 0
    finally:
        await store.close()


# -- the whole path: real daemons on one Redis with ?direct_streams=1 ---------------------

FLEET = 30


async def _unicasts(api: Api, clients: Sequence[str], name: str) -> dict[str, str]:
    """One notification per client, in one batch request: clientId -> messageId."""
    body = {
        "notifications": [
            {"to": [client], "title": "direct", "text": f"{name} {client}"} for client in clients
        ]
    }
    answer = await api.http.post("/v1/notifications/batch", body, headers=api.auth)
    assert answer.status == 200, answer.json
    return {
        client: str(result["messageId"])
        for client, result in zip(clients, answer.json["results"], strict=True)
    }


def _missing(fleet: Fleet, sent: dict[str, str]) -> list[str]:
    received = {d.client.client_id: set(d.received) for d in fleet.devices}
    return [client for client, message_id in sent.items() if message_id not in received[client]]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest_twisted.ensureDeferred
async def test_direct_path_moved_device_and_killed_server_lose_nothing(
    tmp_path: Path, redis_url: str, zookeeper_hosts: str, raw: Raw
) -> None:
    from twisted.internet import reactor

    cluster = Cluster(reactor, tmp_path, redis_url + "?direct_streams=1", zookeeper_hosts)
    fleet: Fleet | None = None
    try:
        with cluster.logs_on_failure():
            delivery = cluster.delivery()
            notification = cluster.notification()
            reglog = cluster.reglog(heartbeat=HEARTBEAT)
            a, b = (
                cluster.server(name, heartbeat=HEARTBEAT, capacity=FLEET + 10)
                for name in ("push-a", "push-b")
            )
            api = Api(CheckedClient(reactor, notification.url("http"), DOCUMENT), cluster.api_key)
            await cluster.wait_healthy(notification)
            for server in (a, b):
                await cluster.wait_server_ready(server, delivery)
            await cluster.wait_reglog_servers(reglog, 2)
            fleet = Fleet([])
            for n in range(FLEET):
                device = Device()
                device.client = PushClient(
                    reactor,
                    reglog.url("http"),
                    device.on_message,
                    client_id=f"direct-{n:02d}",
                    backoff=BACKOFF,
                )
                device.client.on_event(device.events.append)
                fleet.devices.append(device)
                device.client.start()
            online = gatherResults([d.client.when_authenticated() for d in fleet.devices])
            online.addTimeout(60, reactor)
            await online
            on_a = [d.client.client_id for d in fleet.on(a)]
            on_b = [d.client.client_id for d in fleet.on(b)]
            assert on_a and on_b, (on_a, on_b)

            # 1. Delivery stopped: a unicast to an online device arrives all the
            # same, through its server's own stream.
            await delivery.stop()
            first = await _unicasts(api, fleet.client_ids, "first")
            await wait_for(
                lambda: not _missing(fleet, first), timeout=30, what="the direct unicasts"
            )
            assert await raw("XLEN", keys.queue(0)) == 0
            delivery = cluster.restart(delivery, "delivery-2")
            await cluster.wait_healthy(delivery, "metrics")

            # 2. A device that moved: its entry went to the server its ROUTE
            # named (a stale one, A), which has no session for it; the device
            # gets the message from a pull on B.
            moved = on_b[0]
            await raw("SET", keys.route(moved), a.address("rpc"), "EX", "60")
            stale = await _unicasts(api, [moved], "stale")
            await wait_for(lambda: not _missing(fleet, stale), timeout=30, what="the pull on B")

            # 3. A killed with entries in its stream: frozen first, so that the
            # entries wait there; its devices reconnect to B and pull them.
            a.signal(signal.SIGSTOP)
            stranded = await _unicasts(api, on_a, "stranded")
            assert await raw("XLEN", direct(a.address("rpc"))) >= len(on_a)
            a.kill()
            await a.wait_exit(10)
            await wait_for(
                lambda: not _missing(fleet, stranded), timeout=60, what="the stranded unicasts"
            )
            for device in fleet.devices:
                assert not device.duplicates(), (device.client.client_id, device.received)
    finally:
        if fleet is not None:
            await fleet.stop()
        await cluster.close()


# -- the reader, under a Clock ---------------------------------------------------------


@attrs.define
class FakeSource:
    """Answers ``read_direct`` from a script of results (a list of entries or a
    StoreError); then a read that never ends (a blocking XREAD)."""

    answers: list[list[Notification] | StoreError]
    cleared: list[str] = attrs.Factory(list)
    reads: list[str] = attrs.Factory(list)
    trims: list[bool] = attrs.Factory(list)
    waiting: Deferred[tuple[str, list[Notification]]] | None = None

    def clear_direct(self, address: str) -> Deferred[None]:
        self.cleared.append(address)
        return succeed(None)

    def read_direct(
        self, address: str, after: str, count: int, block: float, *, trim: bool = True
    ) -> Deferred[tuple[str, list[Notification]]]:
        self.reads.append(after)
        self.trims.append(trim)
        if not self.answers:
            self.waiting = Deferred()
            return self.waiting
        answer = self.answers.pop(0)
        if isinstance(answer, StoreError):
            return fail(answer)
        return succeed((f"{len(self.reads)}-0", answer))


def _unicast(client: str, expires_at: float) -> Notification:
    return Notification(
        Message(
            message_id=f"m-{client}",
            title="t",
            text="x",
            extras={},
            created_at=0.0,
            expires_at=expires_at,
        ),
        (client,),
    )


def test_the_reader_pushes_in_order_drops_expired_and_backs_off_on_errors() -> None:
    clock = Clock()
    clock.advance(100)
    pushed: list[list[str]] = []

    def push(items: Sequence[PushItem]) -> Deferred[list[PushStatus]]:
        pushed.append([item.client_id for item in items])
        return succeed([PushStatus.WRITTEN] * len(items))

    source = FakeSource(
        [
            StoreError("down"),
            StoreError("still down"),
            [_unicast("a", 200), _unicast("gone", 50), _unicast("b", 200)],
            [_unicast("c", 200)],
        ]
    )
    reader = DirectReader(source, push, clock, "127.0.0.1:1")
    reader.start()
    assert source.cleared == ["127.0.0.1:1"]
    assert source.reads == ["0-0"]
    clock.advance(RETRY_MIN - 0.01)
    assert source.reads == ["0-0"]
    clock.advance(0.01)  # the first retry, then twice the delay
    assert source.reads == ["0-0", "0-0"]
    clock.advance(2 * RETRY_MIN)
    assert pushed == [["a", "b"], ["c"]]  # the expired message is left alone
    assert source.reads == ["0-0", "0-0", "0-0", "3-0", "4-0"]
    assert reader.read == 3
    stopped = reader.stop()
    assert not stopped.called  # the read under way ends first
    assert source.waiting is not None
    source.waiting.callback(("4-0", []))
    assert stopped.called


def test_a_failed_push_is_logged_and_the_reader_goes_on(
    logged_failures: FailureCollector,
) -> None:
    clock = Clock()
    calls: list[int] = []

    def push(items: Sequence[PushItem]) -> Deferred[list[PushStatus]]:
        calls.append(len(items))
        return fail(RuntimeError("a bug")) if len(calls) == 1 else succeed([])

    source = FakeSource([[_unicast("a", 10)], [_unicast("b", 10)]])
    reader = DirectReader(source, push, clock, "127.0.0.1:1")
    reader.start()
    assert calls == [1, 1]
    assert [f.value.args for f in logged_failures.flush(RuntimeError)] == [("a bug",)]
    reader.stop()
    assert source.waiting is not None
    source.waiting.callback(("3-0", []))


def test_a_push_refused_by_the_store_is_a_warning_and_the_reader_goes_on() -> None:
    """Redis restarting under a push is expected (the pull delivers what the
    push did not write): a warning with the reason, no traceback."""
    from twisted.logger import globalLogPublisher

    clock = Clock()
    calls: list[int] = []
    events: list[dict[str, Any]] = []

    def push(items: Sequence[PushItem]) -> Deferred[list[PushStatus]]:
        calls.append(len(items))
        return fail(StoreError("cannot connect")) if len(calls) == 1 else succeed([])

    source = FakeSource([[_unicast("a", 10)], [_unicast("b", 10)]])
    reader = DirectReader(source, push, clock, "127.0.0.1:1")
    globalLogPublisher.addObserver(events.append)
    try:
        reader.start()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert calls == [1, 1]
    (warning,) = [e for e in events if e.get("log_format", "").startswith("Pushing")]
    assert warning["log_level"].name == "warn" and warning["why"] == "cannot connect"
    assert "log_failure" not in warning
    reader.stop()
    assert source.waiting is not None
    source.waiting.callback(("3-0", []))


def test_the_reader_trims_every_thousand_entries_or_every_second() -> None:
    clock = Clock()

    def push(items: Sequence[PushItem]) -> Deferred[list[PushStatus]]:
        return succeed([PushStatus.WRITTEN] * len(items))

    many = [_unicast(f"c{n}", 10) for n in range(TRIM_ENTRIES // 2)]
    source = FakeSource([[], many, many, [_unicast("one", 10)]])
    reader = DirectReader(source, push, clock, "127.0.0.1:1")
    reader.start()
    # Nothing read yet: no trim; a thousand entries read: trimmed with the
    # next read; one more entry: not yet...
    assert source.trims == [False, False, False, True, False]
    clock.advance(TRIM_INTERVAL)
    assert source.waiting is not None
    source.waiting.callback(("9-0", []))
    # ...until a second has passed.
    assert source.trims == [False, False, False, True, False, True]
    reader.stop()
    source.waiting.callback(("9-0", []))
