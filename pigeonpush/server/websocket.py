"""The WebSocket transport of the push server: the same frames as TCP, one
per binary WebSocket message, for browsers (docs/protocol.rst, "WebSocket").

A WebSocket connection is an autobahn ``WebSocketServerProtocol`` that does
the handshake (subprotocol ``pigeonpush.v1`` required, the Origin checked
against the allow-list) and then hosts one TCP ``ServerProtocol``, the
``Channel`` the hub sees, over a ``MessageTransport``. So the frame grammar,
the auth and idle timeouts, the frame-rate bucket, the drain and the
back-pressure are the TCP transport's own code, not a copy; only the framing
differs:

- in: each binary message is handed to the channel as one length-prefixed
  frame (the message boundary is the prefix), so a channel that stops reading
  (the client does not read, or sends too fast) keeps the frames received
  meanwhile in its buffer as on TCP, while the socket itself stops being read;
- out: each encoded frame the channel writes loses its 4-byte prefix and
  becomes one binary message;
- a text message is ERROR MALFORMED, a message over ``--max-frame`` ERROR
  TOO_LARGE (both then close), and closing sends a WebSocket close (1000)
  after the last frame.

The socket's producer signals reach the channel as on TCP (it registers
itself with the socket): ``session.write_paused`` follows them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import attrs
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.cors import check_origin
from pigeonpush.logsafe import LogThrottle, untrusted
from pigeonpush.server.metrics import PROMETHEUS, MetricsSink
from pigeonpush.server.protocol import ServerProtocol, ServerProtocolFactory
from pigeonpush.server.session import SessionEvents
from pigeonpush.server.settings import LOG_BURST, LOG_INTERVAL, ServerSettings
from pigeonpush.wire.codec import PREFIX_BYTES
from pigeonpush.wire.frames import ErrorCode

__all__ = [
    "NO_BROWSERS",
    "SUBPROTOCOL",
    "MessageTransport",
    "OriginPolicy",
    "WebSocketFactory",
    "WebSocketProtocol",
    "check_origin",
]

#: The WebSocket subprotocol a client must offer (and the server selects).
SUBPROTOCOL = "pigeonpush.v1"
#: WebSocket close code of a normal close (RFC 6455).
CLOSE_NORMAL = 1000
#: How long the server waits for the client's answer to its close before it
#: drops the connection. autobahn's default (1 s) runs on txaio's batched
#: timer, which rounds a deadline down to a whole second of the clock: it
#: fired anywhere from 0 to 1 s after the close, and a reset could cost the
#: client the KICK or ERROR frame just written. One second more than the TCP
#: channel's own close grace, so that the channel's grace (the same on both
#: transports) ends a close that gets no answer.
CLOSE_HANDSHAKE_TIMEOUT = ServerProtocol.CLOSE_GRACE + 1

_pack_prefix = struct.Struct("!I").pack
_OPEN = WebSocketServerProtocol.STATE_OPEN
_log = Logger()
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _normal_origin(origin: str) -> str:
    """An Origin as browsers send it: ``scheme://host[:port]``, lower case."""
    return origin.strip().rstrip("/").lower()


@attrs.frozen(slots=True)
class OriginPolicy:
    """Which browser pages may open a WebSocket. A request without an Origin
    header (not a browser: Node, Python) is always allowed: Origin guards
    against pages that a user's browser runs, not against other programs.

    ``origins``: the allowed origins (``*``: any); ``loopback``: also any
    page served from a loopback host (the all-in-one defaults).
    """

    origins: frozenset[str] = frozenset()
    loopback: bool = False

    @classmethod
    def of(cls, origins: Iterable[str], *, loopback: bool = False) -> OriginPolicy:
        return cls(frozenset(_normal_origin(o) for o in origins), loopback)

    def allows(self, origin: str | None) -> bool:
        if origin is None or origin == "" or "*" in self.origins:
            return True
        origin = _normal_origin(origin)
        if origin in self.origins:
            return True
        if self.loopback:
            return urlsplit(origin).hostname in _LOOPBACK_HOSTS
        return False


#: The default: no browser page may connect (programs without Origin may).
NO_BROWSERS = OriginPolicy()


@attrs.define(slots=True, eq=False)
class MessageTransport:
    """The transport the hosted ``ServerProtocol`` writes to: frames out as
    binary messages, the rest forwarded to the WebSocket's socket."""

    websocket: WebSocketProtocol
    disconnecting: bool = False

    def write(self, data: bytes) -> None:
        """One encoded frame (length prefix included) as one message;
        nothing once the WebSocket is closing."""
        websocket = self.websocket
        if websocket.state == _OPEN:
            websocket.sendMessage(data[PREFIX_BYTES:], isBinary=True)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for frame in data:
            self.write(frame)

    def loseConnection(self) -> None:
        """The WebSocket close handshake (autobahn drops the socket after it,
        or after its close timeout)."""
        self.disconnecting = True
        self.websocket.sendClose(CLOSE_NORMAL)

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._socket().abortConnection()

    def getPeer(self) -> Any:
        return self._socket().getPeer()

    def getHost(self) -> Any:
        return self._socket().getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._socket().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._socket().unregisterProducer()

    def pauseProducing(self) -> None:
        """Stop reading the socket (the channel is paused)."""
        self._socket().pauseProducing()

    def resumeProducing(self) -> None:
        self._socket().resumeProducing()

    def _socket(self) -> Any:
        return self.websocket.transport


class WebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket connection: the handshake, then its ``channel``."""

    factory: WebSocketFactory

    channel: ServerProtocol | None = None

    def onConnect(self, request: ConnectionRequest) -> str:
        """Select ``pigeonpush.v1`` or refuse (400); refuse an Origin that
        is not allowed (403)."""
        if not self.factory.origins.allows(request.origin):
            skipped = self.factory.refusals_log.allow()
            if skipped is not None:
                _log.info(
                    "Refusing a WebSocket from {peer}: Origin {origin} is not allowed "
                    "({skipped} refusals not logged before this one)",
                    peer=request.peer,
                    origin=untrusted(request.origin),
                    skipped=skipped,
                )
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "Origin not allowed")
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(
                ConnectionDeny.BAD_REQUEST, f"the subprotocol {SUBPROTOCOL} is required"
            )
        return SUBPROTOCOL

    def onOpen(self) -> None:
        channel = ServerProtocol(self.factory.channels)
        channel.makeConnection(MessageTransport(self))
        self.channel = channel

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        channel = self.channel
        if channel is None:
            return
        if not isBinary:
            channel.protocolError(
                ErrorCode.MALFORMED, "text messages are not allowed: send frames as binary"
            )
            return
        channel.dataReceived(_pack_prefix(len(payload)) + payload)

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        """A message over the frame limit: ERROR TOO_LARGE, as on TCP (what
        autobahn would do is a bare close 1009). Its data is dropped."""
        self.failedByMe = True
        if self.channel is not None:
            self.channel.lengthLimitExceeded(msg_size)
        else:
            self.dropConnection(abort=True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.connectionLost(reason)


class WebSocketFactory(WebSocketServerFactory):
    """Builds a ``WebSocketProtocol`` per connection; its channels share a
    ``ServerProtocolFactory`` (settings, clock, metrics, log throttles) like
    the TCP port's connections do."""

    protocol = WebSocketProtocol  # type: ignore[assignment]

    def __init__(
        self,
        hub: SessionEvents,
        settings: ServerSettings,
        clock: IReactorTime,
        *,
        origins: OriginPolicy = NO_BROWSERS,
        metrics: MetricsSink = PROMETHEUS,
        reactor: Any = None,
    ) -> None:
        super().__init__(reactor=reactor)
        self.channels = ServerProtocolFactory(hub, settings, clock, metrics=metrics)
        self.origins = origins
        #: the log throttle of refused Origins (peers can repeat them at will)
        self.refusals_log = LogThrottle(clock, LOG_INTERVAL, LOG_BURST)
        self.setProtocolOptions(
            webStatus=False,
            maxMessagePayloadSize=settings.max_frame,
            maxFramePayloadSize=settings.max_frame,
            openHandshakeTimeout=settings.auth_timeout,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            failByDrop=False,
            autoPingInterval=0,
        )
