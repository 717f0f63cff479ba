"""Where the push server's logic and its transports meet.

Three parts, as ``ClientProtocol`` and its ``SessionOwner`` in the SDK:

``Session``
    One device's state from connect to close (attrs, slots): who it is, the
    protocol version it speaks, its PUSHes in flight, the failed ones waiting
    for their redelivery, its pull flags. The hub creates it when a transport
    connects and keeps it in its session table once authenticated.
``Channel``
    What a transport offers the hub: write an encoded frame, enter ACTIVE
    with AUTH_OK, close with a last frame (ERROR, KICK, AUTH_FAIL or none),
    abort, and the peer's address for logs. The TCP ``ServerProtocol`` is
    one; a WebSocket transport is another.
``SessionEvents``
    What the hub offers a transport (``PushHub`` implements it): connected,
    authenticate, acked, nacked, uplinked, pinged, writable, idle timed out,
    disconnected.

Who writes what in a ``Session``: the hub moves ``state`` from AWAITING_AUTH
to AUTHENTICATING (``authenticate``) and to ACTIVE (before
``Channel.activate``), and owns ``client_id``, ``token``, ``version``,
``in_flight``, ``waiting`` and the pull fields. The channel sets CLOSING
when it starts closing (whoever asked), CLOSED before ``disconnected``, and
keeps ``write_paused`` current (calling ``writable`` when an ACTIVE session
may be written again).

What stays in a transport: framing, the frame grammar (which frame is
allowed in which state, NACK only from protocol version 2, PONG for PING,
ERROR from the client), the frame-rate bucket, and the two connection
timers (the auth timeout, then the idle timeout, reset by every frame
received). They depend on how the transport reads (a WebSocket has its own
ping and close handshake), and resetting a timer per frame belongs next to
the loop that reads the frames. A transport takes its settings, clock and
metrics from its factory, never through the hub.

Encoded frames are the wire encoding with its 4-byte length prefix (as
``pigeonpush.wire.codec`` produces them, pre-encoded ones included); a
transport that frames messages itself (WebSocket) drops the prefix.
"""

from __future__ import annotations

import enum
import math
from typing import Protocol

import attrs

from pigeonpush.wire.frames import Auth, Frame, Subscribe, Unsubscribe, Uplink


class State(enum.IntEnum):
    """A session's place in its life; ordered (``< CLOSING``: still open)."""

    AWAITING_AUTH = 0  #: connected, no AUTH yet (the auth timeout runs)
    AUTHENTICATING = 1  #: AUTH received, the store is being asked
    ACTIVE = 2  #: AUTH_OK sent: in the session table (the idle timeout runs)
    CLOSING = 3  #: the last frame (KICK, AUTH_FAIL, ERROR) is out; waiting for the close
    CLOSED = 4  #: the channel is gone


class Channel(Protocol):
    """A device connection as the hub sees it (a transport implements it)."""

    @property
    def peer(self) -> str:
        """The remote address, for log events."""
        ...

    def send(self, data: bytes) -> None:
        """Write one encoded frame (length prefix included); nothing once
        closing. Raises ``EncodeError`` (``FrameTooLarge``) for a frame over
        the connection's limit, writing nothing."""
        ...

    def send_frames(self, frames: list[bytes]) -> None:
        """Write encoded frames in order with one transport call (a burst of
        PUSHes; the hub has checked each against the frame limit); nothing
        once closing."""
        ...

    def activate(self, auth_ok: bytes) -> None:
        """The session is ACTIVE: write the encoded AUTH_OK and watch for
        idleness from now on."""
        ...

    def close(self, frame: Frame | None = None) -> None:
        """Send ``frame`` (AUTH_FAIL, KICK, ERROR) last, if given, and close;
        the session is CLOSING from now on. Idempotent."""
        ...

    def abort(self) -> None:
        """Drop the connection now, without waiting for the peer to read."""
        ...


@attrs.define(slots=True, eq=False)
class Session:
    """One device connection's state (compared by identity)."""

    channel: Channel
    state: State = State.AWAITING_AUTH
    client_id: str | None = None
    token: str | None = None
    #: the protocol version of the session (from AUTH)
    version: int = 0
    #: messageId -> when it was written, for the un-ACKed PUSHes (None until
    #: ACTIVE), oldest first: the hub's ACK timeout checks the first
    in_flight: dict[str, float] | None = None
    #: messageId -> when it may be written again, for PUSHes that failed
    #: (NACK, ACK timeout); out of the window, and pulls skip them (None: none)
    waiting: dict[str, float] | None = None
    #: the channel's socket is full (the client does not read): no PUSH now
    write_paused: bool = False
    #: a pull for this session is on its way
    pulling: bool = False
    #: the last pull (or a refused PUSH) said more messages are pending
    pull_more: bool = False
    #: when the last pull was asked (the clock's seconds)
    last_pull: float = -math.inf
    #: ids a pull wrote (the newest ``PULLED_MEMORY``; None until a pull
    #: writes): the live push of one of them, late behind a backlog, is not
    #: written again after its ACK
    pulled: dict[str, None] | None = None


class SessionEvents(Protocol):
    """What a transport tells the hub (``PushHub`` implements it). Each call
    names the session the transport got from ``connected``."""

    def connected(self, channel: Channel) -> Session:
        """A connection opened: its new session (AWAITING_AUTH)."""
        ...

    def authenticate(self, session: Session, auth: Auth) -> None:
        """The AUTH of a session AWAITING_AUTH: the hub answers through
        ``Channel.activate`` or ``Channel.close(AuthFail(...))``."""
        ...

    def acked(self, session: Session, message_id: str) -> None:
        """An ACK on an ACTIVE session."""
        ...

    def nacked(self, session: Session, message_id: str, retry_after: float) -> None:
        """A NACK on an ACTIVE session (protocol version 2 or later)."""
        ...

    def uplinked(self, session: Session, frame: Uplink) -> None:
        """An UPLINK on an ACTIVE session (protocol version 2 or later): the
        hub answers UPLINK_ACK through ``Channel.send`` once it is stored, or
        closes with ERROR."""
        ...

    def subscription_requested(self, session: Session, frame: Subscribe | Unsubscribe) -> None:
        """A SUBSCRIBE or UNSUBSCRIBE on an ACTIVE session of version 3 or
        later; the hub answers with SUBSCRIPTION."""
        ...

    def pinged(self, session: Session) -> None:
        """A PING on an ACTIVE session (the transport has answered PONG)."""
        ...

    def writable(self, session: Session) -> None:
        """The ACTIVE session's socket drained (``write_paused`` is False again)."""
        ...

    def idle_timed_out(self, session: Session) -> None:
        """The ACTIVE session was silent for the idle timeout; the transport
        closes it after this call."""
        ...

    def disconnected(self, session: Session) -> None:
        """The connection is gone (the session is CLOSED), whatever the cause."""
        ...
