"""Shared state: the store interface, its values, and ``open_store``.

``open_store("memory:", reactor)`` gives the in-process backend
(pigeon-standalone); ``open_store("redis://host:6379/0", reactor)`` the Redis
one, shared by every node. See docs/data-model.rst.
"""

from __future__ import annotations

from typing import Any

from pigeonpush.store.interface import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_RECEIPT_RETENTION,
    Store,
    StoreError,
)
from pigeonpush.store.model import (
    Accepted,
    CancelResult,
    DeadUplink,
    DeviceRecord,
    DropReason,
    Message,
    Notification,
    QueueEntry,
    Receipt,
    RecipientState,
    Uplink,
    UplinkStored,
)

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL",
    "DEFAULT_RECEIPT_RETENTION",
    "Accepted",
    "CancelResult",
    "DeadUplink",
    "DeviceRecord",
    "DropReason",
    "Message",
    "Notification",
    "QueueEntry",
    "Receipt",
    "RecipientState",
    "Store",
    "StoreError",
    "Uplink",
    "UplinkStored",
    "open_store",
]


def open_store(
    url: str,
    reactor: Any,
    *,
    idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
    receipt_retention: float = DEFAULT_RECEIPT_RETENTION,
) -> Store:
    """The store ``url`` names: ``memory:`` or
    ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS, with
    ``?ssl_ca_certs=PATH`` to trust a private authority), or a Redis Cluster:
    ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (seed
    nodes; ``rediss+cluster://`` for TLS). The Redis store
    connects on first use. ValueError says what is wrong with a bad URL.
    ``receipt_retention``: how long a receipt stays readable after its
    message's TTL (the body is gone at the TTL; the states are kept)."""
    if not isinstance(url, str) or not url:
        raise ValueError(
            "a store URL is needed: memory:, redis://[:password@]host:port/db or redis+cluster://host:port,..."
        )
    if url == "memory:" or url == "memory://":
        from pigeonpush.store.memory import MemoryStore

        return MemoryStore(
            reactor, idempotency_ttl=idempotency_ttl, receipt_retention=receipt_retention
        )
    from pigeonpush.store.address import parse_store_address
    from pigeonpush.store.redis import RedisStore

    return RedisStore(
        parse_store_address(url),
        reactor,
        idempotency_ttl=idempotency_ttl,
        receipt_retention=receipt_retention,
    )
