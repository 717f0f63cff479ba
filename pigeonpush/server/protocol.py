"""The TCP transport of the push server: a device connection over
``FrameProtocol``, and one ``Channel`` (``pigeonpush.server.session``).

The connection keeps only what is its own: the frame grammar, its socket's
producer state, the frame-rate bucket, and its deadline (the auth timeout,
then the idle timeout), which the factory's ``DeadlineWheel`` watches on one
timer for all its connections. Everything else is the ``Session`` it gets from the
hub when it connects, and the decisions live in the hub, which it reaches
only through ``SessionEvents``. Its settings, clock, metrics sink and log
throttles come from its factory.

States (``session.State``)::

    AWAITING_AUTH --AUTH--> AUTHENTICATING --ok--> ACTIVE --> CLOSING --> CLOSED
          |                       |                   (KICK, ERROR, idle)
          +-- timeout / other ----+-- AUTH_FAIL --------------^

Before AUTH_OK only one AUTH may be sent; anything else (and a second AUTH) is
ERROR UNEXPECTED. An ERROR from the client closes the connection without an
answer.

Reading stops for two reasons, and resumes when neither holds: the client does
not read (the transport paused the connection as its producer: answers would
only pile up), and the client sends frames faster than ``frame_rate`` (a token
bucket of ``frame_burst`` on the factory's clock; an ACK of a PUSH in flight is
free). Frames already received wait in the buffer meanwhile. A connection
still over the rate after ``frame_abuse_time`` seconds gets ERROR RATE_LIMITED.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from pigeonpush.logsafe import LogThrottle, untrusted
from pigeonpush.server.deadlines import Bucket, DeadlineWheel, wheel_resolution
from pigeonpush.server.metrics import PROMETHEUS, MetricsSink
from pigeonpush.server.sendnow import write_frames, write_now
from pigeonpush.server.session import Channel, Session, SessionEvents, State
from pigeonpush.server.settings import LOG_BURST, LOG_INTERVAL, ServerSettings
from pigeonpush.wire.codec import ENCODED_PONG, PREFIX_BYTES, DecodeError, ack_message_id
from pigeonpush.wire.frames import (
    NACK_VERSION,
    TOPIC_VERSION,
    UPLINK_VERSION,
    Ack,
    Auth,
    AuthFail,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    FrameType,
    Kick,
    Missed,
    Nack,
    Ping,
    Pong,
    Push,
    Subscribe,
    Subscription,
    Unsubscribe,
    Uplink,
    UplinkAck,
)
from pigeonpush.wire.protocol import FrameProtocol

__all__ = ["ServerProtocol", "ServerProtocolFactory", "State"]

_ACTIVE = State.ACTIVE
_AWAITING_AUTH = State.AWAITING_AUTH
_ACK_BYTE = bytes((FrameType.ACK,))
_CLOSING = State.CLOSING
#: Shortest pause of reading for the frame rate (fewer timers under a flood).
MIN_THROTTLE = 0.05
#: The session of a connection not made yet (CLOSED, so nothing changes it).
_UNCONNECTED = Session(cast(Channel, None), State.CLOSED)


@implementer(IPushProducer)
class ServerProtocol(FrameProtocol):
    """A device connection, the TCP ``Channel`` of its session. The
    transport's producer signals land in ``session.write_paused``
    (``pauseProducing``/``resumeProducing``): a client whose socket is full
    gets no more PUSHes, and is not read, until it drains."""

    __slots__ = (
        "deadline",
        "deadline_bucket",
        "hub",
        "idle_timeout",
        "logs",
        "metrics",
        "session",
        "settings",
        "throttle",
        "throttled_since",
        "tokens",
        "tokens_at",
    )

    clock: IReactorTime

    def __init__(self, factory: ServerProtocolFactory) -> None:
        settings = factory.settings
        super().__init__(settings.max_frame, clock=factory.clock)
        self.factory = factory
        self.hub = factory.hub
        self.settings = settings
        self.metrics = factory.metrics
        self.logs = factory
        self.idle_timeout = settings.idle_timeout
        #: the hub's session of this connection (from connectionMade on)
        self.session: Session = _UNCONNECTED
        #: when the auth timeout, then (once ACTIVE) the idle timeout, ends:
        #: a frame or ACK moves it on (the factory's wheel looks at it)
        self.deadline = 0.0
        #: the wheel's bucket of this connection (None: not watched)
        self.deadline_bucket: Bucket | None = None
        #: the frame rate's token bucket: tokens left at ``tokens_at``
        self.tokens = float(settings.frame_burst)
        self.tokens_at = factory.clock.seconds()
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
        self.session = self.hub.connected(self)
        transport.registerProducer(self, True)
        self.deadline = self.clock.seconds() + self.settings.auth_timeout
        self.factory.deadlines.watch(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.factory.deadlines.forget(self)
        self._cancel_throttle()
        session = self.session
        if session is _UNCONNECTED:
            return
        session.state = State.CLOSED
        self.hub.disconnected(session)

    @property
    def peer(self) -> str:
        """The remote address, for log events."""
        return self._peer()

    def deadline_passed(self) -> None:
        """The wheel's call: the auth or idle timeout ended."""
        if self.session.state == _ACTIVE:
            self.hub.idle_timed_out(self.session)
            self.closeWith(None)
        else:
            self.protocolError(
                ErrorCode.TIMEOUT,
                f"AUTH did not come within {self.settings.auth_timeout:g} s",
            )

    # --- Channel --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """``Channel.send``: write an encoded frame (the PUSH loop's one call),
        straight to the socket when the transport holds nothing unsent."""
        if self.closing or len(data) - PREFIX_BYTES > self.MAX_LENGTH:
            self.sendEncoded(data)  # nothing, or FrameTooLarge
        else:
            write_now(self.transport, data)

    def send_frames(self, frames: list[bytes]) -> None:
        """``Channel.send_frames``: one write, straight to the socket as for
        ``send``, or one ``writeSequence`` (a WebSocket's transport makes a
        message of each frame)."""
        if not self.closing:
            write_frames(self.transport, frames)

    def activate(self, auth_ok: bytes) -> None:
        """``Channel.activate``: send the (pre-encoded) AUTH_OK and switch the
        deadline from the auth timeout to the idle timeout."""
        self.sendEncoded(auth_ok)
        if not self.closing:
            self.deadline = self.clock.seconds() + self.idle_timeout
            self.factory.deadlines.watch(self)

    def close(self, frame: Frame | None = None) -> None:
        """``Channel.close``."""
        self.closeWith(frame)

    def abort(self) -> None:
        """``Channel.abort``: drop the TCP connection now."""
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    def closeWith(self, frame: Frame | None = None) -> None:
        """Send ``frame`` last and close. The producer is unregistered first,
        since a transport does not close while a paused producer is registered;
        the auth or idle timeout gives way to the base class's close grace."""
        if not self.closing:
            session = self.session
            if session.state < _CLOSING:
                session.state = _CLOSING
            self.factory.deadlines.forget(self)
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
        session = self.session
        if session.state == _ACTIVE and string[:1] == _ACK_BYTE:
            try:
                message_id = ack_message_id(string)
            except DecodeError:
                pass
            else:
                in_flight = session.in_flight
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
        settings = self.settings
        now = self.clock.seconds()
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
            self.metrics.rate_limited("closed")
            self.protocolError(
                ErrorCode.RATE_LIMITED,
                f"over {settings.frame_rate:g} frames per second for "
                f"{settings.frame_abuse_time:g} s",
            )
            return
        if self.throttle is None:
            self.metrics.rate_limited("paused")
            wait = max((1.0 - tokens) / settings.frame_rate, MIN_THROTTLE)
            self.throttle = self.clock.callLater(wait, self._unthrottle)
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
        stop = self.session.write_paused or self.throttle is not None
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
        self.deadline = self.clock.seconds() + self.idle_timeout
        self.hub.acked(self.session, message_id)

    def frameReceived(self, frame: Frame) -> None:
        kind = type(frame)
        session = self.session
        state = session.state
        if state == _ACTIVE:
            self.deadline = self.clock.seconds() + self.idle_timeout
            # (ACKs never get here while ACTIVE: stringReceived reads them.)
            if kind is Ping:
                self.sendEncoded(ENCODED_PONG)
                self.hub.pinged(session)
                return
            if kind is Nack:
                if session.version < NACK_VERSION:
                    self.protocolError(
                        ErrorCode.UNEXPECTED,
                        f"NACK is not allowed in protocol version {session.version}",
                    )
                    return
                self.hub.nacked(session, frame.message_id, frame.retry_after)  # type: ignore[union-attr]
                return
            if kind is Uplink:
                if session.version < UPLINK_VERSION:
                    self.protocolError(
                        ErrorCode.UNEXPECTED,
                        f"UPLINK is not allowed in protocol version {session.version}",
                    )
                    return
                self.hub.uplinked(session, frame)  # type: ignore[arg-type]
                return
            if kind is Subscribe or kind is Unsubscribe:
                if session.version < TOPIC_VERSION:
                    self.protocolError(
                        ErrorCode.UNEXPECTED,
                        f"{_NAMES[kind]} is not allowed in protocol version {session.version}",
                    )
                    return
                self.hub.subscription_requested(session, frame)  # type: ignore[arg-type]
                return
        elif kind is Auth and state == _AWAITING_AUTH:
            self.hub.authenticate(session, frame)  # type: ignore[arg-type]
            return
        if kind is Error:
            skipped = self.logs.client_errors_log.allow()
            if skipped is not None:
                self.log.info(
                    "Client {client_id} at {peer} sent ERROR {code}: {text} "
                    "({skipped} client ERRORs not logged before this one)",
                    client_id=session.client_id,
                    peer=self.peer,
                    code=frame.code,  # type: ignore[union-attr]
                    text=untrusted(frame.text),  # type: ignore[union-attr]
                    skipped=skipped,
                )
            self.closeWith(None)
            return
        self.protocolError(
            ErrorCode.UNEXPECTED,
            f"{_NAMES[kind]} is not allowed {_WHEN[state]}",
        )

    def logProtocolError(self, code: ErrorCode, text: str) -> None:
        """The base class's warning, throttled across the server's connections
        (whoever sends garbage decides how often this runs)."""
        skipped = self.logs.protocol_errors_log.allow()
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
        self.session.write_paused = True
        self._reading()

    def resumeProducing(self) -> None:
        session = self.session
        session.write_paused = False
        if session.state == _ACTIVE:
            self.hub.writable(session)
        self._reading()

    def stopProducing(self) -> None:
        self.session.write_paused = True


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
    Missed: "MISSED",
    Subscribe: "SUBSCRIBE",
    Unsubscribe: "UNSUBSCRIBE",
    Subscription: "SUBSCRIPTION",
}
_WHEN = {
    State.AWAITING_AUTH: "before AUTH",
    State.AUTHENTICATING: "before AUTH_OK",
    State.ACTIVE: "after AUTH_OK",
    State.CLOSING: "while closing",
    State.CLOSED: "after the close",
}


class ServerProtocolFactory(Factory):
    """Builds a ``ServerProtocol`` per device connection of one hub, and
    holds what its connections share: the settings they enforce, the clock
    of their timers, the wheel of their deadlines, the metrics sink, and the
    log throttles of what peers can repeat at will (client ERRORs, protocol
    errors)."""

    def __init__(
        self,
        hub: SessionEvents,
        settings: ServerSettings,
        clock: IReactorTime,
        *,
        metrics: MetricsSink = PROMETHEUS,
    ) -> None:
        self.hub = hub
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.client_errors_log = LogThrottle(clock, LOG_INTERVAL, LOG_BURST)
        self.protocol_errors_log = LogThrottle(clock, LOG_INTERVAL, LOG_BURST)
        #: the auth and idle timeouts of every connection: one timer
        self.deadlines = DeadlineWheel(
            clock, wheel_resolution(settings.auth_timeout, settings.idle_timeout)
        )

    def buildProtocol(self, addr: Any) -> ServerProtocol:
        return ServerProtocol(self)

    def stop_timers(self) -> None:
        """No more auth or idle timeouts (the server is stopping)."""
        self.deadlines.stop()
