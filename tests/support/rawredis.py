"""Redis as the tests see it from outside the store: txredisapi's own client,
strings as Redis has them (the ``raw`` fixture of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pigeonpush.store.address import parse_redis_url


class Raw:
    """Redis as seen from outside the store (txredisapi, strings as they are)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def __call__(self, *command: str) -> Any:
        return await self.connection.execute_command(*command)

    async def hash(self, key: str) -> dict[str, str]:
        flat = await self("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))


@asynccontextmanager
async def raw_redis(redis_url: str) -> AsyncIterator[Raw]:
    """A connection of its own to the Redis at ``redis_url``."""
    import txredisapi

    address = parse_redis_url(redis_url)
    connection = await txredisapi.Connection(
        address.host, address.port, dbid=address.db, reconnect=False, convertNumbers=False
    )
    try:
        yield Raw(connection)
    finally:
        await connection.disconnect()
