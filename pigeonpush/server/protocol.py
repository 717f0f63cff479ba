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
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from pigeonpush.logsafe import untrusted
from pigeonpush.wire.codec import ENCODED_PONG, DecodeError, ack_message_id
from pigeonpush.wire.frames import (
    Ack,
    Auth,
    AuthFail,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    FrameType,
    Kick,
    Ping,
    Pong,
    Push,
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
        "timer",
        "token",
        "write_paused",
    )

    def __init__(self, hub: PushHub) -> None:
        super().__init__(hub.settings.max_frame, clock=hub.clock)
        self.hub = hub
        self.state = _AWAITING_AUTH
        self.client_id: str | None = None
        self.token: str | None = None
        #: messageId -> when it was written, for the un-ACKed PUSHes (None until ACTIVE)
        self.in_flight: dict[str, float] | None = None
        self.write_paused = False
        self.pulling = False
        #: the last pull said more messages are pending
        self.pull_more = False
        self.last_pull = float("-inf")
        #: the one timer: the auth timeout, then (once ACTIVE) the idle timeout
        self.timer: IDelayedCall | None = None

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

    def activate(self, client_id: str, token: str, auth_ok: bytes) -> None:
        """Enter ACTIVE: send the (pre-encoded) AUTH_OK and switch the timer
        from the auth timeout to the idle timeout."""
        self.client_id = client_id
        self.token = token
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
                self.handle(self._acked, message_id, "Ack")
                return
        super().stringReceived(string)

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
        # The client does not read: stop reading it too, so that its PINGs
        # cannot pile up PONGs in the buffer either.
        self.write_paused = True
        transport: Any = self.transport
        transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.write_paused = False
        transport: Any = self.transport
        transport.resumeProducing()
        if self.state == _ACTIVE:
            self.hub.writable(self)

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
