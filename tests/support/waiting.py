"""Bounded waits: poll a condition on the reactor until it holds or time runs out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater


async def wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
    reactor: IReactorTime | None = None,
) -> Any:
    """Return the first truthy value of ``condition()`` (which may be async)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor  # type: ignore[assignment]
    assert reactor is not None
    deadline = reactor.seconds() + timeout
    while True:
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if reactor.seconds() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout}s")
        await deferLater(reactor, interval, lambda: None)
