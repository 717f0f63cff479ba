"""Store fixtures: every contract test runs once per backend (memory, one
Redis, a Redis Cluster of 3 masters and 3 replicas).

``store_case`` gives a ``StoreCase``: the backend's name, a fresh store, and
time. The memory store runs on a ``Clock`` that the test advances; the Redis
store runs on the real reactor against the session's Redis (emptied per
test), where expiry tests use real TTLs of about a second and bounded waits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from pigeonpush.ids import MessageIdGenerator
from pigeonpush.store import Message, Notification, Store, open_store
from support.waiting import wait_for

BACKENDS = ("memory", "redis", "redis-cluster")

#: Short TTLs: the memory clock jumps, so it can use realistic ones; Redis
#: waits for real, so about a second.
SHORT_TTL = {"memory": 30.0, "redis": 1.0, "redis-cluster": 1.0}
#: How long a receipt outlives its message's TTL in the contract tests.
RECEIPT_RETENTION = {"memory": 60.0, "redis": 2.0, "redis-cluster": 2.0}
#: The URL fixture of each Redis backend.
URL_FIXTURES = {"redis": "redis_url", "redis-cluster": "redis_cluster_url"}


@attrs.define
class StoreCase:
    backend: str
    store: Store
    #: a TTL short enough to wait out in a test (also the idempotency TTL)
    ttl: float
    reactor: Any
    clock: Clock | None = None
    #: how long a receipt outlives its message (the store's receipt retention)
    retention: float = 60.0
    new_id: Callable[[], str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.new_id = MessageIdGenerator(self.clock if self.clock is not None else self.reactor)

    def now(self) -> float:
        return float((self.clock or self.reactor).seconds())

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: the memory clock jumps, Redis waits for real."""
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            await deferLater(self.reactor, seconds, lambda: None)

    async def eventually(
        self, condition: Callable[[], Awaitable[object]], *, within: float, what: str
    ) -> None:
        """``condition`` holds once ``within`` seconds passed (memory: exactly
        then; Redis: polled, with a margin for the server's expiry cycle)."""
        if self.clock is not None:
            self.clock.advance(within)
            assert await condition(), what
        else:
            await wait_for(condition, timeout=within + 5.0, what=what)

    async def settle(self, deferred: Deferred[Any], timeout: float = 10.0) -> Any:
        """The result of ``deferred``, failing the test if it takes longer than
        ``timeout`` real seconds."""
        if not deferred.called:
            deferred.addTimeout(timeout, self.reactor)
        return await deferred

    def notification(
        self,
        recipients: Sequence[str],
        *,
        ttl: float | None = None,
        key: str | None = None,
        title: str = "Hello",
        text: str = "A message",
        extras: dict[str, str] | None = None,
        message_id: str | None = None,
        collapse_key: str | None = None,
        send_at: float | None = None,
    ) -> Notification:
        now = self.now()
        message = Message(
            message_id=message_id or self.new_id(),
            title=title,
            text=text,
            extras=extras or {},
            created_at=now,
            expires_at=now + (ttl if ttl is not None else 60 * self.ttl),
        )
        return Notification(
            message, tuple(recipients), key, collapse_key=collapse_key, send_at=send_at
        )


@pytest.fixture(params=BACKENDS)
def store_case(request: pytest.FixtureRequest) -> Iterator[StoreCase]:
    from twisted.internet import reactor

    backend: str = request.param
    ttl = SHORT_TTL[backend]
    retention = RECEIPT_RETENTION[backend]
    if backend == "memory":
        clock = Clock()
        # Not at 0: a time of 0 would hide a forgotten "now +".
        clock.advance(1_700_000_000)
        store = open_store("memory:", clock, idempotency_ttl=ttl, receipt_retention=retention)
        case = StoreCase(backend, store, ttl, reactor, clock, retention=retention)
    else:
        url = request.getfixturevalue(URL_FIXTURES[backend])
        store = open_store(url, reactor, idempotency_ttl=ttl, receipt_retention=retention)
        case = StoreCase(backend, store, ttl, reactor, retention=retention)
    try:
        yield case
    finally:
        pytest_twisted.blockon(case.store.close())
