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


ClientEvent = Connected | Authenticated | Disconnected | GaveUp
