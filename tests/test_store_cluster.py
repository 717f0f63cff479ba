"""The Redis Cluster client: the slot function, cluster URLs, and the router
against a real cluster (redirections while a slot migrates, a lost script
cache, a master that crashes). The store contract runs on the cluster too
(tests/test_store_contract.py)."""

from __future__ import annotations

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater

from pigeonpush.store import QueueEntry, StoreError, keys, open_store
from pigeonpush.store.address import ClusterAddress, RedisAddress, parse_cluster_url
from pigeonpush.store.redis import RedisStore
from pigeonpush.store.redis_cluster import (
    ClusterConnection,
    command_key,
    crc16,
    key_slot,
    redirection,
)
from pigeonpush.store.redis_connection import ResponseError
from support.servers import RedisCluster
from support.waiting import wait_for

# -- the slot function ------------------------------------------------------------------


def test_crc16_is_xmodem() -> None:
    assert crc16(b"123456789") == 0x31C3
    assert crc16(b"") == 0


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        # What CLUSTER KEYSLOT answers (see also the test against a live node).
        ("foo", 12182),
        ("bar", 5061),
        ("", 0),
        ("{user1000}.following", key_slot("user1000")),
        ("foo{}{bar}", key_slot("foo{}{bar}")),  # an empty tag: the whole key
        ("foo{{bar}}zap", key_slot("{bar")),  # up to the first } after the first {
        ("foo{bar}{zap}", key_slot("bar")),
    ],
)
def test_key_slot_known_values(key: str, slot: int) -> None:
    assert key_slot(key) == slot


def test_key_slot_agrees_with_cluster_keyslot(redis_cluster: RedisCluster) -> None:
    node = redis_cluster.nodes[0]
    samples = [
        "foo",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "{}",
        "{",
        "}{",
        "é-unicode",
        keys.auth("alice"),
        keys.wait_ack("alice"),
        keys.msg_body("01J0000000000000000000000"),
        keys.idempotency("app:{odd}key"),
        *(keys.queue(shard) for shard in range(8)),
        *(f"k{i}" for i in range(50)),
    ]
    for key in samples:
        reply = node.command("CLUSTER", "KEYSLOT", key)
        assert int(reply[1:].split(b"\r\n")[0]) == key_slot(key), key


def test_what_one_script_touches_shares_a_slot() -> None:
    client_keys = {keys.auth("c"), keys.route("c"), keys.wait_ack("c"), keys.failed("c")}
    assert {key_slot(key) for key in client_keys | {keys.device("c")}} == {key_slot("c")}
    message = "01J0000000000000000000000"
    assert key_slot(keys.msg_body(message)) == key_slot(keys.receipt(message))
    assert len({key_slot(keys.queue(shard)) for shard in range(8)}) == 8
    # The collapse step runs on the client's slot, next to its WAIT_ACK; the
    # uplink stream and its de-duplication keys share one slot.
    assert key_slot(keys.collapse("c")) == key_slot("c")
    assert key_slot(keys.SCHEDULE) == key_slot("SCHEDULE")
    uplink_keys = {keys.UPLINK, keys.UPLINK_DEAD, keys.uplink_seen("c", "u:1")}
    assert {key_slot(key) for key in uplink_keys} == {key_slot("UPLINK")}


def test_command_key_finds_the_routing_key() -> None:
    assert command_key(("GET", "a")) == "a"
    assert command_key(("EVALSHA", "sha", "2", "k1", "k2", "arg")) == "k1"
    assert command_key(("EVALSHA", "sha", "0", "arg")) is None
    assert command_key(("XGROUP", "CREATE", "q", "g", "0")) == "q"
    assert command_key(("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "q", ">")) == "q"
    assert command_key(("XREAD", "COUNT", "5", "STREAMS", "s", "0")) == "s"
    assert command_key(("XREAD", "COUNT", "5", "BLOCK", "10", "STREAMS", "s", "0")) == "s"
    assert command_key(("PING",)) is None


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("MOVED 3999 127.0.0.1:7001", ("MOVED", 3999, "127.0.0.1", 7001)),
        ("ASK 3999 redis-2.internal:7001", ("ASK", 3999, "redis-2.internal", 7001)),
        # IPv6 unbracketed, as Redis writes it
        ("MOVED 1 ::1:7001", ("MOVED", 1, "::1", 7001)),
        # cluster-preferred-endpoint-type unknown-endpoint: the sender's host
        ("MOVED 1 :7002", ("MOVED", 1, "10.0.0.9", 7002)),
    ],
)
def test_redirections_name_the_node(reply: str, expected: tuple[str, int, str, int]) -> None:
    assert redirection(ResponseError(reply), "10.0.0.9") == expected
    assert redirection(ResponseError("ERR no"), "10.0.0.9") is None
    assert redirection(b"MOVED 1 h:1", "10.0.0.9") is None  # a value, not an error


@pytest.mark.parametrize("reply", ["MOVED 1 ?:7001", "MOVED 1 h:0", "ASK 1 h:port"])
def test_a_redirection_to_no_usable_node_is_a_store_error(reply: str) -> None:
    with pytest.raises(StoreError, match="redirected a command to no usable node"):
        redirection(ResponseError(reply), "10.0.0.9")


# -- cluster URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "seeds"),
    [
        ("redis+cluster://h1:7000", (RedisAddress("h1", 7000),)),
        (
            "redis+cluster://h1:7000,h2:7001,[::1]:7002",
            (RedisAddress("h1", 7000), RedisAddress("h2", 7001), RedisAddress("::1", 7002)),
        ),
        (
            "redis+cluster://:s%40cret@h1:7000,h2/0?timeout=0.5",
            (
                RedisAddress("h1", 7000, password="s@cret", timeout=0.5),
                RedisAddress("h2", password="s@cret", timeout=0.5),
            ),
        ),
        (
            "rediss+cluster://user:pw@h1:7000?ssl_ca_certs=/ca.pem&queue_shards=16",
            (
                RedisAddress(
                    "h1", 7000, username="user", password="pw", tls=True,
                    ca_certs="/ca.pem", queue_shards=16,
                ),
            ),
        ),
    ],
)  # fmt: skip
def test_cluster_urls(url: str, seeds: tuple[RedisAddress, ...]) -> None:
    address = parse_cluster_url(url)
    assert address == ClusterAddress(seeds)
    assert address.node("10.0.0.9", 7005) == RedisAddress(
        "10.0.0.9", 7005, 0, seeds[0].username, seeds[0].password, seeds[0].tls,
        seeds[0].ca_certs, seeds[0].timeout, seeds[0].queue_shards,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis+cluster://", "an empty host in the node list"),
        ("redis+cluster://h1:7000,,h2:7001", "an empty host in the node list"),
        ("redis+cluster://h1:7000/1", "a Redis Cluster has database 0 only"),
        ("redis+cluster://h1:port", "Port could not be cast"),
        ("redis+cluster://h1:7000?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs rediss://"),
        ("redis+cluster://h1:7000?queue_shards=0", "queue_shards must be a whole number"),
        ("redis+cluster://h1:7000?queue_shards=x", "queue_shards must be a whole number"),
        ("redis+cluster://h1:7000?db=1", "unknown option 'db'"),
        ("redis+sentinel://h1:7000", "expected memory: or redis://"),
    ],
)
def test_bad_cluster_urls_say_what_is_wrong(url: str, error: str) -> None:
    with pytest.raises(ValueError, match="bad store URL") as raised:
        parse_cluster_url(url)
    assert error in str(raised.value)


def test_a_bad_cluster_url_is_quoted_without_its_password() -> None:
    with pytest.raises(ValueError) as raised:
        parse_cluster_url("redis+cluster://admin:hunter2@h1:7000,h2:x")
    assert "hunter2" not in str(raised.value)
    address = parse_cluster_url("rediss+cluster://admin:hunter2@h1:7000,h2:7001")
    assert "hunter2" not in repr(address) and "hunter2" not in str(address)
    assert str(address) == "rediss+cluster://h1:7000,h2:7001"


def test_open_store_cluster_does_not_connect_yet() -> None:
    from twisted.internet import reactor

    store = open_store("redis+cluster://127.0.0.1:9,127.0.0.1:10", reactor)
    assert isinstance(store, RedisStore)
    assert store.queue_shards == 8
    single = open_store("redis://127.0.0.1:9/0", reactor)
    assert isinstance(single, RedisStore)
    assert single.queue_shards == 1
    assert open_store("redis://127.0.0.1:9/0?queue_shards=4", reactor).queue_shards == 4


# -- the router against a real cluster -----------------------------------------------------


def _ok(reply: bytes) -> None:
    assert reply.startswith(b"+OK"), reply


@pytest_twisted.ensureDeferred
async def test_ask_then_moved_while_a_slot_migrates(
    redis_cluster: RedisCluster, redis_cluster_url: str
) -> None:
    from twisted.internet import reactor

    store = open_store(redis_cluster_url, reactor)
    assert isinstance(store, RedisStore)
    router = store._main
    assert isinstance(router, ClusterConnection)
    try:
        await store.issue_token("alice", "token-1", 60)
        slot = key_slot("alice")
        source = redis_cluster.master_of(keys.auth("alice"))
        target = next(n for n in redis_cluster.master_nodes() if n is not source)
        before = router._slots[slot]
        assert before == ("127.0.0.1", source.port)
        _ok(
            target.command(
                "CLUSTER", "SETSLOT", str(slot), "IMPORTING", redis_cluster.node_id(source)
            )
        )
        _ok(
            source.command(
                "CLUSTER", "SETSLOT", str(slot), "MIGRATING", redis_cluster.node_id(target)
            )
        )
        _ok(source.command(
            "MIGRATE", target.host, str(target.port), "", "0", "5000", "KEYS", keys.auth("alice")
        ))  # fmt: skip
        # The key moved, the slot not yet: the source answers ASK.
        assert source.command("GET", keys.auth("alice")).startswith(b"-ASK")
        assert await store.token("alice") == "token-1"
        assert router._slots[slot] == before  # ASK leaves the map alone
        # A new key of the migrating slot goes to the target too (ASK again).
        assert await store.add_failures([("alice", "message-1")], 60) == [1]
        # A script over AUTH (moved) and ROUTE (nowhere yet) meets TRYAGAIN
        # while the slot is half moved: it is sent again until the move ends.
        binding = store.bind_session("alice", "token-1", "server-a", 60)
        await deferLater(reactor, 0.3, lambda: None)
        assert not binding.called
        for node in redis_cluster.master_nodes():
            _ok(
                node.command("CLUSTER", "SETSLOT", str(slot), "NODE", redis_cluster.node_id(target))
            )
        assert await binding is True
        assert target.command("EXISTS", keys.failed("alice")) == b":1\r\n"
        assert await store.route("alice") == "server-a"
        # Now the source answers MOVED: followed, and the map corrected.
        assert source.command("GET", keys.auth("alice")).startswith(b"-MOVED")
        assert await store.token("alice") == "token-1"
        assert router._slots[slot] == ("127.0.0.1", target.port)
        assert await store.routes(["alice", "bob"]) == ["server-a", None]
    finally:
        await store.close()
    redis_cluster.wait_ok()


@pytest_twisted.ensureDeferred
async def test_a_node_that_lost_its_scripts_gets_their_source(
    redis_cluster: RedisCluster, redis_cluster_url: str
) -> None:
    from twisted.internet import reactor

    store = open_store(redis_cluster_url, reactor)
    try:
        await store.issue_token("alice", "token-1", 60)
        assert await store.bind_session("alice", "token-1", "server-a", 60)
        for node in redis_cluster.master_nodes():
            _ok(node.command("SCRIPT", "FLUSH"))
        assert await store.end_session("alice", "token-1", "server-a")
        assert await store.route("alice") is None
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_crashed_master_is_replaced_by_its_replica(
    redis_cluster: RedisCluster, redis_cluster_url: str
) -> None:
    from twisted.internet import reactor

    store = open_store(redis_cluster_url, reactor)
    try:
        await store.issue_token("alice", "token-1", 60)
        master = redis_cluster.master_of(keys.auth("alice"))
        # The replica has it before the master goes (replication is async).
        reply = master.command("WAIT", "1", "5000")
        assert reply == b":1\r\n", reply
        redis_cluster.crash_master(master)

        async def served() -> bool:
            try:
                return await store.token("alice") == "token-1"
            except Exception:  # StoreError until the map names the new master
                return False

        await wait_for(served, timeout=30, what="the promoted replica serves alice")
        assert await store.bind_session("alice", "token-1", "server-b", 60)
    finally:
        await store.close()
        redis_cluster.restart(master)


# -- a multi-recipient accept across slots, stopped between any two steps ---------------

#: The calls of one accept on a cluster, in order (RedisStore._accept_in_steps).
ACCEPT_STEPS = ("claim", "body and receipt", "WAIT_ACK per slot", "queue append", "answer")


class _StopsAt:
    """The store's router, failing its ``step``-th call with StoreError as a
    writer that dies there would: ``before`` the call reaches Redis, or
    ``after`` Redis ran it (the answer is lost)."""

    def __init__(self, router: ClusterConnection, step: int, when: str) -> None:
        self._router = router
        self._step = step
        self._when = when
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._router, name)

    async def _maybe_stop(self, call: object) -> object:
        self.calls += 1
        if self.calls != self._step:
            return await call  # type: ignore[misc]
        if self._when == "before":
            call.close()  # type: ignore[attr-defined]
            raise StoreError(f"stopped before step {self._step}")
        await call  # type: ignore[misc]
        raise StoreError(f"stopped after step {self._step}")

    def run_scripts(self, calls: object) -> Deferred[object]:
        return ensureDeferred(self._maybe_stop(self._router.run_scripts(calls)))  # type: ignore[arg-type]

    def execute(self, commands: object, **kwargs: object) -> Deferred[object]:
        return ensureDeferred(self._maybe_stop(self._router._execute(commands, None)))  # type: ignore[arg-type]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", range(1, len(ACCEPT_STEPS) + 1))
@pytest_twisted.ensureDeferred
async def test_an_accept_stopped_between_steps_loses_nothing_and_doubles_nothing(
    redis_cluster_url: str, step: int, when: str
) -> None:
    from twisted.internet import reactor

    from pigeonpush.ids import MessageIdGenerator
    from pigeonpush.store import Message, Notification

    recipients = tuple(f"device-{i}" for i in range(12))
    assert len({key_slot(keys.wait_ack(c)) for c in recipients}) > 3
    new_id = MessageIdGenerator(reactor)

    def request() -> Notification:
        now = reactor.seconds()
        message = Message(new_id(), "Hello", "A message", {"k": "v"}, now, now + 600)
        return Notification(message, recipients, "app-1:request-7")

    first = request()
    store = open_store(redis_cluster_url, reactor)
    other = open_store(redis_cluster_url, reactor)
    assert isinstance(store, RedisStore)
    router = store._main
    assert isinstance(router, ClusterConnection)
    stopping = _StopsAt(router, step, when)
    store._main = stopping  # type: ignore[assignment]
    try:
        with pytest.raises(StoreError, match=f"stopped {when} step {step}"):
            await store.accept([first])
        assert stopping.calls == step
        # Half written: whatever references the message has its body.
        referenced = {
            message_id for ids in await other.pending_ids_many(recipients) for message_id in ids
        }
        entries = await other.consume("worker-1", 100, 0)
        referenced |= {entry.notification.message.message_id for entry in entries}
        assert referenced <= {first.message.message_id}
        if referenced:
            assert await other.bodies(sorted(referenced)) != [None]
        # A device that got it early ACKs it before the retry.
        acked = bool(await other.pending_ids(recipients[0]))
        if acked:
            await other.ack([(recipients[0], first.message.message_id)])

        # The application retries the request with its Idempotency-Key.
        retry = request()
        (accepted,) = await other.accept([retry])
        claimed = step > 1 or when == "after"
        expected_id = first.message.message_id if claimed else retry.message.message_id
        assert accepted.message_id == expected_id
        assert accepted.recipients == len(recipients)
        assert accepted.duplicate == (step == len(ACCEPT_STEPS) and when == "after")
        # Nothing lost: one message, pending for every recipient but the one
        # that ACKed it, its body and receipt there, and queued.
        pending = await other.pending_ids_many(recipients)
        assert pending[0] == ([] if acked else [expected_id])
        assert pending[1:] == [[expected_id]] * (len(recipients) - 1)
        (body,) = await other.bodies([expected_id])
        assert body is not None and body.extras == {"k": "v"}
        receipt = await other.receipt(expected_id)
        assert receipt is not None and receipt.recipients == recipients
        assert receipt.pending == (recipients[1:] if acked else recipients)
        entries += await other.consume("worker-1", 100, 0)
        # Nothing doubled: every reference names the same messageId. A second
        # queue entry only when the writer stopped between the append and the
        # answer; its second push carries the same messageId, which the SDK
        # drops having handed it to the application once.
        assert {entry.notification.message.message_id for entry in entries} == {expected_id}
        appended_twice = (step, when) in ((4, "after"), (5, "before"))
        assert len(entries) == (2 if appended_twice else 1)
        # And a third attempt is a plain duplicate.
        assert await other.accept([request()]) == [attrs.evolve(accepted, duplicate=True)]
    finally:
        store._main = router
        await store.close()
        await other.close()


# -- a scheduled message's release across slots, stopped between any two steps ----------

#: The calls of one ``release_due`` on a cluster, in order (RedisStore._release_due).
RELEASE_STEPS = (
    "claim due",
    "read receipt and body",
    "release begin",
    "WAIT_ACK per slot",
    "queue append",
    "release end",
    "schedule entry removed",
)


class _Later:
    """The reactor, its clock ``ahead`` seconds in the future (the store reads
    the time from it; its connections keep the real reactor)."""

    def __init__(self, reactor: object) -> None:
        self._reactor = reactor
        self.ahead = 0.0

    def __getattr__(self, name: str) -> object:
        return getattr(self._reactor, name)

    def seconds(self) -> float:
        return self._reactor.seconds() + self.ahead  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", range(1, len(RELEASE_STEPS) + 1))
@pytest_twisted.ensureDeferred
async def test_a_release_stopped_between_steps_is_resumed_or_cancelled_never_lost(
    redis_cluster_url: str, step: int, when: str
) -> None:
    from twisted.internet import reactor

    from pigeonpush.ids import MessageIdGenerator
    from pigeonpush.store import CancelResult, Message, Notification, RecipientState

    recipients = tuple(f"device-{i}" for i in range(12))
    assert len({key_slot(keys.wait_ack(c)) for c in recipients}) > 3
    now = reactor.seconds()
    message = Message(MessageIdGenerator(reactor)(), "Later", "A message", {}, now, now + 600)
    store = open_store(redis_cluster_url, reactor)
    other = open_store(redis_cluster_url, reactor)
    assert isinstance(store, RedisStore) and isinstance(other, RedisStore)
    later, other_later = _Later(reactor), _Later(reactor)
    store._reactor = later
    other._reactor = other_later
    router = store._main
    assert isinstance(router, ClusterConnection)
    stopping = _StopsAt(router, step, when)
    try:
        await store.accept([Notification(message, recipients, send_at=now + 60)])
        store._main = stopping  # type: ignore[assignment]
        later.ahead = 61.0
        with pytest.raises(StoreError, match=f"stopped {when} step {step}"):
            await store.release_due(10, lease=30)
        assert stopping.calls == step
        # Past RELEASE_BEGIN the message is being sent: too late to cancel.
        stopped_at = 2 * step + (when == "after")  # in the order the calls ran
        begun = stopped_at > 2 * 3
        finished = stopped_at > 2 * 6
        cancelled = await other.cancel(message.message_id)
        assert cancelled == (CancelResult.SENT if begun else CancelResult.CANCELLED)
        # The next claim, once the dead worker's lease ran out, finishes it.
        other_later.ahead = 61.0 + 31.0
        sent = await other.release_due(10, lease=30)
        assert sent == (1 if begun and not finished else 0)
        assert await other.release_due(10, lease=30) == 0
        (left,) = await other._main.execute([("ZCARD", keys.SCHEDULE)])
        assert left == 0
        pending = await other.pending_ids_many(recipients)
        entries = await other.consume("worker-1", 100, 0)
        receipt = await other.receipt(message.message_id)
        assert receipt is not None
        if not begun:
            assert pending == [[]] * len(recipients)
            assert entries == []
            assert set(receipt.states) == {RecipientState.CANCELLED}
            return
        assert pending == [[message.message_id]] * len(recipients)
        assert receipt.pending == recipients
        # Queued, once, or twice (the same messageId, which the SDK drops the
        # second time) when the worker stopped between the append and the end.
        appended_twice = (step, when) in ((5, "after"), (6, "before"))
        assert len(entries) == (2 if appended_twice else 1)
        assert {e.notification.message.message_id for e in entries} == {message.message_id}
    finally:
        store._main = router
        await store.close()
        await other.close()


@pytest_twisted.ensureDeferred
async def test_a_sharded_queue_waits_on_every_shard_and_keeps_what_comes_meanwhile(
    redis_cluster_url: str,
) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import CancelledError

    from pigeonpush.ids import MessageIdGenerator
    from pigeonpush.store import Message, Notification

    new_id = MessageIdGenerator(reactor)

    def note() -> Notification:
        now = reactor.seconds()
        return Notification(Message(new_id(), "t", "x", {}, now, now + 60), ("alice",))

    url = redis_cluster_url + "?queue_shards=4"
    reader, writer = open_store(url, reactor), open_store(url, reactor)
    assert isinstance(reader, RedisStore)
    try:
        waiting = reader.consume("worker-1", 10, 30)
        await wait_for(lambda: len(reader._reads) == 4, timeout=5, what="a read per shard")
        first, second = note(), note()
        await writer.accept([first])  # shard 0
        (entry,) = await waiting.addTimeout(10, reactor)
        assert entry.entry_id.startswith("0/")
        assert entry.notification.message == first.message
        # The other shards' reads go on, and one takes what comes meanwhile.
        assert len(reader._reads) == 3
        await writer.accept([second])  # shard 1
        await wait_for(
            lambda: bool(reader._stash.get("worker-1")), timeout=5, what="shard 1's read"
        )
        (kept,) = await reader.consume("worker-1", 10, 0)
        assert kept.entry_id.startswith("1/")
        assert kept.notification.message == second.message
        # Waiting again starts reads only where none is under way.
        waiting = reader.consume("worker-1", 10, 30)
        await wait_for(lambda: len(reader._reads) == 4, timeout=5, what="a read per shard")
        waiting.cancel()
        with pytest.raises(CancelledError):
            await waiting
        assert await reader.queue_lag() == 2
        await reader.acknowledge([entry.entry_id, kept.entry_id, "9/1-1", "1-1", "x/y"])
        assert await reader.queue_lag() == 0
        # Queued entries: every shard is read in one go, for up to ``count``
        # each; what is over comes with the next calls, none lost or doubled
        # (the reads the cancelled call left take some too, for worker-1).
        batches = [[note(), note()] for _ in range(3)]
        for batch in batches:  # shards 2, 3 and 0
            await writer.accept(batch)
        got: list[QueueEntry] = []

        async def all_came() -> bool:
            more = await reader.consume("worker-1", 2, 0)
            assert len(more) <= 2
            got.extend(more)
            return len(got) >= 6

        await wait_for(all_came, timeout=5, what="the six entries")
        assert sorted(e.notification.message.message_id for e in got) == sorted(
            n.message.message_id for batch in batches for n in batch
        )
        assert {e.entry_id.split("/")[0] for e in got} == {"2", "3", "0"}
        assert await reader.consume("worker-1", 2, 0) == []
    finally:
        await reader.close()
        await writer.close()
