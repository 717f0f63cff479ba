"""One device connection: a thin state machine over ``FrameProtocol``.

The connection keeps only what is its own (who it is, what it has in flight,
whether its socket is full, its one timer); the decisions live in the hub.

States::

    AWAITING_AUTH --AUTH--> AUTHENTICATING --ok--> ACTIVE --> CLOSING --> CLOSED
          |                       |                   (KICK, ERROR, idle)
          +-- timeout / other ----+-- AUTH_FAIL --------------^

Before AUTH_OK only one AUTH may be sent; anything else (and a second AUTH) is
ERROR UNEXPECTED. An ERROR from the client closes the connection without an
answer.

Reading stops for two reasons, and resumes when neither holds: the client does
not read (the transport paused the connection as its producer: answers would
only pile up), and the client sends frames faster than ``frame_rate`` (a token
bucket of ``frame_burst`` on the hub's clock; an ACK of a PUSH in flight is
free). Frames already received wait in the buffer meanwhile. A connection
still over the rate after ``frame_abuse_time`` seconds gets ERROR RATE_LIMITED.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from pigeonpush.logsafe import untrusted
from pigeonpush.server import metrics
from pigeonpush.wire.codec import ENCODED_PONG, DecodeError, ack_message_id
from pigeonpush.wire.frames import (
    NACK_VERSION,
    Ack,
    Auth,
    AuthFail,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    FrameType,
    Kick,
    Nack,
    Ping,
    Pong,
    Push,
    Uplink,
    UplinkAck,
)
from pigeonpush.wire.protocol import FrameProtocol

if TYPE_CHECKING:
    from pigeonpush.server.hub import PushHub


class State(enum.IntEnum):
    AWAITING_AUTH = 0  #: connected, no AUTH yet (the auth timeout runs)
    AUTHENTICATING = 1  #: AUTH received, the store is being asked
    ACTIVE = 2  #: AUTH_OK sent: in the channel table (the idle timeout runs)
    CLOSING = 3  #: the last frame (KICK, AUTH_FAIL, ERROR) is out; waiting for the close
    CLOSED = 4  #: connectionLost ran


_ACTIVE = State.ACTIVE
_AWAITING_AUTH = State.AWAITING_AUTH
_ACK_BYTE = bytes((FrameType.ACK,))
_CLOSING = State.CLOSING
#: Shortest pause of reading for the frame rate (fewer timers under a flood).
MIN_THROTTLE = 0.05


@implementer(IPushProducer)
class ServerProtocol(FrameProtocol):
    """A device connection. The transport's producer signals land in
    ``write_paused`` (``pauseProducing``/``resumeProducing``): a client whose
    socket is full gets no more PUSHes, and is not read, until it drains."""

    __slots__ = (
        "client_id",
        "hub",
        "in_flight",
        "last_pull",
        "pull_more",
        "pulling",
        "state",
        "throttle",
        "throttled_since",
        "timer",
        "token",
        "tokens",
        "tokens_at",
        "version",
        "waiting",
        "write_paused",
    )

    def __init__(self, hub: PushHub) -> None:
        super().__init__(hub.settings.max_frame, clock=hub.clock)
        self.hub = hub
        self.state = _AWAITING_AUTH
        self.client_id: str | None = None
        self.token: str | None = None
        #: messageId -> when it was written, for the un-ACKed PUSHes (None until
        #: ACTIVE), oldest first: the hub's ACK timeout checks the first
        self.in_flight: dict[str, float] | None = None
        #: messageId -> when it may be written again, for PUSHes that failed
        #: (NACK, ACK timeout); out of the window, and pulls skip them (None: none)
        self.waiting: dict[str, float] | None = None
        #: the protocol version of the session (from AUTH)
        self.version = 0
        self.write_paused = False
        self.pulling = False
        #: the last pull said more messages are pending
        self.pull_more = False
        self.last_pull = float("-inf")
        #: the one timer: the auth timeout, then (once ACTIVE) the idle timeout
        self.timer: IDelayedCall | None = None
        #: the frame rate's token bucket: tokens left at ``tokens_at``
        self.tokens = float(hub.settings.frame_burst)
        self.tokens_at = hub.clock.seconds()
        #: resumes reading once the bucket has a token again (None: not throttled)
        self.throttle: IDelayedCall | None = None
        #: since when every frame found the bucket empty (None: it did not)
        self.throttled_since: float | None = None

    # --- connection ---------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)  # Nagle + delayed ACKs would hold PUSHes back for ~40 ms
        transport.registerProducer(self, True)
        self.timer = self.hub.clock.callLater(self.hub.settings.auth_timeout, self._timed_out)
        self.hub.connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._cancel_throttle()
        self.state = State.CLOSED
        self.hub.disconnected(self)

    @property
    def peer(self) -> str:
        """The remote address, for log events."""
        return self._peer()

    def _timed_out(self) -> None:
        self.timer = None
        if self.state == _ACTIVE:
            self.hub.idle_timed_out(self)
            self.closeWith(None)
        else:
            self.protocolError(
                ErrorCode.TIMEOUT,
                f"AUTH did not come within {self.hub.settings.auth_timeout:g} s",
            )

    def activate(self, client_id: str, token: str, auth_ok: bytes, version: int) -> None:
        """Enter ACTIVE: send the (pre-encoded) AUTH_OK and switch the timer
        from the auth timeout to the idle timeout."""
        self.client_id = client_id
        self.token = token
        self.version = version
        self.in_flight = {}
        self.state = _ACTIVE
        self.sendEncoded(auth_ok)
        self._restart_timer()

    def _restart_timer(self) -> None:
        timer = self.timer
        if timer is not None and timer.active():
            timer.reset(self.hub.idle_timeout)
        else:
            self.timer = self.hub.clock.callLater(self.hub.idle_timeout, self._timed_out)

    def closeWith(self, frame: Frame | None = None) -> None:
        """Send ``frame`` last and close. The producer is unregistered first,
        since a transport does not close while a paused producer is registered;
        the auth or idle timer gives way to the base class's close grace."""
        if not self.closing:
            if self.state < _CLOSING:
                self.state = _CLOSING
            timer, self.timer = self.timer, None
            if timer is not None and timer.active():
                timer.cancel()
            self._cancel_throttle()
            transport: Any = self.transport
            if transport is not None:
                transport.unregisterProducer()
        super().closeWith(frame)

    # --- frames ------------------------------------------------------------------

    def stringReceived(self, string: bytes) -> None:
        """An ACK of an ACTIVE connection (the frame a busy server reads most)
        is read without building an ``Ack``; every other frame, and an ACK that
        is not well formed (decoded again to be explained), takes the general
        path."""
        if self.state == _ACTIVE and string[:1] == _ACK_BYTE:
            try:
                message_id = ack_message_id(string)
            except DecodeError:
                pass
            else:
                in_flight = self.in_flight
                asked = in_flight is not None and message_id in in_flight
                self.handle(self._acked, message_id, "Ack")
                if not asked:
                    self._spend(1.0)
                return
        super().stringReceived(string)
        self._spend(1.0)

    # --- the frame rate ----------------------------------------------------------

    def _spend(self, cost: float) -> None:
        """A frame came: take its tokens. When the bucket has none left for
        the next frame, stop reading until it has (the rest of what was
        received waits in the buffer); when that has lasted
        ``frame_abuse_time``, close with ERROR RATE_LIMITED."""
        if self.closing:
            return
        settings = self.hub.settings
        now = self.hub.clock.seconds()
        tokens = self.tokens + (now - self.tokens_at) * settings.frame_rate
        if tokens > settings.frame_burst:
            tokens = settings.frame_burst
        tokens -= cost
        self.tokens = tokens
        self.tokens_at = now
        if tokens >= 1.0:
            self.throttled_since = None
            return
        since = self.throttled_since
        if since is None:
            self.throttled_since = now
        elif now - since >= settings.frame_abuse_time:
            metrics.RATE_LIMITED.labels(action="closed").inc()
            self.protocolError(
                ErrorCode.RATE_LIMITED,
                f"over {settings.frame_rate:g} frames per second for "
                f"{settings.frame_abuse_time:g} s",
            )
            return
        if self.throttle is None:
            metrics.RATE_LIMITED.labels(action="paused").inc()
            wait = max((1.0 - tokens) / settings.frame_rate, MIN_THROTTLE)
            self.throttle = self.hub.clock.callLater(wait, self._unthrottle)
            self._reading()

    def _unthrottle(self) -> None:
        self.throttle = None
        self._reading()

    def _cancel_throttle(self) -> None:
        throttle, self.throttle = self.throttle, None
        if throttle is not None and throttle.active():
            throttle.cancel()

    def _reading(self) -> None:
        """Read while the client reads its answers and keeps to the frame
        rate; else let the transport stop reading and leave what was
        received in the buffer. Resuming handles that first."""
        stop = self.write_paused or self.throttle is not None
        if stop == self.paused or self.closing:
            return
        self.paused = stop
        transport: Any = self.transport
        if stop:
            transport.pauseProducing()
        else:
            transport.resumeProducing()
            self.dataReceived(b"")

    def _acked(self, message_id: str) -> None:
        timer = self.timer
        if timer is not None:
            timer.reset(self.hub.idle_timeout)
        self.hub.acked(self, message_id)

    def frameReceived(self, frame: Frame) -> None:
        kind = type(frame)
        if self.state == _ACTIVE:
            timer = self.timer
            if timer is not None:
                timer.reset(self.hub.idle_timeout)
            # (ACKs never get here while ACTIVE: stringReceived reads them.)
            if kind is Ping:
                self.sendEncoded(ENCODED_PONG)
                self.hub.pinged(self)
                return
            if kind is Nack:
                if self.version < NACK_VERSION:
                    self.protocolError(
                        ErrorCode.UNEXPECTED,
                        f"NACK is not allowed in protocol version {self.version}",
                    )
                    return
                self.hub.nacked(self, frame.message_id, frame.retry_after)  # type: ignore[union-attr]
                return
            if kind is Uplink:
                self.hub.uplinked(self, frame)  # type: ignore[arg-type]
                return
        elif kind is Auth and self.state == _AWAITING_AUTH:
            self.state = State.AUTHENTICATING
            self.hub.authenticate(self, frame)  # type: ignore[arg-type]
            return
        if kind is Error:
            skipped = self.hub.client_errors_log.allow()
            if skipped is not None:
                self.log.info(
                    "Client {client_id} at {peer} sent ERROR {code}: {text} "
                    "({skipped} client ERRORs not logged before this one)",
                    client_id=self.client_id,
                    peer=self.peer,
                    code=frame.code,  # type: ignore[union-attr]
                    text=untrusted(frame.text),  # type: ignore[union-attr]
                    skipped=skipped,
                )
            self.closeWith(None)
            return
        self.protocolError(
            ErrorCode.UNEXPECTED,
            f"{_NAMES[kind]} is not allowed {_WHEN[self.state]}",
        )

    def logProtocolError(self, code: ErrorCode, text: str) -> None:
        """The base class's warning, throttled across the server's connections
        (whoever sends garbage decides how often this runs)."""
        skipped = self.hub.protocol_errors_log.allow()
        if skipped is not None:
            self.log.warn(
                "Closing connection from {peer} with ERROR {code.name}: {text} "
                "({skipped} protocol errors not logged before this one)",
                peer=self._peer(),
                code=code,
                text=untrusted(text),
                skipped=skipped,
            )

    # --- IPushProducer: the transport's write buffer ---------------------------

    def pauseProducing(self) -> None:
        # The client does not read: stop reading it too (the frames already
        # received included), so that its PINGs cannot pile up PONGs in the
        # buffer either.
        self.write_paused = True
        self._reading()

    def resumeProducing(self) -> None:
        self.write_paused = False
        if self.state == _ACTIVE:
            self.hub.writable(self)
        self._reading()

    def stopProducing(self) -> None:
        self.write_paused = True


_NAMES: dict[type, str] = {
    Auth: "AUTH",
    AuthOk: "AUTH_OK",
    AuthFail: "AUTH_FAIL",
    Ping: "PING",
    Pong: "PONG",
    Push: "PUSH",
    Ack: "ACK",
    Kick: "KICK",
    Error: "ERROR",
    Nack: "NACK",
    Uplink: "UPLINK",
    UplinkAck: "UPLINK_ACK",
}
_WHEN = {
    State.AWAITING_AUTH: "before AUTH",
    State.AUTHENTICATING: "before AUTH_OK",
    State.ACTIVE: "after AUTH_OK",
    State.CLOSING: "while closing",
    State.CLOSED: "after the close",
}


class ServerProtocolFactory(Factory):
    """Builds a ``ServerProtocol`` per device connection of one hub."""

    def __init__(self, hub: PushHub) -> None:
        self.hub = hub

    def buildProtocol(self, addr: Any) -> ServerProtocol:
        return ServerProtocol(self.hub)
