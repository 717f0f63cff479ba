"""What only the Redis backend has: the exact key layout, round trips,
reconnection, timeouts, credentials, TLS."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from pigeonpush.ids import MessageIdGenerator
from pigeonpush.store import (
    CancelResult,
    DeviceRecord,
    Message,
    Notification,
    StoreError,
    open_store,
)
from pigeonpush.store.address import parse_redis_url
from pigeonpush.store.redis import ACCEPT_KEYS_PER_CALL, RedisStore
from support.certs import CertificateAuthority
from support.rawredis import Raw
from support.servers import RedisServer, free_port, tls_redis_server
from support.waiting import wait_for


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _notification(
    recipients: list[str], ttl: float = 60.0, key: str | None = None, **message: Any
) -> Notification:
    reactor = _reactor()
    now = reactor.seconds()
    return Notification(
        Message(
            message_id=MessageIdGenerator(reactor)(),
            title=message.get("title", "Hello"),
            text=message.get("text", "A message"),
            extras=message.get("extras", {}),
            created_at=now,
            expires_at=now + ttl,
        ),
        tuple(recipients),
        key,
    )


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisStore]:
    store = RedisStore(
        parse_redis_url(redis_url), _reactor(), idempotency_ttl=120, receipt_retention=3600
    )
    try:
        yield store
    finally:
        pytest_twisted.blockon(store.close())


# -- the key layout ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_keys_types_fields_and_expiries(redis_store: RedisStore, raw: Raw) -> None:
    store = redis_store
    await store.issue_token("alice", "token-1", 300)
    await store.bind_session("alice", "token-1", "10.0.0.7:7101", 600)
    note = _notification(["alice", "bob"], ttl=900, key="app:req-1", extras={"k": "v"})
    message_id = note.message.message_id
    await store.accept([note])
    await store.register_device(DeviceRecord("bob", "scrypt$salt$hash", 1700000000.25))
    await store.consume("worker-1", 10, 0)

    expected = {
        "PIGEON:AUTH:{alice}": "string",
        "PIGEON:ROUTE:{alice}": "string",
        "PIGEON:WAIT_ACK:{alice}": "set",
        "PIGEON:WAIT_ACK:{bob}": "set",
        f"PIGEON:MSG_BODY:{{{message_id}}}": "hash",
        f"PIGEON:RECEIPT:{{{message_id}}}": "hash",
        "PIGEON:QUEUE:{0}": "stream",
        "PIGEON:DEVICE:{bob}": "hash",
        "PIGEON:IDEMPOTENCY:{app:req-1}": "string",
    }
    assert sorted(await raw("KEYS", "*")) == sorted(expected)
    for key, kind in expected.items():
        assert await raw("TYPE", key) == kind, key

    async def ttl(key: str) -> float:
        return int(await raw("PTTL", key)) / 1000

    assert await raw("GET", "PIGEON:AUTH:{alice}") == "bound:token-1"  # used by a session
    assert 590 < await ttl("PIGEON:AUTH:{alice}") <= 600  # the session TTL
    assert await raw("GET", "PIGEON:ROUTE:{alice}") == "10.0.0.7:7101"
    assert 590 < await ttl("PIGEON:ROUTE:{alice}") <= 600
    assert await raw("SMEMBERS", "PIGEON:WAIT_ACK:{bob}") == [message_id]
    assert 890 < await ttl("PIGEON:WAIT_ACK:{bob}") <= 900
    body = await raw.hash(f"PIGEON:MSG_BODY:{{{message_id}}}")
    assert body == {
        "title": "Hello",
        "text": "A message",
        "extras": '{"k":"v"}',
        "createdAt": repr(note.message.created_at),
        "expiresAt": repr(note.message.expires_at),
    }
    assert 890 < await ttl(f"PIGEON:MSG_BODY:{{{message_id}}}") <= 900
    receipt_key = f"PIGEON:RECEIPT:{{{message_id}}}"
    assert await raw.hash(receipt_key) == {
        "#recipients": '["alice","bob"]',
        "#createdAt": repr(note.message.created_at),
        "#expiresAt": repr(note.message.expires_at),
    }
    assert 4490 < await ttl(receipt_key) <= 4500  # the TTL plus the receipt retention
    await store.ack([("alice", message_id)])
    await store.drop_pending([("bob", message_id, "too_large")])
    fields = await raw.hash(receipt_key)
    assert (fields["alice"], fields["bob"]) == ("acked", "too_large")
    assert await raw.hash("PIGEON:DEVICE:{bob}") == {
        "secretHash": "scrypt$salt$hash",
        "createdAt": "1700000000.25",
    }
    assert await raw("PTTL", "PIGEON:DEVICE:{bob}") == -1  # a registration does not go stale
    assert json.loads(await raw("GET", "PIGEON:IDEMPOTENCY:{app:req-1}")) == {
        "messageId": message_id,
        "recipients": 2,
    }
    assert 110 < await ttl("PIGEON:IDEMPOTENCY:{app:req-1}") <= 120
    ((_, fields),) = await raw("XRANGE", "PIGEON:QUEUE:{0}", "-", "+")
    assert dict(zip(fields[::2], fields[1::2], strict=True)) == {
        "messageId": message_id,
        **body,
        "recipients": '["alice","bob"]',
        "idempotencyKey": "app:req-1",
    }
    (group,) = await raw("XINFO", "GROUPS", "PIGEON:QUEUE:{0}")
    assert dict(zip(group[::2], group[1::2], strict=True))["name"] == "delivery"


@pytest_twisted.ensureDeferred
async def test_acknowledge_deletes_entries_from_the_stream(
    redis_store: RedisStore, raw: Raw
) -> None:
    await redis_store.accept([_notification(["alice"]) for _ in range(3)])
    entries = await redis_store.consume("worker-1", 10, 0)
    await redis_store.acknowledge([e.entry_id for e in entries[:2]])
    assert await raw("XLEN", "PIGEON:QUEUE:{0}") == 1
    pending = await raw("XPENDING", "PIGEON:QUEUE:{0}", "delivery")
    assert pending[0] == 1


@pytest_twisted.ensureDeferred
async def test_database_number_of_the_url(redis_server: RedisServer, raw: Raw) -> None:
    store = open_store(f"redis://{redis_server.host}:{redis_server.port}/3", _reactor())
    try:
        await store.issue_token("alice", "token-1", 60)
    finally:
        await store.close()
    assert await raw("KEYS", "*") == []
    await raw("SELECT", "3")
    assert await raw("GET", "PIGEON:AUTH:{alice}") == "token-1"
    await raw("FLUSHDB")
    await raw("SELECT", "0")


# -- atomicity and bad data ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_accept_writes_nothing_when_a_key_holds_the_wrong_type(
    redis_store: RedisStore, raw: Raw
) -> None:
    await raw("SET", "PIGEON:WAIT_ACK:{bob}", "not a set")
    good = _notification(["carol"])
    bad = _notification(["alice", "bob"])
    with pytest.raises(StoreError, match=r"PIGEON:WAIT_ACK:\{bob\} holds a string, not a set"):
        await redis_store.accept([good, bad])
    # One script call checks every key before its first write: nothing went in.
    assert await redis_store.pending_ids("carol") == []
    assert await raw("EXISTS", f"PIGEON:MSG_BODY:{{{good.message.message_id}}}") == 0
    assert await raw("EXISTS", f"PIGEON:MSG_BODY:{{{bad.message.message_id}}}") == 0
    assert await raw("EXISTS", "PIGEON:WAIT_ACK:{alice}") == 0
    assert await raw("XLEN", "PIGEON:QUEUE:{0}") == 0


@pytest_twisted.ensureDeferred
async def test_collapse_and_schedule_keys_are_checked_before_the_first_write(
    redis_store: RedisStore, raw: Raw
) -> None:
    await raw("SET", "PIGEON:COLLAPSE:{bob}", "not a hash")
    good = _notification(["carol"])
    bad = attrs.evolve(_notification(["alice", "bob"]), collapse_key="k")
    with pytest.raises(StoreError, match=r"PIGEON:COLLAPSE:\{bob\} holds a string, not a hash"):
        await redis_store.accept([good, bad])
    assert await raw("EXISTS", f"PIGEON:MSG_BODY:{{{good.message.message_id}}}") == 0
    assert await raw("EXISTS", "PIGEON:WAIT_ACK:{alice}") == 0
    await raw("SET", "PIGEON:{SCHEDULE}", "not a sorted set")
    later = attrs.evolve(_notification(["carol"]), send_at=_reactor().seconds() + 30)
    with pytest.raises(StoreError, match=r"PIGEON:\{SCHEDULE\} holds a string, not a zset"):
        await redis_store.accept([later])
    assert await raw("EXISTS", f"PIGEON:RECEIPT:{{{later.message.message_id}}}") == 0


@pytest_twisted.ensureDeferred
async def test_a_scheduled_message_that_expired_while_waiting_is_only_cleaned_up(
    redis_store: RedisStore, raw: Raw
) -> None:
    now = _reactor().seconds()
    note = attrs.evolve(_notification(["alice"], ttl=30), send_at=now + 0.2)
    await redis_store.accept([note])
    message_id = note.message.message_id
    await raw("DEL", f"PIGEON:MSG_BODY:{{{message_id}}}")  # as if its TTL ran out
    await raw("ZADD", "PIGEON:{SCHEDULE}", "0", message_id)  # and it is due
    assert await redis_store.release_due(10, 30.0) == 0
    assert await raw("EXISTS", "PIGEON:{SCHEDULE}") == 0
    assert await raw("HEXISTS", f"PIGEON:RECEIPT:{{{message_id}}}", "#scheduled") == 0
    assert await redis_store.pending_ids("alice") == []
    assert await redis_store.cancel(message_id) is CancelResult.SENT


@pytest_twisted.ensureDeferred
async def test_a_corrupt_key_spoils_only_its_own_call_of_a_large_batch(
    redis_store: RedisStore, raw: Raw
) -> None:
    await raw("SET", "PIGEON:WAIT_ACK:{bob}", "not a set")
    crowd = [f"device-{i}" for i in range(ACCEPT_KEYS_PER_CALL)]
    first = _notification(crowd)  # more keys than one call takes: a call of its own
    bad = _notification(["alice", "bob"])
    with pytest.raises(StoreError, match=r"PIGEON:WAIT_ACK:\{bob\} holds a string, not a set"):
        await redis_store.accept([first, bad])
    # Each notification is atomic; the calls before the corrupt one went in.
    assert await redis_store.pending_ids(crowd[-1]) == [first.message.message_id]
    assert await raw("EXISTS", f"PIGEON:MSG_BODY:{{{bad.message.message_id}}}") == 0
    assert await raw("EXISTS", "PIGEON:WAIT_ACK:{alice}") == 0
    assert await raw("XLEN", "PIGEON:QUEUE:{0}") == 1


@pytest_twisted.ensureDeferred
async def test_a_batch_of_small_notifications_is_one_script_call(
    redis_store: RedisStore, raw: Raw
) -> None:
    before = await _script_calls(raw)
    await redis_store.accept([_notification([f"client-{i}"]) for i in range(300)])
    assert await _script_calls(raw) == before + 1


async def _script_calls(raw: Raw) -> int:
    info = await raw("INFO", "commandstats")
    for line in info.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


@pytest_twisted.ensureDeferred
async def test_scripts_survive_a_flushed_script_cache(redis_store: RedisStore, raw: Raw) -> None:
    await redis_store.accept([_notification(["alice"])])
    await raw("SCRIPT", "FLUSH")
    note = _notification(["alice"])
    (accepted,) = await redis_store.accept([note])
    assert accepted.message_id == note.message.message_id
    await redis_store.issue_token("alice", "t", 60)
    assert await redis_store.bind_session("alice", "t", "server-a", 60)


@pytest_twisted.ensureDeferred
async def test_an_entry_that_does_not_decode_is_dropped_and_logged(
    redis_store: RedisStore, raw: Raw
) -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await raw("XADD", "PIGEON:QUEUE:{0}", "*", "junk", "1")
        note = _notification(["alice"])
        await redis_store.accept([note])
        entries = await redis_store.consume("worker-1", 10, 0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e.notification.message for e in entries] == [note.message]
    assert await raw("XLEN", "PIGEON:QUEUE:{0}") == 1
    assert any(
        "does not decode" in event.get("log_format", "") and event["log_level"].name == "error"
        for event in events
    )


@pytest_twisted.ensureDeferred
async def test_queue_works_after_the_stream_was_deleted(redis_store: RedisStore, raw: Raw) -> None:
    await redis_store.accept([_notification(["alice"])])
    assert len(await redis_store.consume("worker-1", 10, 0)) == 1
    await raw("DEL", "PIGEON:QUEUE:{0}")
    note = _notification(["alice"])
    await redis_store.accept([note])
    (entry,) = await redis_store.consume("worker-1", 10, 1)
    assert entry.notification.message == note.message
    assert await redis_store.reclaim("worker-2", 60, 10) == []


@pytest_twisted.ensureDeferred
async def test_many_concurrent_calls_get_their_own_replies(redis_store: RedisStore) -> None:
    from twisted.internet.defer import gatherResults

    await gatherResults(
        [redis_store.issue_token(f"client-{i}", f"token-{i}", 60) for i in range(300)]
    )
    tokens = await gatherResults([redis_store.token(f"client-{i}") for i in range(300)])
    assert tokens == [f"token-{i}" for i in range(300)]


# -- round trips, timeouts, lost connections --------------------------------------------


class _Pipe(Protocol):
    """One side of a proxied connection."""

    def __init__(self, proxy: DelayingProxy, name: str) -> None:
        self.proxy = proxy
        self.name = name
        self.peer: _Pipe | None = None
        self.held: deque[tuple[float, bytes]] = deque()

    def connectionMade(self) -> None:
        self.proxy.pipes.append(self)
        self.flush()  # what the other side sent before this side was connected

    def dataReceived(self, data: bytes) -> None:
        if self.name == "client":
            self.proxy.client_writes += 1
        assert self.peer is not None
        self.peer.forward(data)

    def forward(self, data: bytes) -> None:
        """Write ``data`` after the proxy's delay, in order; held while stalled."""
        self.held.append((self.proxy.reactor.seconds() + self.proxy.delay, data))
        self.proxy.reactor.callLater(self.proxy.delay, self.flush)

    def flush(self) -> None:
        now = self.proxy.reactor.seconds()
        if self.transport is None:
            return
        while self.held and self.held[0][0] <= now and not self.proxy.stalled:
            self.transport.write(self.held.popleft()[1])

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()
        if self in self.proxy.pipes:
            self.proxy.pipes.remove(self)


class DelayingProxy(Factory):
    """A TCP proxy in front of Redis that delays every chunk by ``delay``
    seconds each way (a distant Redis), can stall, and can cut connections."""

    def __init__(self, reactor: Any, target_port: int, delay: float) -> None:
        self.reactor = reactor
        self.target_port = target_port
        self.delay = delay
        self.stalled = False
        self.pipes: list[_Pipe] = []
        self.client_writes = 0

    def buildProtocol(self, addr: Any) -> _Pipe:
        client = _Pipe(self, "client")
        server = _Pipe(self, "server")
        client.peer, server.peer = server, client
        self.reactor.connectTCP(
            "127.0.0.1", self.target_port, ClientFactory.forProtocol(lambda: server)
        )
        return client

    def cut(self) -> None:
        for pipe in list(self.pipes):
            pipe.transport.abortConnection()

    def resume(self) -> None:
        self.stalled = False
        for pipe in self.pipes:
            pipe.flush()


@pytest_twisted.async_yield_fixture
async def proxy(
    redis_server: RedisServer, redis_url: str
) -> AsyncIterator[tuple[DelayingProxy, int]]:
    reactor = _reactor()
    factory = DelayingProxy(reactor, redis_server.port, 0.0)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        yield factory, port.getHost().port
    finally:
        factory.cut()
        await port.stopListening()
        await deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_batch_costs_one_round_trip(proxy: tuple[DelayingProxy, int]) -> None:
    factory, port = proxy
    reactor = _reactor()
    store = open_store(f"redis://127.0.0.1:{port}/0", reactor)
    try:
        await store.ping()  # connect and load the scripts first
        factory.delay = 0.1  # 0.2 s per round trip
        clients = [f"client-{i}" for i in range(1000)]
        notes = [_notification([c]) for c in clients[:300]]
        big = _notification(clients)

        async def timed(call: Deferred[Any]) -> float:
            start = reactor.seconds()
            await call
            return float(reactor.seconds() - start)

        # N round trips would take N x 0.2 s (a minute for 300); one takes 0.2 s.
        assert await timed(store.accept(notes)) < 2.0
        assert await timed(store.accept([big])) < 2.0
        assert await timed(store.bodies([n.message.message_id for n in notes])) < 2.0
        assert await timed(store.ack([(c, big.message.message_id) for c in clients])) < 2.0
        assert await timed(store.refresh_sessions(clients, 60)) < 2.0
        assert await timed(store.routes(clients)) < 2.0
        assert await timed(store.receipt(big.message.message_id)) < 2.5  # two round trips
        entries = await store.consume("worker-1", 1000, 0)
        assert len(entries) == 301
        assert await timed(store.acknowledge([e.entry_id for e in entries])) < 2.0
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_no_answer_in_time_fails_the_call_and_the_next_call_reconnects(
    proxy: tuple[DelayingProxy, int],
) -> None:
    factory, port = proxy
    store = RedisStore(
        parse_redis_url(f"redis://127.0.0.1:{port}/0"), _reactor(), reply_timeout=0.5
    )
    try:
        await store.issue_token("alice", "token-1", 60)
        factory.stalled = True
        first = store.token("alice")
        second = store.route("alice")
        with pytest.raises(StoreError, match=r"did not answer within 0\.5s"):
            await first.addTimeout(10, _reactor())
        # Everything else in flight on that connection fails too, rather than hang.
        with pytest.raises(StoreError):
            await second.addTimeout(10, _reactor())
        factory.resume()
        assert await store.token("alice") == "token-1"
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_lost_connection_fails_calls_in_flight(proxy: tuple[DelayingProxy, int]) -> None:
    factory, port = proxy
    store = open_store(f"redis://127.0.0.1:{port}/0", _reactor())
    try:
        await store.issue_token("alice", "token-1", 60)
        factory.stalled = True
        in_flight = store.token("alice")
        # handshake, SET, GET
        await wait_for(lambda: factory.client_writes >= 3, timeout=5, what="request sent")
        factory.cut()
        with pytest.raises(StoreError, match="connection to Redis was lost"):
            await in_flight.addTimeout(10, _reactor())
        factory.stalled = False
        assert await store.token("alice") == "token-1"
    finally:
        await store.close()


async def blocked_clients(raw: Raw) -> int:
    """How many clients Redis holds in a blocking command (XREADGROUP BLOCK)."""
    info = await raw("INFO", "clients")
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return int(fields["blocked_clients"])


@pytest_twisted.ensureDeferred
async def test_blocking_read_outlives_the_reply_timeout(redis_url: str, raw: Raw) -> None:
    store = RedisStore(parse_redis_url(redis_url), _reactor(), reply_timeout=0.3)
    try:
        reading = store.consume("worker-1", 10, 1.0)
        # Redis holds the read (for 1 s, past the 0.3 s reply timeout) ...
        await wait_for(lambda: blocked_clients(raw), timeout=10, what="a blocked read")
        # ... and its empty answer is taken, not cut by the reply timeout.
        assert await reading.addTimeout(10, _reactor()) == []
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_redis_restart_fails_the_call_in_flight_then_works_again(
    redis_server: RedisServer, redis_url: str
) -> None:
    import txredisapi

    reactor = _reactor()
    store = open_store(redis_url, reactor)
    try:
        await store.issue_token("alice", "token-1", 60)
        waiting = store.consume("worker-1", 10, 30)
        observer = await txredisapi.Connection(
            redis_server.host, redis_server.port, reconnect=False, convertNumbers=False
        )
        try:
            raw = Raw(observer)
            await wait_for(lambda: blocked_clients(raw), timeout=10, what="the read at Redis")
        finally:
            await observer.disconnect()  # before Redis goes away under it
        redis_server.restart()
        with pytest.raises(StoreError, match="connection to Redis was lost"):
            await waiting.addTimeout(10, reactor)

        async def answers() -> bool:
            # A call made before the store saw its idle connection close
            # fails too; the next one reconnects.
            try:
                await store.ping()
            except StoreError:
                return False
            return True

        await wait_for(answers, timeout=10, what="the store answers again")
        # Without persistence the data is gone, but the store works again.
        assert await store.token("alice") is None
        await store.issue_token("alice", "token-2", 60)
        assert await store.token("alice") == "token-2"
        note = _notification(["alice"])
        await store.accept([note])
        (entry,) = await store.consume("worker-1", 10, 5)
        assert entry.notification.message == note.message
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_unreachable_redis_fails_calls_with_store_error() -> None:
    reactor = _reactor()
    port = free_port()
    store = open_store(f"redis://127.0.0.1:{port}/0", reactor)
    try:
        start = reactor.seconds()
        with pytest.raises(
            StoreError, match=f"cannot connect to Redis at redis://127.0.0.1:{port}/0"
        ):
            await store.token("alice")
        with pytest.raises(StoreError, match="cannot connect"):
            await store.accept([_notification(["alice"])])
        assert reactor.seconds() - start < 5
    finally:
        await store.close()


# -- credentials ---------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own that wants a password (and knows a user)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        for command in (
            ("ACL", "SETUSER", "pigeon", "on", ">pigeon-pass", "~PIGEON:*", "+@all"),
            ("CONFIG", "SET", "requirepass", "s3cret pass"),
        ):
            assert server.command(*command).startswith(b"+OK")
        yield server
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_password_in_the_url(private_redis: RedisServer) -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    reactor = _reactor()
    where = f"{private_redis.host}:{private_redis.port}"
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    good = open_store(f"redis://:s3cret%20pass@{where}/0", reactor)
    wrong = open_store(f"redis://:wrong-pass@{where}/0", reactor)
    missing = open_store(f"redis://{where}/0", reactor)
    try:
        await good.issue_token("alice", "token-1", 60)
        assert await good.token("alice") == "token-1"
        with pytest.raises(StoreError, match="refused the credentials") as refused:
            await wrong.token("alice")
        assert "wrong-pass" not in str(refused.value)
        with pytest.raises(StoreError, match="NOAUTH"):
            await missing.token("alice")
    finally:
        for store in (good, wrong, missing):
            await store.close()
        globalLogPublisher.removeObserver(events.append)
    assert events
    assert not any("s3cret" in formatEvent(e) or "wrong-pass" in formatEvent(e) for e in events)


@pytest_twisted.ensureDeferred
async def test_acl_user_and_password_in_the_url(private_redis: RedisServer) -> None:
    where = f"{private_redis.host}:{private_redis.port}"
    store = open_store(f"redis://pigeon:pigeon-pass@{where}/0", _reactor())
    try:
        await store.issue_token("alice", "token-1", 60)
        assert await store.token("alice") == "token-1"
    finally:
        await store.close()


# -- TLS -----------------------------------------------------------------------------------


def _certificates(directory: Path) -> dict[str, Path]:
    """A private CA and a certificate for localhost that it signed."""
    authority = CertificateAuthority.create(directory / "ca")
    server = authority.issue(directory / "server", ["localhost"])
    return {"ca": authority.ca_file, "cert": server.cert_file, "key": server.key_file}


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, Path]]]:
    """A Redis that speaks only TLS, with a certificate from a private CA."""
    paths = _certificates(tmp_path)
    with tls_redis_server(tmp_path, paths["cert"], paths["key"], paths["ca"]) as port:
        yield port, paths


@pytest_twisted.ensureDeferred
async def test_rediss_url_speaks_tls(
    tls_redis: tuple[int, dict[str, Path]], tmp_path: Path
) -> None:
    port, paths = tls_redis
    reactor = _reactor()
    store = open_store(f"rediss://localhost:{port}/0?ssl_ca_certs={paths['ca']}", reactor)
    try:
        await store.issue_token("alice", "token-1", 60)
        assert await store.token("alice") == "token-1"
        note = _notification(["alice"])
        await store.accept([note])
        (entry,) = await store.consume("worker-1", 10, 1)
        assert entry.notification.message == note.message
    finally:
        await store.close()
    # A server whose certificate the client does not trust is refused.
    (tmp_path / "other").mkdir()
    other = _certificates(tmp_path / "other")
    distrusting = open_store(f"rediss://localhost:{port}/0?ssl_ca_certs={other['ca']}", reactor)
    try:
        with pytest.raises(StoreError):
            await distrusting.token("alice")
    finally:
        await distrusting.close()
    # Plain text to a TLS port gets no answer it could take for Redis'.
    plain = RedisStore(parse_redis_url(f"redis://localhost:{port}/0"), reactor, reply_timeout=1)
    try:
        with pytest.raises(StoreError):
            await plain.token("alice")
    finally:
        await plain.close()


@pytest_twisted.ensureDeferred
async def test_queued_entries_keep_every_character(redis_store: RedisStore) -> None:
    # Queued entries come back packed as one JSON value: whatever needs
    # escaping in JSON must survive it, with and without a blocking read.
    awkward = 'quote " backslash \\ slash / tab \t newline \n nul \x00 del \x7f é 漢字 🕊'
    notes = [
        _notification(["alice", 'b"ob'], title=awkward, text=awkward, extras={awkward: awkward}),
        _notification(["carol"], key=f"app:{awkward}", title="", text=""),
    ]
    await redis_store.accept(notes)
    first = await redis_store.consume("worker-1", 1, 0)
    rest = await redis_store.consume("worker-1", 10, 5)
    assert [e.notification for e in first + rest] == notes
    assert [e.deliveries for e in first + rest] == [1, 1]


@pytest_twisted.ensureDeferred
async def test_consume_answers_at_once_when_entries_are_queued(redis_store: RedisStore) -> None:
    reactor = _reactor()
    notes = [_notification([f"client-{i}"]) for i in range(250)]
    await redis_store.accept(notes)
    started = reactor.seconds()
    batches = [await redis_store.consume("worker-1", 100, 30) for _ in range(3)]
    assert reactor.seconds() - started < 5  # never waited out the 30 s block
    assert [len(batch) for batch in batches] == [100, 100, 50]
    assert [e.notification for batch in batches for e in batch] == notes
