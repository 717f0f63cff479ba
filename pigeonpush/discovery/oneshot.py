"""A result that many callers wait for, each through a Deferred of its own.

Handing one Deferred to several callers lets the first one's callbacks change
what the others see; a OneShot keeps the result and gives each waiter a fresh
Deferred instead.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

T = TypeVar("T")


class OneShot(Generic[T]):
    __slots__ = ("_fired", "_result", "_waiters")

    def __init__(self) -> None:
        self._fired = False
        self._result: T | Failure | None = None
        self._waiters: list[Deferred[T]] = []

    @property
    def fired(self) -> bool:
        return self._fired

    def when_fired(self) -> Deferred[T]:
        """A Deferred that fires with the result (at once if it is known)."""
        if self._fired:
            if isinstance(self._result, Failure):
                return fail(self._result)
            return succeed(self._result)  # type: ignore[arg-type]
        waiter: Deferred[T] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def fire(self, result: T | Failure) -> None:
        """Set the result (only the first call counts) and wake every waiter."""
        if self._fired:
            return
        self._fired = True
        self._result = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
