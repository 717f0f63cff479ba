"""The chaos clients' WebSocket transport: an SDK ``PushClient`` over a WebSocket.

The SDK speaks TCP only; the session logic it carries (AUTH, heartbeats,
ACK after the callback, de-duplication, reconnection with backoff, uplinks
resent on reconnect) is what the chaos suite checks, so the WebSocket clients
keep it and change only the two things that differ (docs/protocol.rst,
"WebSocket"):

- the route: ``POST /v1/route`` with ``"transport": "websocket"``, whose
  answer names the server's WebSocket listener (``WebSocketRoutes``);
- the connection: ``WebSocketEndpoint`` opens ``ws://host:port/`` with the
  subprotocol ``pigeonpush.v1`` (autobahn's Twisted client) and hosts the
  SDK's protocol over a ``FrameTransport``: each length-prefixed frame it
  writes becomes one binary message, each binary message received is handed
  to it with its length prefix. The endpoint's Deferred fires once the
  WebSocket handshake is done, so a refused handshake is a failed connection
  attempt, as a refused TCP connection is.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Callable, Collection
from typing import Any

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from pigeonpush.sdk.backoff import BackoffPolicy
from pigeonpush.sdk.route import ROUTE_PATH, BytesProducer, Route, avoid_list, parse_route

#: The subprotocol a push server's WebSocket listener requires.
SUBPROTOCOL = "pigeonpush.v1"
#: What reglog's route answer says of a WebSocket listener (``wss``: over TLS).
WEBSOCKET_TRANSPORTS = ("ws", "wss")
CLOSE_NORMAL = 1000
PREFIX = struct.Struct("!I")


class FrameTransport:
    """The transport the SDK's protocol writes to: length-prefixed frames
    out as binary messages, the rest forwarded to the socket."""

    def __init__(self, websocket: TunnelProtocol) -> None:
        self.websocket = websocket
        self._buffer = b""
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        """Frames (whole or in pieces, several at once): one message per frame."""
        buffer = self._buffer + data
        offset = 0
        while len(buffer) - offset >= PREFIX.size:
            (length,) = PREFIX.unpack_from(buffer, offset)
            end = offset + PREFIX.size + length
            if end > len(buffer):
                break
            if self.websocket.state == WebSocketClientProtocol.STATE_OPEN:
                self.websocket.sendMessage(buffer[offset + PREFIX.size : end], isBinary=True)
            offset = end
        self._buffer = buffer[offset:]

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """The WebSocket close handshake (autobahn drops the socket after it)."""
        self.disconnecting = True
        self.websocket.sendClose(CLOSE_NORMAL)

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._socket().abortConnection()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self._socket().setTcpNoDelay(enabled)

    def getPeer(self) -> Any:
        return self._socket().getPeer()

    def getHost(self) -> Any:
        return self._socket().getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._socket().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._socket().unregisterProducer()

    def _socket(self) -> Any:
        return self.websocket.transport


class TunnelProtocol(WebSocketClientProtocol):
    """One WebSocket connection hosting the protocol ``factory.inner`` builds."""

    factory: TunnelFactory
    inner: IProtocol | None = None

    def onOpen(self) -> None:
        opened = self.factory.opened
        if opened.called:  # cancelled meanwhile
            self.dropConnection(abort=True)
            return
        assert self.transport is not None
        inner = self.factory.inner.buildProtocol(self.transport.getPeer())
        if inner is None:
            self.dropConnection(abort=True)
            opened.errback(ConnectError(string="the protocol factory built no protocol"))
            return
        self.inner = inner
        inner.makeConnection(FrameTransport(self))  # type: ignore[arg-type]
        opened.callback(inner)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.inner is not None and isBinary:
            self.inner.dataReceived(PREFIX.pack(len(payload)) + payload)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connectionLost(reason)
        elif not self.factory.opened.called:
            why = self.wasNotCleanReason or reason.getErrorMessage()
            self.factory.opened.errback(ConnectError(string=f"WebSocket handshake failed: {why}"))


class TunnelFactory(WebSocketClientFactory):
    protocol = TunnelProtocol  # type: ignore[assignment]

    def __init__(
        self, url: str, inner: IProtocolFactory, opened: Deferred[IProtocol], **options: Any
    ) -> None:
        super().__init__(url, protocols=[SUBPROTOCOL])
        self.inner = inner
        self.opened = opened
        self.setProtocolOptions(autoPingInterval=0, failByDrop=False, **options)


@implementer(IStreamClientEndpoint)
class WebSocketEndpoint:
    """``ws://host:port/`` for one SDK connection; fires with the SDK's
    protocol once the handshake is done (cancellable until then)."""

    def __init__(
        self, reactor: Any, host: str, port: int, *, timeout: float = 10.0, max_frame: int = 65_536
    ) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout
        self._max_frame = max_frame

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting: Deferred[Any] | None = None
        websocket: list[TunnelProtocol] = []
        cancelled: list[bool] = []

        def cancel(_: Deferred[IProtocol]) -> None:
            # ``opened`` then fails with CancelledError, whatever the
            # cancelled connection attempt fails with.
            cancelled.append(True)
            if connecting is not None and not connecting.called:
                connecting.cancel()
            for protocol in websocket:
                protocol.dropConnection(abort=True)

        opened: Deferred[IProtocol] = Deferred(cancel)
        tunnel = TunnelFactory(
            f"ws://{self._host}:{self._port}/",
            factory,
            opened,
            openHandshakeTimeout=self._timeout,
            maxMessagePayloadSize=self._max_frame,
            maxFramePayloadSize=self._max_frame,
        )
        endpoint = HostnameEndpoint(self._reactor, self._host, self._port, timeout=self._timeout)
        connecting = endpoint.connect(tunnel)

        def failed(failure: Failure) -> None:
            if not opened.called and not cancelled:
                opened.errback(failure)

        connecting.addCallbacks(websocket.append, failed)
        return opened


@attrs.define(slots=True)
class WebSocketRoutes:
    """A ``PushClient`` route source: ``POST /v1/route`` asking for a
    WebSocket address, retried with ``backoff`` until reglog answers one (as
    the SDK's own lookup does by default: a chaos client never gives up).
    ``avoid`` gives the servers to name in each request."""

    reactor: Any
    agent: IAgent
    reglog_url: str
    client_id: str
    backoff: BackoffPolicy
    avoid: Callable[[], Collection[str]] = list
    timeout: float = 10.0

    def __call__(self) -> Deferred[Route]:
        return Deferred.fromCoroutine(self._lookup())

    async def _lookup(self) -> Route:
        for attempt in itertools.count(1):
            try:
                return await self._one()
            except CancelledError:
                raise
            except Exception:  # every failure is retried, as the SDK's lookup does
                await deferLater(self.reactor, self.backoff(attempt), lambda: None)
        raise AssertionError("unreachable")

    async def _one(self) -> Route:
        body: dict[str, Any] = {"clientId": self.client_id, "transport": "websocket"}
        servers = avoid_list(self.avoid())
        if servers:
            body["avoid"] = servers
        http = HTTPClient(self.agent, data_to_body_producer=BytesProducer)
        posting = http.post(
            self.reglog_url.rstrip("/") + ROUTE_PATH,
            json=body,
            headers=Headers({b"Accept": [b"application/json"]}),
        )
        posting.addTimeout(self.timeout, self.reactor)
        response = await posting
        reading = response.content()
        reading.addTimeout(self.timeout, self.reactor)
        raw = await reading
        if response.code != 200:
            raise ValueError(f"HTTP {response.code}")
        return websocket_route(json.loads(raw))


def websocket_route(body: Any) -> Route:
    """The Route of reglog's answer to a WebSocket route request: the SDK's
    checks, with ``ws`` where it expects ``tcp``; ValueError otherwise."""
    if not isinstance(body, dict) or body.get("transport") not in WEBSOCKET_TRANSPORTS:
        raise ValueError(f"not a WebSocket route: {body!r:.200}")
    if body["transport"] == "wss":
        raise ValueError("wss routes are not supported by the chaos clients")
    return parse_route({**body, "transport": "tcp"})
