"""``PushGateway`` over AMP: a push server reached at its RPC address.

A batch is split by ``encode_batches`` into values that fit AMP; the chunks go
out on the pool's one connection to that server back to back (AMP keeps their
order), and the answers are joined into one status per item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed

from pigeonpush.rpc import Kick, Push, PushItem, PushStatus, encode_batches
from pigeonpush.rpcpool import AmpPool


class BadAnswer(Exception):
    """A server's answer that does not match the request."""


class AmpPushGateway:
    """One push server, over the pool's reusable connection to ``address``."""

    __slots__ = ("_address", "_pool")

    def __init__(self, pool: AmpPool, address: str) -> None:
        self._pool = pool
        self._address = address

    def push(self, items: Sequence[PushItem]) -> Deferred[list[PushStatus]]:
        if not items:
            return succeed([])
        chunks = list(encode_batches(items))
        calls = [self._chunk(count, value) for count, value in chunks]
        joined: Deferred[list[list[PushStatus]]] = gatherResults(calls, consumeErrors=True)
        return joined.addCallbacks(
            lambda parts: [status for part in parts for status in part],
            lambda failure: failure.value.subFailure,
        )

    def _chunk(self, count: int, value: bytes) -> Deferred[list[PushStatus]]:
        def statuses(answer: dict[str, Any]) -> list[PushStatus]:
            results: bytes = answer["results"]
            if len(results) != count:
                raise BadAnswer(
                    f"{self._address} answered {len(results)} statuses for {count} items"
                )
            try:
                return [PushStatus(code) for code in results]
            except ValueError as e:
                raise BadAnswer(f"{self._address} answered an unknown status: {e}") from e

        return self._pool.call(self._address, Push, batch=value).addCallback(statuses)

    def kick(self, client_id: str, reason: int) -> Deferred[bool]:
        return self._pool.call(self._address, Kick, clientId=client_id, reason=reason).addCallback(
            lambda answer: bool(answer["kicked"])
        )


class AmpGateways:
    """``gateway_for(address)`` for the router: one gateway object per address."""

    __slots__ = ("_gateways", "_pool")

    def __init__(self, pool: AmpPool) -> None:
        self._pool = pool
        self._gateways: dict[str, AmpPushGateway] = {}

    def __call__(self, address: str) -> AmpPushGateway:
        gateway = self._gateways.get(address)
        if gateway is None:
            gateway = self._gateways[address] = AmpPushGateway(self._pool, address)
        return gateway
