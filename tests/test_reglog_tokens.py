"""Reglog's token writes, one store call per reactor turn: on a Clock with the
memory store, and on the real reactor against the session's Redis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import Clock

from pigeonpush.reglog.tokens import TokenBatcher
from pigeonpush.store import StoreError, open_store
from pigeonpush.store.memory import MemoryStore
from pigeonpush.store.redis import RedisStore


class CountingMemoryStore(MemoryStore):
    """The memory store, recording each ``issue_tokens`` batch."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.batches: list[list[tuple[str, str]]] = []

    def issue_tokens(self, tokens: Sequence[tuple[str, str]], ttl: float) -> Deferred[None]:
        self.batches.append(list(tokens))
        return super().issue_tokens(tokens, ttl)


def results(waiting: list[Deferred[None]]) -> list[Any]:
    """What each Deferred fired with (a Failure's exception type for an error)."""
    fired: list[Any] = []
    for one in waiting:
        one.addBoth(
            lambda result: fired.append(type(result.value) if hasattr(result, "value") else result)
        )
    return fired


def test_the_tokens_of_one_turn_are_written_together_on_the_next() -> None:
    clock = Clock()
    store = CountingMemoryStore(clock)
    batcher = TokenBatcher(store, clock, 60)
    waiting = [batcher.issue(f"device-{i}", f"token-{i}") for i in range(3)]
    fired = results(waiting)
    assert store.batches == [] and fired == []  # nothing before the turn ends

    clock.advance(0)
    assert store.batches == [[(f"device-{i}", f"token-{i}") for i in range(3)]]
    assert fired == [None, None, None]
    assert [store.token(f"device-{i}").result for i in range(3)] == [f"token-{i}" for i in range(3)]

    # The next turn's tokens are the next batch; none is left over.
    later = results([batcher.issue("device-9", "token-9")])
    clock.advance(0)
    assert store.batches[1:] == [[("device-9", "token-9")]] and later == [None]
    clock.advance(0)
    assert len(store.batches) == 2


def test_the_tokens_expire_after_the_ttl() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    batcher = TokenBatcher(store, clock, 30)
    batcher.issue("device-1", "token-1")
    clock.advance(0)
    clock.advance(29.9)
    assert store.token("device-1").result == "token-1"
    clock.advance(0.2)
    assert store.token("device-1").result is None


def test_a_failed_write_fails_every_request_of_its_batch() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    batcher = TokenBatcher(store, clock, 60)
    fired = results([batcher.issue("device-1", "token-1"), batcher.issue("device-2", "token-2")])
    store.close()
    clock.advance(0)
    assert fired == [StoreError, StoreError]


def test_a_token_the_store_refuses_fails_its_batch_and_writes_nothing() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    batcher = TokenBatcher(store, clock, 60)
    fired = results([batcher.issue("device-1", "token-1"), batcher.issue("device-2", "")])
    clock.advance(0)
    assert fired == [ValueError, ValueError]
    assert store.token("device-1").result is None


def test_a_cancelled_request_leaves_the_others_of_its_batch_alone() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    batcher = TokenBatcher(store, clock, 60)
    gone = batcher.issue("device-1", "token-1")
    kept = batcher.issue("device-2", "token-2")
    fired = results([gone, kept])
    gone.cancel()
    clock.advance(0)
    assert fired == [CancelledError, None]
    assert store.token("device-2").result == "token-2"


@pytest_twisted.ensureDeferred
async def test_a_turn_of_tokens_is_one_pipelined_write_to_redis(redis_url: str) -> None:
    from twisted.internet import reactor

    store = open_store(redis_url, reactor)
    assert isinstance(store, RedisStore)
    calls: list[int] = []
    issue_tokens = store.issue_tokens

    def counted(tokens: Sequence[tuple[str, str]], ttl: float) -> Deferred[None]:
        calls.append(len(tokens))
        return issue_tokens(tokens, ttl)

    store.issue_tokens = counted  # type: ignore[method-assign]
    try:
        batcher = TokenBatcher(store, reactor, 60)
        clients = [f"device-{i}" for i in range(200)]
        await gatherResults([batcher.issue(c, f"{c}-token") for c in clients])
        assert calls == [200]
        assert [await store.token(c) for c in clients] == [f"{c}-token" for c in clients]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_redis_out_of_reach_fails_the_whole_batch_with_store_error() -> None:
    from twisted.internet import reactor

    from pigeonpush_bench.processes import free_port

    store = open_store(f"redis://127.0.0.1:{free_port()}/0", reactor)  # nothing listens
    try:
        batcher = TokenBatcher(store, reactor, 60)
        waiting = [batcher.issue("device-1", "token-1"), batcher.issue("device-2", "token-2")]
        for one in waiting:
            with pytest.raises(StoreError):
                await one
    finally:
        await store.close()
