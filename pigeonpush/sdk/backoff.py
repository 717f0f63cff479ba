"""Reconnection delays: exponential growth, capped, with full jitter.

Full jitter (a delay drawn uniformly between zero and the exponential ceiling)
spreads the clients of a server that just died over the whole window, so they
do not come back as one thundering herd. The policy has the shape of Twisted's
``ClientService`` ``retryPolicy``: the number of the attempt in, seconds out.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

#: A retry policy: attempt number (1 for the first retry) -> seconds to wait.
BackoffPolicy = Callable[[int], float]


def full_jitter(
    initial: float = 1.0,
    maximum: float = 60.0,
    factor: float = 2.0,
    random: Callable[[], float] = _random.random,
) -> BackoffPolicy:
    """A policy whose delay for attempt ``n`` lies in
    ``[0, min(maximum, initial * factor ** (n - 1)))``.

    ``random`` returns a float in ``[0, 1)`` (tests pass a fixed one).
    """
    if initial <= 0:
        raise ValueError(f"initial must be positive, not {initial!r}")
    if maximum < initial:
        raise ValueError(f"maximum ({maximum!r}) must be at least initial ({initial!r})")
    if factor < 1:
        raise ValueError(f"factor must be at least 1, not {factor!r}")

    def policy(attempt: int) -> float:
        # Past ~1000 doublings float arithmetic overflows; the cap was reached
        # long before, so stop growing there.
        exponent = min(max(attempt, 1) - 1, 1000)
        try:
            ceiling = min(maximum, initial * factor**exponent)
        except OverflowError:
            ceiling = maximum
        return ceiling * random()

    return policy
