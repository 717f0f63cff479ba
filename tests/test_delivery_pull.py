"""Pull: pending messages oldest first, in-flight skipped, expired cleaned;
and its AMP adapter over a real loopback connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from pigeonpush.delivery.pull import MARGIN, MAX_PULL, PendingMessages
from pigeonpush.delivery.rpc_server import PullServerFactory
from pigeonpush.ids import MessageIdGenerator
from pigeonpush.rpc import (
    BadRequest,
    Pull,
    PullMany,
    PullRequest,
    PushItem,
    TemporarilyUnavailable,
    decode_batch,
    encode_pull_requests,
)
from pigeonpush.rpcpool import AmpPool
from pigeonpush.store.interface import StoreError
from pigeonpush.store.memory import MemoryStore
from pigeonpush.store.model import Message, Notification
from support.logcheck import FailureCollector


class Setup:
    def __init__(self, clock: Any = None) -> None:
        if clock is None:
            clock = Clock()
            clock.advance(1_700_000_000)
        self.clock = clock
        self.store = MemoryStore(clock)
        self.source = PendingMessages(self.store, clock)
        self.new_id = MessageIdGenerator(clock)

    def accept(self, client: str, ttl: float = 600, text: str = "x") -> str:
        now = self.clock.seconds()
        message = Message(self.new_id(), "t", text, {}, now, now + ttl)
        self.store.accept([Notification(message, (client,))])
        return message.message_id

    def pull(
        self, client: str, limit: int, in_flight: Sequence[str] = ()
    ) -> tuple[list[PushItem], bool]:
        done = self.source.pull(client, limit, in_flight)
        assert done.called
        return done.result  # type: ignore[attr-defined,no-any-return]

    def pending(self, client: str) -> list[str]:
        return self.store.pending_ids(client).result  # type: ignore[attr-defined,no-any-return]


def test_pending_messages_come_oldest_first_with_bodies() -> None:
    s = Setup()
    ids = []
    for n in range(5):
        ids.append(s.accept("a", text=f"message {n}"))
        s.clock.advance(0.01)
    items, more = s.pull("a", 10)
    assert [item.message_id for item in items] == ids
    assert [item.text for item in items] == [f"message {n}" for n in range(5)]
    assert all(item.client_id == "a" and item.has_body for item in items)
    assert more is False


def test_limit_and_more() -> None:
    s = Setup()
    ids = [s.accept("a") for _ in range(5)]
    items, more = s.pull("a", 2)
    assert [item.message_id for item in items] == ids[:2]
    assert more is True


def test_in_flight_ids_are_skipped() -> None:
    s = Setup()
    ids = [s.accept("a") for _ in range(4)]
    items, more = s.pull("a", 10, in_flight=[ids[0], ids[2]])
    assert [item.message_id for item in items] == [ids[1], ids[3]]
    assert more is False


def test_expired_ids_are_skipped_and_removed_from_wait_ack() -> None:
    s = Setup()
    old = s.accept("a", ttl=5)
    fresh = s.accept("a", ttl=600)
    s.clock.advance(6)
    items, _more = s.pull("a", 10)
    assert [item.message_id for item in items] == [fresh]
    assert old not in s.pending("a")


def test_a_limit_of_zero_returns_nothing() -> None:
    s = Setup()
    s.accept("a")
    assert s.pull("a", 0) == ([], False)


def test_nothing_pending() -> None:
    assert Setup().pull("nobody", 10) == ([], False)


def test_the_limit_is_capped() -> None:
    s = Setup()
    for _ in range(MAX_PULL + 5):
        s.accept("a")
    items, more = s.pull("a", MAX_PULL * 10)
    assert len(items) == MAX_PULL
    assert more is True


def test_many_expired_ids_do_not_hide_live_ones_for_good() -> None:
    """More expired ids than the margin: this pull is short, says more, and the
    next one finds the live messages (the expired ones are gone by then)."""
    s = Setup()
    for _ in range(MARGIN + 10):
        s.accept("a", ttl=5)
    s.clock.advance(1)
    live = [s.accept("a", ttl=600) for _ in range(3)]
    s.clock.advance(5)
    assert s.pull("a", 2) == ([], True)  # all it read had expired
    items, more = s.pull("a", 2)
    assert ([i.message_id for i in items], more) == (live[:2], True)
    items, more = s.pull("a", 2, in_flight=live[:2])
    assert ([i.message_id for i in items], more) == (live[2:], False)
    assert s.pending("a") == live


class BrokenStore(MemoryStore):
    def pending_ids_many(
        self, client_ids: Sequence[str], limit: int | None = None
    ) -> Deferred[list[list[str]]]:
        return fail(StoreError("connection lost"))


class AckFailingStore(MemoryStore):
    def ack(self, acks: Sequence[tuple[str, str]]) -> Deferred[None]:
        return fail(StoreError("connection lost"))


def test_a_failed_cleanup_does_not_fail_the_pull() -> None:
    clock = Clock()
    clock.advance(1000)
    store = AckFailingStore(clock)
    source = PendingMessages(store, clock)
    message = Message("01ARZ3NDEKTSV4RRFFQ69G5FAV", "t", "x", {}, 1000, 1005)
    live = Message("01ARZ3NDEKTSV4RRFFQ69G5FAW", "t", "x", {}, 1000, 2000)
    store.accept([Notification(message, ("a",)), Notification(live, ("a",))])
    clock.advance(10)
    done = source.pull("a", 5, [])
    items, _ = done.result  # type: ignore[attr-defined]
    assert [i.message_id for i in items] == [live.message_id]


# -- over AMP ----------------------------------------------------------------------


async def serve(source: Any) -> tuple[Any, AmpPool, str]:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        PullServerFactory(source)
    )
    pool = AmpPool(reactor, call_timeout=5)
    return port, pool, f"127.0.0.1:{port.getHost().port}"


@pytest_twisted.ensureDeferred
async def test_pull_over_amp_answers_oldest_first() -> None:
    from twisted.internet import reactor

    s = Setup(reactor)
    ids = [s.accept("a", text=f"n{n}") for n in range(3)]
    port, pool, address = await serve(s.source)
    try:
        answer = await pool.call(address, Pull, clientId="a", limit=10, inFlight=[ids[0]])
        items = decode_batch(answer["batch"])
        assert [i.message_id for i in items] == ids[1:]
        assert [i.text for i in items] == ["n1", "n2"]
        assert answer["more"] is False
    finally:
        await pool.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_answer_that_would_not_fit_one_amp_value_is_cut_and_says_more() -> None:
    from twisted.internet import reactor

    s = Setup(reactor)
    ids = [s.accept("a", text="x" * 6000) for _ in range(15)]  # ~90 kB in all
    port, pool, address = await serve(s.source)
    try:
        answer = await pool.call(address, Pull, clientId="a", limit=15, inFlight=[])
        items = decode_batch(answer["batch"])
        assert 0 < len(items) < 15
        assert len(answer["batch"]) <= 0xFFFF
        assert [i.message_id for i in items] == ids[: len(items)]
        assert answer["more"] is True
    finally:
        await pool.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_store_failure_is_an_amp_error_and_the_connection_stays_up() -> None:
    from twisted.internet import reactor

    port, pool, address = await serve(PendingMessages(BrokenStore(reactor), reactor))
    try:
        with pytest.raises(TemporarilyUnavailable, match="retry later"):
            await pool.call(address, Pull, clientId="a", limit=10, inFlight=[])
        assert pool.connected_addresses() == [address]
    finally:
        await pool.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("client", "limit"), [("", 10), ("x" * 129, 10), ("a", -1)])
async def test_bad_pull_arguments_are_refused(client: str, limit: int) -> None:
    from twisted.internet import reactor

    s = Setup(reactor)
    port, pool, address = await serve(s.source)
    try:
        with pytest.raises(BadRequest):
            await pool.call(address, Pull, clientId=client, limit=limit, inFlight=[])
        assert pool.connected_addresses() == [address]
    finally:
        await pool.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_unexpected_failure_is_logged_and_answered(
    logged_failures: FailureCollector,
) -> None:

    class Buggy:
        def pull(
            self, client_id: str, limit: int, in_flight: Sequence[str]
        ) -> Deferred[tuple[list[PushItem], bool]]:
            return fail(ZeroDivisionError("bug"))

    port, pool, address = await serve(Buggy())
    try:
        with pytest.raises(TemporarilyUnavailable):
            await pool.call(address, Pull, clientId="a", limit=1, inFlight=[])
        assert logged_failures.flush(ZeroDivisionError)
    finally:
        await pool.close()
        await port.stopListening()


# -- many clients at once ------------------------------------------------------------


class CountingStore(MemoryStore):
    """Counts the store calls a batch of pulls makes."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.calls: list[str] = []

    def pending_ids(self, client_id: str, limit: int | None = None) -> Deferred[list[str]]:
        self.calls.append("pending_ids")
        return super().pending_ids(client_id, limit)

    def pending_ids_many(
        self, client_ids: Sequence[str], limit: int | None = None
    ) -> Deferred[list[list[str]]]:
        self.calls.append("pending_ids_many")
        return super().pending_ids_many(client_ids, limit)

    def bodies(self, message_ids: Sequence[str]) -> Deferred[list[Message | None]]:
        self.calls.append("bodies")
        return super().bodies(message_ids)

    def ack(self, acks: Sequence[tuple[str, str]]) -> Deferred[None]:
        self.calls.append("ack")
        return super().ack(acks)

    def drop_pending(self, drops: Sequence[tuple[str, str, str]]) -> Deferred[None]:
        self.calls.append("drop_pending")
        return super().drop_pending(drops)


def test_pull_many_reads_all_clients_in_one_call_each() -> None:
    s = Setup()
    store = CountingStore(s.clock)
    s.store, s.source = store, PendingMessages(store, s.clock)
    a1 = s.accept("a")
    s.clock.advance(0.01)
    s.accept("b", ttl=1)  # expires before the pull
    s.clock.advance(0.01)
    b2 = s.accept("b")
    s.clock.advance(0.01)
    a2 = s.accept("a")
    s.clock.advance(2)  # b1 expires
    store.calls.clear()
    requests = [
        PullRequest("a", 1),
        PullRequest("b", 10),
        PullRequest("c", 10),
        PullRequest("a", 0),
        PullRequest("a", 5, (a1,)),
    ]

    done = s.source.pull_many(requests)

    answers = done.result  # type: ignore[attr-defined]
    assert [([i.message_id for i in items], more) for items, more in answers] == [
        ([a1], True),
        ([b2], False),
        ([], False),
        ([], False),
        ([a2], False),
    ]
    assert store.calls == ["pending_ids_many", "bodies", "drop_pending"]
    assert s.pending("b") == [b2]


def test_pull_many_of_nothing_asks_the_store_nothing() -> None:
    s = Setup()
    store = CountingStore(s.clock)
    source = PendingMessages(store, s.clock)
    assert source.pull_many([]).result == []  # type: ignore[attr-defined]
    assert source.pull_many([PullRequest("a", 0)]).result == [([], False)]  # type: ignore[attr-defined]
    assert store.calls == []


@pytest_twisted.ensureDeferred
async def test_pull_many_over_amp_cuts_at_the_value_limit_and_lists_who_has_more() -> None:
    from twisted.internet import reactor

    s = Setup(reactor)
    a_ids = [s.accept("a", text="x" * 6000) for _ in range(8)]  # ~48 kB
    b_ids = [s.accept("b", text="y" * 6000) for _ in range(8)]
    s.accept("c")
    port, pool, address = await serve(s.source)
    try:
        value = next(
            encode_pull_requests([PullRequest("a", 8), PullRequest("b", 8), PullRequest("c", 1)])
        )[1]
        answer = await pool.call(address, PullMany, requests=value)
        items = decode_batch(answer["batch"])
        assert len(answer["batch"]) <= 0xFFFF
        assert [i.message_id for i in items] == (a_ids + b_ids)[: len(items)]
        assert 8 < len(items) < 16
        assert answer["more"] == ["b", "c"]
    finally:
        await pool.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "value",
    [
        b"nonsense",
        b'[["", 1, []]]',
        b'[["a", -1, []]]',
        b'[["' + b"x" * 129 + b'", 1, []]]',
        b"[" + b",".join([b'["a",1,[]]'] * 1001) + b"]",
    ],
)
async def test_bad_pull_many_arguments_are_refused(value: bytes) -> None:
    from twisted.internet import reactor

    s = Setup(reactor)
    port, pool, address = await serve(s.source)
    try:
        with pytest.raises(BadRequest):
            await pool.call(address, PullMany, requests=value)
        assert pool.connected_addresses() == [address]
    finally:
        await pool.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_store_failure_fails_pull_many_and_the_connection_stays_up() -> None:
    from twisted.internet import reactor

    port, pool, address = await serve(PendingMessages(BrokenStore(reactor), reactor))
    try:
        value = next(encode_pull_requests([PullRequest("a", 1), PullRequest("b", 1)]))[1]
        with pytest.raises(TemporarilyUnavailable, match="retry later"):
            await pool.call(address, PullMany, requests=value)
        assert pool.connected_addresses() == [address]
    finally:
        await pool.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_pull_many_reaches_a_source_without_it_as_one_pull_per_client(
    logged_failures: FailureCollector,
) -> None:
    class OneByOne:
        def __init__(self) -> None:
            self.asked: list[str] = []

        def pull(
            self, client_id: str, limit: int, in_flight: Sequence[str]
        ) -> Deferred[tuple[list[PushItem], bool]]:
            self.asked.append(client_id)
            if client_id == "broken":
                return fail(ZeroDivisionError("bug"))
            return succeed(([PushItem(client_id, "m1", "t", "x")], False))

    source = OneByOne()
    port, pool, address = await serve(source)
    try:
        value = next(encode_pull_requests([PullRequest("a", 1), PullRequest("b", 1)]))[1]
        answer = await pool.call(address, PullMany, requests=value)
        assert [i.client_id for i in decode_batch(answer["batch"])] == ["a", "b"]
        assert answer["more"] == []
        value = next(encode_pull_requests([PullRequest("a", 1), PullRequest("broken", 1)]))[1]
        with pytest.raises(TemporarilyUnavailable):
            await pool.call(address, PullMany, requests=value)
        assert logged_failures.flush(ZeroDivisionError)
    finally:
        await pool.close()
        await port.stopListening()
