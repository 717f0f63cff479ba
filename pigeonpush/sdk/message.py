"""What the application's callback receives, and the callback's type."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred


@attrs.frozen(slots=True)
class Message:
    """One pushed notification.

    ``received_at`` is the client clock's time (seconds since the epoch) when
    the PUSH arrived. ``topic`` is the topic it came through (``"*"`` for a
    broadcast), or None for a message sent to the device's clientId.
    """

    message_id: str
    title: str
    text: str
    extras: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    received_at: float = 0.0
    topic: str | None = None


class RetryLater(Exception):
    """Raise it (or fail the callback's Deferred with it) to ask for the
    message again after ``retry_after`` seconds; any other exception leaves
    the delay to the server's backoff."""

    def __init__(self, retry_after: float, reason: str = "") -> None:
        if not retry_after >= 0:
            raise ValueError(f"retry_after must be zero or more seconds, not {retry_after!r}")
        super().__init__(reason or f"retry after {retry_after:g} s")
        self.retry_after = retry_after


#: ``callback(message)``: return None when the message is handled, or a
#: Deferred / coroutine that fires when it is. Raising, or failing the
#: Deferred, means "not handled": the message is NACKed and comes again.
MessageCallback = Callable[[Message], "Deferred[Any] | Coroutine[Any, Any, Any] | None"]
