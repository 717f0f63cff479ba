"""Direct streams (``?direct_streams=1``): the store side against real Redis,
the reader under a Clock, and the whole path with real daemons."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_twisted
from test_store_redis import Raw, _notification, _reactor

from pigeonpush.store import keys
from pigeonpush.store.address import parse_redis_url, parse_store_address
from pigeonpush.store.direct import direct
from pigeonpush.store.redis import RedisStore

SERVER = "127.0.0.1:4001"


@pytest_twisted.async_yield_fixture
async def raw(redis_url: str) -> AsyncIterator[Raw]:
    import txredisapi

    address = parse_redis_url(redis_url)
    connection = await txredisapi.Connection(
        address.host, address.port, dbid=address.db, reconnect=False, convertNumbers=False
    )
    try:
        yield Raw(connection)
    finally:
        await connection.disconnect()


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
