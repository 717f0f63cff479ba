"""The load generator's client of reglog's ``POST /v1/route``.

A general HTTP client (treq over Twisted's ``Agent``) cost the load generator
about 900 us of CPU per connection, more than reglog and the pigeon server
together, so the generator, not the service, set the connect rate. This one
does what the benchmark needs and nothing else: HTTP/1.1 keep-alive
connections, one request at a time on each, answers framed by
``Content-Length`` (which the project's API always sends), a pool that grows up
to a bound and queues requests beyond it.

Failures keep the names the benchmark counts: ``route_<Exception>`` for a
connection that could not be made or was lost, ``route_http_<status>`` for an
answer that is not 200, ``route_bad_answer`` for one that is not JSON with a
token and a server.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

#: The most header bytes an answer may have.
MAX_HEAD = 16 * 1024


class RouteFailed(Exception):
    """The route request failed; the message is the benchmark's error name."""


class _RouteConnection(Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self, client: RouteClient) -> None:
        self.client = client
        self.buffer = b""
        self.waiting: defer.Deferred[tuple[int, bytes]] | None = None
        self.body_length: int | None = None
        self.status = 0
        self.close_after = False
        self.open = False

    def connectionMade(self) -> None:
        self.open = True
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]

    def send(self, request: bytes) -> defer.Deferred[tuple[int, bytes]]:
        waiting: defer.Deferred[tuple[int, bytes]] = defer.Deferred(self._cancel)
        self.waiting = waiting
        self.transport.write(request)  # type: ignore[union-attr]
        return waiting

    def _cancel(self, waiting: defer.Deferred[tuple[int, bytes]]) -> None:
        # Timed out: this connection's answer would come too late for anyone.
        if self.waiting is waiting:
            self.waiting = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.body_length is None:
            head, separator, rest = self.buffer.partition(b"\r\n\r\n")
            if not separator:
                if len(self.buffer) > MAX_HEAD:
                    self._fail("route_bad_answer")
                return
            if not self._read_head(head):
                return
            self.buffer = rest
        assert self.body_length is not None
        if len(self.buffer) < self.body_length:
            return
        body, self.buffer = self.buffer[: self.body_length], self.buffer[self.body_length :]
        waiting, self.waiting = self.waiting, None
        self.body_length = None
        if self.close_after or self.buffer:
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self.client.idle(self)
        if waiting is not None:
            waiting.callback((self.status, body))

    def _read_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self._fail("route_bad_answer")
            return False
        self.status = int(parts[1])
        length = None
        self.close_after = parts[0] == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
            elif name == b"connection":
                self.close_after = value.strip().lower() == b"close"
        if length is None:
            self._fail("route_bad_answer")  # chunked or unframed: not from our API
            return False
        self.body_length = length
        return True

    def _fail(self, reason: str) -> None:
        waiting, self.waiting = self.waiting, None
        self.transport.abortConnection()  # type: ignore[union-attr]
        if waiting is not None:
            waiting.errback(RouteFailed(reason))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.open = False
        self.client.lost(self)
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.errback(RouteFailed(f"route_{type(reason.value).__name__}"))


class RouteClient:
    """Routes clients through one reglog, over at most ``connections``
    keep-alive connections."""

    def __init__(self, reactor: Any, url: str, connections: int, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"reglog must be an http://host:port URL, not {url!r}")
        self._reactor = reactor
        self._endpoint = TCP4ClientEndpoint(reactor, parts.hostname, parts.port, timeout=timeout)
        self._head = (
            f"POST {parts.path.rstrip('/')}/v1/route HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode("ascii")
        self.connections = connections
        self.timeout = timeout
        self._idle: list[_RouteConnection] = []
        self._open: set[_RouteConnection] = set()
        self._queue: deque[defer.Deferred[_RouteConnection]] = deque()

    async def route(self, client_id: str, *, websocket: bool = False) -> tuple[str, str]:
        """``(token, server)`` for ``client_id``; RouteFailed otherwise.
        ``websocket``: the server's WebSocket address is asked for."""
        fields = {"clientId": client_id}
        if websocket:
            fields["transport"] = "websocket"
        body = json.dumps(fields, separators=(",", ":")).encode()
        request = self._head + b"%d\r\n\r\n" % len(body) + body
        connection = await self._connection()
        answer = connection.send(request)
        answer.addTimeout(self.timeout, self._reactor)
        try:
            status, payload = await answer
        except defer.TimeoutError:
            raise RouteFailed("route_CancelledError") from None
        if status != 200:
            raise RouteFailed(f"route_http_{status}")
        try:
            answer_body = json.loads(payload)
            return str(answer_body["token"]), str(answer_body["server"])
        except (ValueError, KeyError, TypeError):
            raise RouteFailed("route_bad_answer") from None

    async def _connection(self) -> _RouteConnection:
        while self._idle:
            connection = self._idle.pop()
            if connection.open:
                return connection
        if len(self._open) >= self.connections:
            waiting: defer.Deferred[_RouteConnection] = defer.Deferred()
            self._queue.append(waiting)
            return await waiting
        connection = _RouteConnection(self)
        self._open.add(connection)
        try:
            await connectProtocol(self._endpoint, connection)
        except ConnectError as e:
            self._open.discard(connection)
            self._wake_one()
            raise RouteFailed(f"route_{type(e).__name__}") from None
        return connection

    def idle(self, connection: _RouteConnection) -> None:
        """``connection`` finished its request: hand it to a queued one."""
        if self._queue:
            self._queue.popleft().callback(connection)
        else:
            self._idle.append(connection)

    def lost(self, connection: _RouteConnection) -> None:
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        self._wake_one()

    def _wake_one(self) -> None:
        """A connection slot is free: a queued request opens its own."""
        if self._queue:
            defer.ensureDeferred(self._connection()).chainDeferred(self._queue.popleft())

    def close(self) -> None:
        """Close every connection; queued requests fail."""
        while self._queue:
            self._queue.popleft().errback(RouteFailed("route_closed"))
        for connection in list(self._open):
            if connection.transport is not None:
                connection.transport.loseConnection()
