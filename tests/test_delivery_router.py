"""The router and the consume loop on the memory store, with Clock time and
in-process server doubles (no sockets)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.task import Clock

from pigeonpush.delivery.loop import ConsumeLoop
from pigeonpush.delivery.router import BatchReport, MessageRouter
from pigeonpush.ids import MessageIdGenerator
from pigeonpush.rpc import PushGateway, PushItem, PushStatus
from pigeonpush.rpcpool import RpcUnavailable
from pigeonpush.store.interface import StoreError
from pigeonpush.store.memory import MemoryStore
from pigeonpush.store.model import Message, Notification, QueueEntry, RecipientState
from support.server_double import ServerDouble

S1 = "10.0.0.1:7101"
S2 = "10.0.0.2:7101"


class Harness:
    def __init__(self, make_store: Callable[[Clock], MemoryStore] = MemoryStore) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = make_store(self.clock)
        self.new_id = MessageIdGenerator(self.clock)
        self.servers = {S1: ServerDouble(), S2: ServerDouble()}
        self.router = MessageRouter(self.store, self.gateway_for, self.clock)

    def gateway_for(self, address: str) -> PushGateway:
        return self.servers[address]

    def connect(self, client: str, server: str) -> None:
        """A client online on ``server``: its session bound as the server would."""
        self.store.issue_token(client, "token-" + client, 3600)
        self.store.bind_session(client, "token-" + client, server, 3600)
        self.servers[server].online.add(client)

    def accept(
        self,
        recipients: Sequence[str],
        ttl: float = 600,
        title: str = "t",
        collapse_key: str | None = None,
    ) -> str:
        now = self.clock.seconds()
        message = Message(self.new_id(), title, "text", {"k": "v"}, now, now + ttl)
        self.clock.advance(0.001)
        note = Notification(message, tuple(recipients), collapse_key=collapse_key)
        done = self.store.accept([note])
        assert done.called
        return message.message_id

    def consume(self, consumer: str = "w1", count: int = 100) -> list[QueueEntry]:
        taken = self.store.consume(consumer, count, 0)
        return taken.result  # type: ignore[attr-defined,no-any-return]

    def route(self, entries: Sequence[QueueEntry]) -> BatchReport:
        done = ensureDeferred(self.router.route(entries))
        assert done.called
        return done.result  # type: ignore[attr-defined,no-any-return]

    def pending(self, client: str) -> list[str]:
        return self.store.pending_ids(client).result  # type: ignore[attr-defined,no-any-return]


def test_one_batch_per_server_in_queue_order_and_offline_without_route() -> None:
    h = Harness()
    h.connect("a", S1)
    h.connect("b", S1)
    h.connect("c", S2)
    m1 = h.accept(["a", "b", "c"])
    m2 = h.accept(["a"])
    m3 = h.accept(["d"])
    report = h.route(h.consume())
    assert len(h.servers[S1].batches) == 1
    assert [(i.client_id, i.message_id) for i in h.servers[S1].batches[0]] == [
        ("a", m1),
        ("b", m1),
        ("a", m2),
    ]
    assert [(i.client_id, i.message_id) for i in h.servers[S2].batches[0]] == [("c", m1)]
    assert report.entries == 3
    assert report.results == {"written": 4, "no_route": 1}
    # Routing acknowledges nothing: only the client's ACK empties WAIT_ACK.
    assert h.pending("a") == [m1, m2]
    assert h.pending("d") == [m3]


def test_items_carry_the_body_from_the_queue() -> None:
    h = Harness()
    h.connect("a", S1)
    h.accept(["a"], title="Hello")
    h.route(h.consume())
    (item,) = h.servers[S1].items()
    assert item == PushItem("a", item.message_id, "Hello", "text", {"k": "v"})
    assert item.has_body


def test_offline_and_window_full_recipients_stay_pending() -> None:
    h = Harness()
    h.connect("a", S1)
    h.connect("b", S1)
    h.servers[S1].online.discard("a")  # ROUTE is stale: the server says offline
    h.servers[S1].window_full.add("b")
    m1 = h.accept(["a", "b"])
    report = h.route(h.consume())
    assert report.results == {"offline": 1, "window_full": 1}
    assert h.pending("a") == [m1]
    assert h.pending("b") == [m1]


def test_expired_entries_are_not_pushed() -> None:
    h = Harness()
    h.connect("a", S1)
    h.accept(["a"], ttl=5)
    live = h.accept(["a"], ttl=600)
    entries = h.consume()
    h.clock.advance(10)
    report = h.route(entries)
    assert report.expired == 1
    assert [i.message_id for i in h.servers[S1].items()] == [live]


class FailingGateway:
    def push(self, items: Sequence[PushItem]) -> Deferred[list[PushStatus]]:
        return fail(RpcUnavailable("10.0.0.1:7101 did not answer Push in time"))

    def kick(self, client_id: str, reason: int) -> Deferred[bool]:
        return fail(RpcUnavailable("no"))


def test_a_server_that_fails_only_affects_its_own_recipients() -> None:
    h = Harness()
    h.connect("a", S1)
    h.connect("c", S2)
    failing = FailingGateway()
    h.router = MessageRouter(
        h.store, lambda address: failing if address == S1 else h.servers[address], h.clock
    )
    m1 = h.accept(["a", "c"])
    report = h.route(h.consume())
    assert report.results == {"unavailable": 1, "written": 1}
    assert h.servers[S2].written == [("c", m1)]
    assert h.pending("a") == [m1]


def test_a_server_answering_the_wrong_number_of_statuses_counts_as_unavailable() -> None:
    h = Harness()
    h.connect("a", S1)

    class Short(ServerDouble):
        def push(self, items: Sequence[PushItem]) -> Deferred[list[PushStatus]]:
            super().push(items)
            return Deferred.fromCoroutine(_empty())

    async def _empty() -> list[PushStatus]:
        return []

    h.servers[S1] = Short(online=["a"])
    h.accept(["a"])
    assert h.route(h.consume()).results == {"unavailable": 1}


def test_reclaimed_entries_go_only_to_recipients_that_have_not_acked() -> None:
    h = Harness()
    h.connect("a", S1)
    h.connect("b", S1)
    m1 = h.accept(["a", "b"])
    h.consume("crashed")  # handed out, never acknowledged
    h.store.ack([("a", m1)])  # a got it before the crash and ACKed
    h.clock.advance(31)
    reclaimed = h.store.reclaim("w2", 30, 10).result  # type: ignore[attr-defined]
    assert reclaimed[0].deliveries == 2
    report = h.route(reclaimed)
    assert h.servers[S1].written == [("b", m1)]
    assert report.results == {"written": 1}


def test_a_queued_message_replaced_by_a_newer_one_is_not_pushed() -> None:
    h = Harness()
    h.connect("a", S1)
    h.connect("b", S1)
    older = h.accept(["a", "b"], collapse_key="score")
    h.store.ack([("b", older)])
    newer = h.accept(["a"], collapse_key="score")
    report = h.route(h.consume())
    # a gets only the newest; b had ACKed the older one already.
    assert h.servers[S1].written == [("a", newer)]
    assert report.results == {"written": 1}


def test_reclaimed_entry_whose_message_is_gone_pushes_nothing() -> None:
    h = Harness()
    h.connect("a", S1)
    h.accept(["a"], ttl=40)
    h.consume("crashed")
    h.clock.advance(39)
    reclaimed = h.store.reclaim("w2", 30, 10).result  # type: ignore[attr-defined]
    h.clock.advance(2)
    assert h.route(reclaimed).expired == 1
    assert h.servers[S1].batches == []


# -- the consume loop ------------------------------------------------------------


class FlakyStore(MemoryStore):
    """The memory store with some operations failing the next N times, as
    Redis does while it restarts."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.failures: dict[str, int] = {}
        self.calls: list[str] = []

    def _flaky(self, name: str) -> bool:
        self.calls.append(name)
        left = self.failures.get(name, 0)
        if left:
            self.failures[name] = left - 1
            return True
        return False

    def routes(self, client_ids: Sequence[str]) -> Deferred[list[str | None]]:
        if self._flaky("routes"):
            return fail(StoreError("connection lost"))
        return super().routes(client_ids)

    def acknowledge(self, entry_ids: Sequence[str]) -> Deferred[None]:
        if self._flaky("acknowledge"):
            return fail(StoreError("connection lost"))
        return super().acknowledge(entry_ids)

    def consume(self, consumer: str, count: int, block: float) -> Deferred[list[QueueEntry]]:
        if self._flaky("consume"):
            return fail(StoreError("connection lost"))
        return super().consume(consumer, count, block)


def make_loop(h: Harness, consumer: str = "w1", **kwargs: float) -> ConsumeLoop:
    options: dict[str, float] = {"block": 1.0, "claim_idle": 30.0, "retry_initial": 0.5}
    options.update(kwargs)
    return ConsumeLoop(h.store, h.router, h.clock, consumer=consumer, batch=10, **options)


def lag(h: Harness) -> int:
    return h.store.queue_lag().result  # type: ignore[attr-defined,no-any-return]


def test_the_loop_routes_and_acknowledges_what_arrives() -> None:
    h = Harness()
    h.connect("a", S1)
    loop = make_loop(h)
    loop.startService()
    m1 = h.accept(["a"])
    m2 = h.accept(["a"])
    h.clock.advance(0)
    assert h.servers[S1].written == [("a", m1), ("a", m2)]
    assert lag(h) == 0
    assert loop.handled == 2
    stopped = loop.stopService()
    h.clock.advance(1)
    assert stopped.called


def test_a_store_error_while_routing_is_retried_with_backoff_and_acknowledges_late() -> None:
    h = Harness(FlakyStore)
    store = h.store
    assert isinstance(store, FlakyStore)
    h.connect("a", S1)
    store.failures["routes"] = 3
    loop = make_loop(h)
    loop.startService()
    m1 = h.accept(["a"])
    h.clock.advance(0)
    assert h.servers[S1].batches == []
    assert lag(h) == 1  # not acknowledged while not routed
    for delay in (0.5, 1.0, 2.0):  # exponential backoff
        h.clock.advance(delay - 0.01)
        assert h.servers[S1].batches == []
        h.clock.advance(0.01)
    assert h.servers[S1].written == [("a", m1)]
    assert lag(h) == 0
    loop.stopService()
    h.clock.advance(1)


def test_a_failed_acknowledge_is_retried_without_pushing_again() -> None:
    h = Harness(FlakyStore)
    store = h.store
    assert isinstance(store, FlakyStore)
    h.connect("a", S1)
    store.failures["acknowledge"] = 2
    loop = make_loop(h)
    loop.startService()
    h.accept(["a"])
    h.clock.advance(0)
    assert lag(h) == 1
    h.clock.advance(0.5)
    h.clock.advance(1.0)
    assert lag(h) == 0
    assert len(h.servers[S1].batches) == 1
    loop.stopService()
    h.clock.advance(1)


def test_a_failed_read_is_retried() -> None:
    h = Harness(FlakyStore)
    store = h.store
    assert isinstance(store, FlakyStore)
    h.connect("a", S1)
    store.failures["consume"] = 1
    h.accept(["a"])
    loop = make_loop(h)
    loop.startService()
    assert h.servers[S1].batches == []
    h.clock.advance(0.5)
    assert len(h.servers[S1].batches) == 1
    loop.stopService()
    h.clock.advance(1)


def test_the_loop_reclaims_a_crashed_workers_entries_after_claim_idle() -> None:
    h = Harness()
    h.connect("a", S1)
    m1 = h.accept(["a"])
    h.consume("crashed")
    loop = make_loop(h, claim_idle=30.0)
    loop.startService()
    h.clock.advance(0)
    assert h.servers[S1].batches == []
    for _ in range(40):
        h.clock.advance(1)
    assert h.servers[S1].written == [("a", m1)]
    assert lag(h) == 0
    loop.stopService()
    h.clock.advance(1)


def test_stop_waits_for_the_batch_in_hand() -> None:
    h = Harness()
    h.connect("a", S1)
    h.servers[S1].hold()
    loop = make_loop(h, stop_timeout=10.0)
    loop.startService()
    h.accept(["a"])
    h.clock.advance(0)
    assert len(h.servers[S1].batches) == 1
    stopped = loop.stopService()
    h.clock.advance(5)
    assert not stopped.called
    h.servers[S1].release()
    assert stopped.called
    assert lag(h) == 0  # the batch was finished and acknowledged


def test_stop_is_bounded_when_a_server_never_answers() -> None:
    h = Harness()
    h.connect("a", S1)
    h.servers[S1].hold()
    loop = make_loop(h, stop_timeout=10.0)
    loop.startService()
    h.accept(["a"])
    h.clock.advance(0)
    stopped = loop.stopService()
    h.clock.advance(10)
    assert stopped.called
    assert lag(h) == 1  # left for another worker to reclaim


def test_stop_during_backoff_leaves_the_batch_unacknowledged() -> None:
    h = Harness(FlakyStore)
    store = h.store
    assert isinstance(store, FlakyStore)
    h.connect("a", S1)
    store.failures["routes"] = 100
    loop = make_loop(h)
    loop.startService()
    h.accept(["a"])
    h.clock.advance(0)
    stopped = loop.stopService()
    assert stopped.called
    assert lag(h) == 1
    assert h.servers[S1].batches == []


@pytest.mark.parametrize("block", [0.2, 1.0])
def test_an_idle_loop_reads_every_block_seconds(block: float) -> None:
    h = Harness(FlakyStore)
    store = h.store
    assert isinstance(store, FlakyStore)
    loop = make_loop(h, block=block)
    loop.startService()
    before = store.calls.count("consume")
    for _ in range(5):
        h.clock.advance(block)
    assert store.calls.count("consume") - before == 5
    loop.stopService()
    h.clock.advance(block)


def test_memory_store_happy_path_in_one_process() -> None:
    """What pigeon-standalone does: the API's core, a worker and a push server's
    in-process gateway over one memory store, on one clock."""
    from pigeonpush.delivery.service import DeliveryWorker
    from pigeonpush.notification.core import Notifications, Submission
    from pigeonpush.notification.validate import Limits

    h = Harness()
    h.connect("alice", S1)
    notifications = Notifications(h.store, h.clock, Limits())
    worker = DeliveryWorker(h.store, h.gateway_for, h.clock, consumer="standalone", block=1.0)
    worker.startService()
    submitted = notifications.submit(
        [Submission({"to": ["alice", "bob"], "title": "Hi", "text": "x", "ttl": 60})]
    )
    (accepted,) = submitted.result  # type: ignore[attr-defined]
    h.clock.advance(0)
    assert h.servers[S1].written == [("alice", accepted.message_id)]
    assert lag(h) == 0
    h.store.ack([("alice", accepted.message_id)])  # the device ACKs
    receipt = notifications.receipt(accepted.message_id).result  # type: ignore[attr-defined]
    assert (receipt.pending, receipt.acked) == (("bob",), 1)
    # bob connects later: his pull finds it; after the TTL nobody does.
    items, _ = worker.pull_source.pull("bob", 10, []).result  # type: ignore[attr-defined]
    assert [item.message_id for item in items] == [accepted.message_id]
    h.clock.advance(61)
    assert worker.pull_source.pull("bob", 10, []).result == ([], False)  # type: ignore[attr-defined]
    # The receipt outlives the body: bob never got it before the TTL.
    receipt = notifications.receipt(accepted.message_id).result  # type: ignore[attr-defined]
    assert (receipt.pending, receipt.acked, receipt.with_state(RecipientState.EXPIRED)) == (
        (),
        1,
        ("bob",),
    )
    stopped = worker.stopService()
    h.clock.advance(1)
    assert stopped.called


class SlowAckStore(MemoryStore):
    """Acknowledgements wait until the test releases them."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.acks: list[tuple[list[str], Deferred[None]]] = []
        self.calls: list[str] = []

    def acknowledge(self, entry_ids: Sequence[str]) -> Deferred[None]:
        self.calls.append("acknowledge")
        held: Deferred[None] = Deferred()
        self.acks.append((list(entry_ids), held))
        return held

    def consume(self, consumer: str, count: int, block: float) -> Deferred[list[QueueEntry]]:
        self.calls.append("consume")
        return super().consume(consumer, count, block)

    def release(self) -> None:
        """Let the oldest held acknowledgement through."""
        ids, held = self.acks.pop(0)
        super().acknowledge(ids).chainDeferred(held)


def test_the_next_read_does_not_wait_for_the_acknowledgement() -> None:
    h = Harness(SlowAckStore)
    store = h.store
    assert isinstance(store, SlowAckStore)
    h.connect("a", S1)
    loop = make_loop(h)
    loop.startService()
    m1 = h.accept(["a"])
    h.clock.advance(0)
    assert store.calls[-2:] == ["acknowledge", "consume"]  # read again at once
    m2 = h.accept(["a"])
    h.clock.advance(1)
    # The second batch is pushed, but its acknowledgement waits for the first.
    assert h.servers[S1].written == [("a", m1), ("a", m2)]
    assert len(store.acks) == 1
    assert loop.handled == 0
    store.release()
    assert len(store.acks) == 1 and loop.handled == 1
    store.release()
    assert loop.handled == 2
    assert lag(h) == 0
    stopped = loop.stopService()
    h.clock.advance(1)
    assert stopped.called


def test_stop_waits_for_the_acknowledgement_in_flight() -> None:
    h = Harness(SlowAckStore)
    store = h.store
    assert isinstance(store, SlowAckStore)
    h.connect("a", S1)
    loop = make_loop(h, stop_timeout=10.0)
    loop.startService()
    h.accept(["a"])
    h.clock.advance(0)
    stopped = loop.stopService()
    h.clock.advance(1)  # the read in progress ends
    assert not stopped.called
    store.release()
    assert stopped.called
    assert lag(h) == 0


def test_stop_while_an_acknowledgement_backs_off_leaves_the_entries_pending() -> None:
    h = Harness(FlakyStore)
    store = h.store
    assert isinstance(store, FlakyStore)
    h.connect("a", S1)
    store.failures["acknowledge"] = 100
    loop = make_loop(h)
    loop.startService()
    m1 = h.accept(["a"])
    h.clock.advance(0)
    assert h.servers[S1].written == [("a", m1)]
    stopped = loop.stopService()
    h.clock.advance(1)
    assert stopped.called
    assert lag(h) == 1  # for a live worker to reclaim
    assert loop.handled == 0
