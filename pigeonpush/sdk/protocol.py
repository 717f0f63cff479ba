"""One connection to a push server, from AUTH to close.

The seed adds an ``AuthHandler`` to each new channel's pipeline and removes it
after a successful AUTH. Here the connection's frame handler is swapped the
same way: ``_before_auth`` accepts only the answer to AUTH (anything else is a
protocol error, and the client sends nothing but AUTH), then ``_online`` takes
PUSH, PONG and KICK. The decisions (what a PUSH means, where to reconnect)
belong to the session's owner, a ``PushClient``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Protocol

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.tls import describe_failure
from pigeonpush.wire.codec import (
    DEFAULT_MAX_FRAME,
    ENCODED_PING,
    ENCODED_PONG,
    EncodeError,
    encode,
    encode_ack,
    encode_nack,
)
from pigeonpush.wire.frames import (
    NACK_VERSION,
    TOPIC_VERSION,
    UPLINK_VERSION,
    Auth,
    AuthFail,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    Kick,
    Missed,
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

#: A heartbeat timer that fires this close to its due time counts as due
#: (float sums of clock steps are not exact).
_SLACK = 1e-6


class SessionOwner(Protocol):
    """What a ClientProtocol reports to (PushClient implements it)."""

    def _session_started(self, session: ClientProtocol) -> None: ...

    def _session_authenticated(self, session: ClientProtocol, heartbeat: float) -> None: ...

    def _session_refused(self, session: ClientProtocol, frame: AuthFail) -> None: ...

    def _session_kicked(self, session: ClientProtocol, frame: Kick) -> None: ...

    def _push_received(self, session: ClientProtocol, frame: Push) -> None: ...

    def _messages_missed(self, session: ClientProtocol, frame: Missed) -> None: ...

    def _subscription_answered(self, session: ClientProtocol, frame: Subscription) -> None: ...

    def _session_ended(self, session: ClientProtocol, reason: str) -> None: ...

    def _uplink_acked(self, session: ClientProtocol, uplink_id: str) -> None: ...


class ClientProtocol(FrameProtocol):
    """AUTH first; then PUSHes to the owner, ACKs from it, and heartbeats.

    Heartbeat: when nothing was *sent* for ``heartbeat`` seconds (the server's
    idle timeout counts what it receives), send PING. Every frame received
    shows the connection is alive and clears the count of unanswered PINGs;
    when a PING is due and ``max_missed_pongs`` are already unanswered, the
    connection is dead: abort it.
    """

    __slots__ = (
        "_auth",
        "_auth_timeout",
        "_clock",
        "_handle",
        "_heartbeat",
        "_last_sent",
        "_max_missed",
        "_owner",
        "_reason",
        "_timer",
        "_unanswered",
        "authenticated",
        "server",
    )

    log = Logger()

    def __init__(
        self,
        owner: SessionOwner,
        server: str,
        auth: Auth,
        *,
        clock: IReactorTime,
        heartbeat: float,
        max_missed_pongs: int,
        auth_timeout: float,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        super().__init__(max_frame, clock=clock)
        self.server = server
        self.authenticated = False
        self._owner = owner
        self._auth = auth
        self._clock = clock
        self._heartbeat = heartbeat
        self._max_missed = max_missed_pongs
        self._auth_timeout = auth_timeout
        self._handle: Callable[[Frame], None] = self._before_auth
        self._timer: IDelayedCall | None = None
        self._last_sent = 0.0
        self._unanswered = 0
        self._reason: str | None = None

    @property
    def heartbeat(self) -> float:
        """Seconds of quiet before a PING (the server's AUTH_OK value once online)."""
        return self._heartbeat

    # --- connection life --------------------------------------------------------

    def connectionMade(self) -> None:
        self._set_no_delay()
        self.sendFrame(self._auth)
        self._timer = self._clock.callLater(self._auth_timeout, self._auth_timed_out)
        self._owner._session_started(self)

    def _set_no_delay(self) -> None:
        # Small frames both ways: Nagle plus delayed ACKs would add ~40 ms to each.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            with contextlib.suppress(OSError):  # not TCP (a UNIX socket endpoint)
                set_no_delay(True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._cancel_timer()
        self._owner._session_ended(self, self._reason or describe_failure(reason))

    def close(self) -> None:
        """End the session cleanly (the owner is stopping)."""
        self._set_reason("closed by the client")
        self.closeWith()

    def _drop(self, reason: str) -> None:
        """Close without waiting for the peer: it stopped answering."""
        self._set_reason(reason)
        self.closeWith()
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    def _set_reason(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    # --- frames -------------------------------------------------------------------

    def frameReceived(self, frame: Frame) -> None:
        self._unanswered = 0
        self._handle(frame)

    def _before_auth(self, frame: Frame) -> None:
        match frame:
            case AuthOk():
                self._authenticated(frame)
            case AuthFail():
                detail = f": {frame.reason}" if frame.reason else ""
                self._set_reason(f"AUTH refused ({frame.code.name}{detail})")
                self._owner._session_refused(self, frame)
                self.closeWith()
            case Kick():
                self._kicked(frame)
            case Error():
                self._peer_error(frame)
            case _:
                self.protocolError(ErrorCode.UNEXPECTED, f"{type(frame).__name__} before AUTH_OK")

    def _online(self, frame: Frame) -> None:
        match frame:
            case Push():
                self._owner._push_received(self, frame)
            case Missed():
                self._owner._messages_missed(self, frame)
            case Subscription():
                self._owner._subscription_answered(self, frame)
            case Pong():
                pass  # frameReceived already counted it
            case Ping():
                self.sendEncoded(ENCODED_PONG)
            case UplinkAck():
                self._owner._uplink_acked(self, frame.uplink_id)
            case Kick():
                self._kicked(frame)
            case Error():
                self._peer_error(frame)
            case _:
                self.protocolError(ErrorCode.UNEXPECTED, f"{type(frame).__name__} after AUTH_OK")

    def _authenticated(self, frame: AuthOk) -> None:
        self._cancel_timer()
        self.authenticated = True
        self._handle = self._online
        # The server's values win: its idle timeout is built on its heartbeat.
        self.MAX_LENGTH = frame.max_frame
        self._heartbeat = frame.heartbeat
        self._last_sent = self._clock.seconds()
        self._timer = self._clock.callLater(self._heartbeat, self._heartbeat_due)
        self._owner._session_authenticated(self, self._heartbeat)

    def _kicked(self, frame: Kick) -> None:
        detail = f": {frame.text}" if frame.text else ""
        self._set_reason(f"kicked by the server ({frame.reason.name}{detail})")
        self._owner._session_kicked(self, frame)
        self.closeWith()

    def _peer_error(self, frame: Error) -> None:
        self.log.warn(
            "Push server {server} reported a protocol error {code.name}: {text}",
            server=self.server,
            code=frame.code,
            text=frame.text,
        )
        self._set_reason(f"the server reported ERROR {frame.code.name}: {frame.text}")
        self.closeWith()

    def protocolError(self, code: ErrorCode, text: str) -> None:
        self._set_reason(f"protocol error {code.name}: {text}")
        super().protocolError(code, text)

    # --- sending ------------------------------------------------------------------

    def sendEncoded(self, data: bytes) -> None:
        super().sendEncoded(data)
        self._last_sent = self._clock.seconds()

    def send_request(self, frame: Subscribe | Unsubscribe) -> bool:
        """Send SUBSCRIBE or UNSUBSCRIBE if this session can carry it (version 3)."""
        if self.authenticated and not self.closing and self._auth.version >= TOPIC_VERSION:
            self.sendEncoded(encode(frame))
            return True
        return False

    def send_ack(self, message_id: str) -> None:
        """ACK a message, if this session can still carry it."""
        if self.authenticated and not self.closing:
            self.sendEncoded(encode_ack(message_id))

    def send_nack(self, message_id: str, retry_after: float = 0.0) -> None:
        """NACK a message (its callback failed), if this session can carry it:
        a version 1 session cannot, and the server's ACK timeout brings the
        message back instead."""
        if self.authenticated and not self.closing and self._auth.version >= NACK_VERSION:
            try:
                frame = encode_nack(message_id, retry_after)
            except EncodeError:  # a retry-after past the u32 milliseconds
                frame = encode_nack(message_id, 0.0)
            self.sendEncoded(frame)

    @property
    def can_uplink(self) -> bool:
        """Whether UPLINK can go out on this session now (version 2, online)."""
        return self.authenticated and not self.closing and self._auth.version >= UPLINK_VERSION

    def send_uplink(self, uplink_id: str, data: Mapping[str, str]) -> bool:
        """Send UPLINK if this session can carry it; False if it cannot."""
        if not self.can_uplink:
            return False
        self.sendFrame(Uplink(uplink_id, data))
        return True

    # --- timers -------------------------------------------------------------------

    def _auth_timed_out(self) -> None:
        self._timer = None
        self.log.info(
            "No answer to AUTH from {server} within {timeout}s; closing",
            server=self.server,
            timeout=self._auth_timeout,
        )
        self._drop(f"no answer to AUTH within {self._auth_timeout:g}s")

    def _heartbeat_due(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        remaining = self._last_sent + self._heartbeat - now
        if remaining > _SLACK:
            # Something was sent since this timer was set: not quiet yet.
            self._timer = self._clock.callLater(remaining, self._heartbeat_due)
            return
        if self._unanswered >= self._max_missed:
            self.log.info(
                "No answer from {server} to {count} PINGs; dropping the connection",
                server=self.server,
                count=self._unanswered,
            )
            self._drop(f"no answer to {self._unanswered} PING(s) in a row")
            return
        self.sendEncoded(ENCODED_PING)
        self._unanswered += 1
        self._timer = self._clock.callLater(self._heartbeat, self._heartbeat_due)


class SessionFactory(Factory):
    """Builds the one ClientProtocol of a connection attempt."""

    noisy = False  # one factory per attempt: no "Starting factory" line each time

    def __init__(self, build: Callable[[], ClientProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> ClientProtocol:
        return self._build()
