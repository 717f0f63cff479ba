"""PullBatcher: the pulls of a few milliseconds share one ``pull_many``; and the
hub's pulls going through it (Clock + the memory store)."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from pigeonpush.rpc import PullAnswer, PullRequest, PushItem
from pigeonpush.rpcpool import RpcUnavailable
from pigeonpush.server.pull import BATCH_DELAY, PullBatcher
from pigeonpush.wire.frames import PING, PONG, Auth, AuthOk, Push
from support.delivery_double import PendingMessages
from support.server_harness import Harness


def item(client_id: str, n: int) -> PushItem:
    return PushItem(client_id, f"m{n:03d}", f"title {n}", "text")


class Batching:
    """A batch source over the test double: records every ``pull_many``."""

    def __init__(self, double: PendingMessages | None = None) -> None:
        self.double = double if double is not None else PendingMessages()
        self.batches: list[list[PullRequest]] = []
        self.error: Exception | None = None

    def pull(
        self, client_id: str, limit: int, in_flight: Sequence[str]
    ) -> Deferred[tuple[list[PushItem], bool]]:
        raise AssertionError("a batch source is asked with pull_many")

    def pull_many(self, requests: Sequence[PullRequest]) -> Deferred[list[PullAnswer]]:
        self.batches.append(list(requests))
        if self.error is not None:
            return fail(self.error)
        answers = []
        for r in requests:
            answers.append(self.double.pull(r.client_id, r.limit, r.in_flight).result)  # type: ignore[attr-defined]
        return succeed(answers)


def test_pulls_within_the_delay_share_one_call() -> None:
    clock = Clock()
    source = Batching()
    source.double.plant(item("a", 1), item("b", 2), item("b", 3))
    batcher = PullBatcher(source, clock, delay=0.01)

    first = batcher.pull("a", 10, [])
    clock.advance(0.005)
    second = batcher.pull("b", 1, ["m002"])
    assert source.batches == [] and not first.called

    clock.advance(0.005)

    assert source.batches == [[PullRequest("a", 10), PullRequest("b", 1, ("m002",))]]
    assert first.result == ([item("a", 1)], False)  # type: ignore[attr-defined]
    assert second.result == ([item("b", 3)], False)  # type: ignore[attr-defined]
    third = batcher.pull("c", 5, [])
    clock.advance(BATCH_DELAY)
    assert len(source.batches) == 2 and third.result == ([], False)  # type: ignore[attr-defined]


def test_a_full_batch_goes_out_at_once() -> None:
    clock = Clock()
    source = Batching()
    batcher = PullBatcher(source, clock, delay=1.0, max_batch=3)

    answers = [batcher.pull(f"c{n}", 5, []) for n in range(4)]

    assert [len(batch) for batch in source.batches] == [3]
    assert [answer.called for answer in answers] == [True, True, True, False]
    clock.advance(1.0)
    assert [len(batch) for batch in source.batches] == [3, 1]
    assert answers[3].called
    assert clock.getDelayedCalls() == []


def test_a_failed_batch_fails_every_pull_in_it() -> None:
    clock = Clock()
    source = Batching()
    source.error = RpcUnavailable("no delivery node is known")
    batcher = PullBatcher(source, clock)
    answers = [batcher.pull(f"c{n}", 5, []) for n in range(3)]
    clock.advance(BATCH_DELAY)

    failures: list[Failure] = []
    for answer in answers:
        answer.addErrback(failures.append)
    assert [f.check(RpcUnavailable) for f in failures] == [RpcUnavailable] * 3


def test_a_source_without_pull_many_is_asked_per_client_at_once() -> None:
    clock = Clock()
    double = PendingMessages()
    double.plant(item("a", 1))
    batcher = PullBatcher(double, clock)

    answer = batcher.pull("a", 10, [])

    assert answer.result == ([item("a", 1)], False)  # type: ignore[attr-defined]
    assert clock.getDelayedCalls() == []


# --- through the hub ------------------------------------------------------------------


def batching_harness(**settings: object) -> tuple[Harness, Batching]:
    harness = Harness(**settings)  # type: ignore[arg-type]
    source = Batching(harness.pulls)
    harness.hub.pull_source = source
    return harness, source


def test_logins_of_one_moment_are_pulled_together() -> None:
    harness, source = batching_harness(ack_window=4)
    harness.pulls.plant(item("alice", 1), item("bob", 2), item("bob", 3))
    devices = {}
    for client in ("alice", "bob", "carol"):
        token = harness.issue(client)
        devices[client] = harness.connect()
        devices[client].send(Auth(client, token))
        assert isinstance(devices[client].received()[0], AuthOk)
    assert source.batches == []

    harness.clock.advance(BATCH_DELAY)

    assert source.batches == [
        [PullRequest("alice", 4), PullRequest("bob", 4), PullRequest("carol", 4)]
    ]
    assert devices["alice"].received() == [Push("m001", "title 1", "text")]
    assert devices["bob"].received() == [
        Push("m002", "title 2", "text"),
        Push("m003", "title 3", "text"),
    ]
    assert devices["carol"].received() == []


def test_pings_of_many_clients_are_one_pull_per_heartbeat_and_batch() -> None:
    harness, source = batching_harness(heartbeat=30, idle_timeout=90)
    devices = [harness.login(f"c{n}") for n in range(5)]
    harness.clock.advance(BATCH_DELAY)
    assert len(source.batches) == 1
    harness.pulls.plant(item("c3", 7))

    harness.clock.advance(30)
    for device in devices:
        device.send(PING)
        device.send(PING)  # a second PING within the heartbeat asks nothing more
    harness.clock.advance(BATCH_DELAY)

    assert len(source.batches) == 2
    assert [r.client_id for r in source.batches[1]] == [f"c{n}" for n in range(5)]
    assert devices[3].received() == [PONG, PONG, Push("m007", "title 7", "text")]


def test_a_failed_batch_is_retried_at_the_next_ping() -> None:
    harness, source = batching_harness(heartbeat=30, idle_timeout=90)
    harness.pulls.plant(item("alice", 1))
    source.error = RpcUnavailable("no delivery node answered")
    alice = harness.login("alice")
    harness.clock.advance(BATCH_DELAY)
    assert alice.received() == []

    source.error = None
    harness.clock.advance(30)
    alice.send(PING)
    harness.clock.advance(BATCH_DELAY)

    assert alice.received() == [PONG, Push("m001", "title 1", "text")]
    assert len(source.batches) == 2


def test_a_client_gone_before_its_batch_is_answered_gets_nothing() -> None:
    harness, source = batching_harness()
    harness.pulls.plant(item("alice", 1))
    alice = harness.login("alice")
    alice.lose()

    harness.clock.advance(BATCH_DELAY)

    assert len(source.batches) == 1
    assert alice.received() == []
    assert harness.hub.sessions == {}


class Cutting(Batching):
    """Answers the first request of each batch and says "more" to the rest,
    as delivery does when one AMP value cannot carry every client's items."""

    def pull_many(self, requests: Sequence[PullRequest]) -> Deferred[list[PullAnswer]]:
        self.batches.append(list(requests))
        if self.error is not None:
            return fail(self.error)
        first, *rest = requests
        answer = self.double.pull(first.client_id, first.limit, first.in_flight).result  # type: ignore[attr-defined]
        return succeed([answer] + [([], True) for _ in rest])


def test_a_client_cut_from_a_full_answer_is_pulled_again_at_once() -> None:
    harness = Harness(heartbeat=30, idle_timeout=90)
    source = Cutting(harness.pulls)
    harness.hub.pull_source = source
    harness.pulls.plant(item("alice", 1), item("bob", 2))
    alice, bob = harness.login("alice"), harness.login("bob")

    harness.clock.advance(BATCH_DELAY)

    assert [[r.client_id for r in batch] for batch in source.batches] == [
        ["alice", "bob"],
        ["bob"],
    ]
    assert alice.received() == [Push("m001", "title 1", "text")]
    assert bob.received() == [Push("m002", "title 2", "text")]


def test_clients_cut_from_full_answers_are_asked_again_until_all_are_served() -> None:
    # After a reconnect storm: five backlogs, and room in each answer for one.
    harness = Harness(heartbeat=30, idle_timeout=90)
    source = Cutting(harness.pulls)
    harness.hub.pull_source = source
    names = ["a", "b", "c", "d", "e"]
    harness.pulls.plant(*(item(name, n) for n, name in enumerate(names)))
    devices = [harness.login(name) for name in names]

    for _ in range(10):
        harness.clock.advance(BATCH_DELAY)

    assert [[r.client_id for r in batch] for batch in source.batches] == [
        names[start:] for start in range(5)
    ]
    for n, device in enumerate(devices):
        assert device.received() == [Push(f"m{n:03d}", f"title {n}", "text")]


def test_a_failure_while_asking_again_fails_only_the_clients_cut() -> None:
    class CutThenFail(Cutting):
        def pull_many(self, requests: Sequence[PullRequest]) -> Deferred[list[PullAnswer]]:
            if self.batches:
                self.error = RpcUnavailable("delivery went away")
            return super().pull_many(requests)

    clock = Clock()
    source = CutThenFail()
    source.double.plant(item("a", 1), item("b", 2))
    batcher = PullBatcher(source, clock)
    first, second = batcher.pull("a", 10, []), batcher.pull("b", 10, [])
    failures: list[Failure] = []
    second.addErrback(failures.append)

    clock.advance(BATCH_DELAY)  # "a" is answered, "b" is cut and asked again

    assert first.result == ([item("a", 1)], False)  # type: ignore[attr-defined]
    assert [f.getErrorMessage() for f in failures] == ["delivery went away"]
    assert len(source.batches) == 2


class AlwaysMore(Batching):
    """Nothing, but "more": say, only expired ids that the store fails to clean."""

    def pull_many(self, requests: Sequence[PullRequest]) -> Deferred[list[PullAnswer]]:
        self.batches.append(list(requests))
        return succeed([([], True) for _ in requests])


def test_empty_answers_that_say_more_are_not_pulled_again_and_again() -> None:
    harness = Harness(heartbeat=30, idle_timeout=90)
    source = AlwaysMore()
    harness.hub.pull_source = source
    alice = harness.login("alice")

    for _ in range(5):
        harness.clock.advance(BATCH_DELAY)

    # the first answer, one pull again at once, then nothing until a trigger
    assert len(source.batches) == 2
    harness.clock.advance(30)
    alice.send(PING)
    for _ in range(5):
        harness.clock.advance(BATCH_DELAY)
    assert len(source.batches) == 4
