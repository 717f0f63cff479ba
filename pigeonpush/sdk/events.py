"""What a PushClient tells its observers (``PushClient.on_event``)."""

from __future__ import annotations

import attrs

from pigeonpush.sdk.errors import PushClientError


@attrs.frozen(slots=True)
class Connected:
    """A TCP connection to ``server`` is up; AUTH is on its way."""

    server: str


@attrs.frozen(slots=True)
class Authenticated:
    """The server accepted AUTH; messages flow. ``heartbeat`` is the agreed interval."""

    server: str
    heartbeat: float


@attrs.frozen(slots=True)
class Disconnected:
    """The connection to ``server`` ended; ``reason`` says why, in words.

    ``authenticated`` tells whether the session had reached AUTH_OK. Unless the
    client is stopping or gave up, it reconnects by itself.
    """

    server: str
    reason: str
    authenticated: bool


@attrs.frozen(slots=True)
class GaveUp:
    """The client stopped trying; ``error`` says why. ``PushClient.start()`` tries again."""

    error: PushClientError


@attrs.frozen(slots=True)
class MessagesMissed:
    """Some messages of ``topic`` (``"*"``: broadcast) will never come: the
    server's log of it no longer holds everything this device had not
    received (it was offline while more were sent than the log keeps, or the
    store lost the log). The application may resynchronise from its own
    server. Told once per loss (protocol version 3)."""

    topic: str


ClientEvent = Connected | Authenticated | Disconnected | GaveUp | MessagesMissed
