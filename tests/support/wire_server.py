"""A push server and a reglog for the SDK's tests, on the real wire protocol and HTTP API.

``WireServer`` listens on a loopback TCP port and speaks the device protocol
(``pigeonpush.wire``): it accepts AUTH with a token it issued, answers PING,
records ACKs, pushes and kicks on demand, and can be stopped (crash-like: the
connections are aborted) and started again on the same port. ``ReglogRoute``
is a ``twisted.web`` resource answering ``POST /v1/route`` like reglog, issuing
tokens from a WireServer; it can be scripted to fail. Both run in the test's
reactor. ``frames_in`` / ``encode`` help Clock-driven tests read and feed bytes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from pigeonpush.identifiers import CLIENT_ID, is_client_id
from pigeonpush.wire.codec import DEFAULT_MAX_FRAME, ENCODED_PONG, decode, encode
from pigeonpush.wire.frames import (
    Ack,
    Auth,
    AuthFail,
    AuthFailCode,
    AuthOk,
    ErrorCode,
    Frame,
    Kick,
    KickReason,
    Ping,
    Push,
)
from pigeonpush.wire.protocol import FrameProtocol

__all__ = ["ReglogRoute", "WireServer", "encode", "frames_in", "reglog_root", "reglog_site"]


def frames_in(data: bytes) -> list[Frame]:
    """The frames in a byte string of whole length-prefixed frames."""
    frames = []
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        frames.append(decode(data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    assert offset == len(data), "a partial frame at the end"
    return frames


class ServerSession(FrameProtocol):
    """The server side of one device connection."""

    def __init__(self, server: WireServer) -> None:
        super().__init__(server.max_frame, clock=server.reactor)
        self.server = server
        self.client_id: str | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def frameReceived(self, frame: Frame) -> None:
        server = self.server
        match frame:
            case Auth() if self.client_id is None:
                server.authenticate(self, frame)
            case Ping() if self.client_id is not None:
                server.pings += 1
                if server.answer_pings:
                    self.sendEncoded(ENCODED_PONG)
            case Ack() if self.client_id is not None:
                server.acks.append((self.client_id, frame.message_id))
            case _:
                self.protocolError(ErrorCode.UNEXPECTED, f"{type(frame).__name__} not expected")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.server.connections.remove(self)
        if self.client_id is not None and self.server.sessions.get(self.client_id) is self:
            del self.server.sessions[self.client_id]
        self.lost.callback(None)


class WireServer:
    """A minimal push server: tokens, sessions, PONGs, ACKs."""

    def __init__(
        self,
        reactor: Any,
        *,
        heartbeat: float = 30.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        ack_window: int = 64,
    ) -> None:
        self.reactor = reactor
        self.heartbeat = heartbeat
        self.max_frame = max_frame
        self.ack_window = ack_window
        self.port = 0
        self.tokens: dict[str, str] = {}  # clientId -> token (kept across restarts)
        self.sessions: dict[str, ServerSession] = {}
        self.connections: list[ServerSession] = []
        self.acks: list[tuple[str, str]] = []
        self.logins: list[str] = []
        self.pings = 0
        self.answer_pings = True
        self._listening: IListeningPort | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (on the same port as before, after a stop)."""
        endpoint = TCP4ServerEndpoint(self.reactor, self.port, interface="127.0.0.1")
        factory = Factory.forProtocol(lambda: ServerSession(self))
        factory.noisy = False
        self._listening = await endpoint.listen(factory)
        self.port = self._listening.getHost().port  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Stop listening and abort every connection, as a crash would."""
        if self._listening is not None:
            await maybeDeferred(self._listening.stopListening)
            self._listening = None
        lost = [session.lost for session in self.connections]
        for session in list(self.connections):
            session.transport.abortConnection()  # type: ignore[union-attr]
        await DeferredList(lost)

    def issue_token(self, client_id: str) -> str:
        token = secrets.token_urlsafe(16)
        self.tokens[client_id] = token
        return token

    def authenticate(self, session: ServerSession, auth: Auth) -> None:
        if self.tokens.get(auth.client_id) != auth.token or not auth.token:
            session.closeWith(AuthFail(AuthFailCode.BAD_TOKEN, "unknown token"))
            return
        previous = self.sessions.get(auth.client_id)
        if previous is not None:
            previous.closeWith(Kick(KickReason.REPLACED, "logged in elsewhere"))
        session.client_id = auth.client_id
        self.sessions[auth.client_id] = session
        self.logins.append(auth.client_id)
        session.sendFrame(AuthOk(self.heartbeat, self.max_frame, self.ack_window))

    def push(
        self,
        client_id: str,
        message_id: str,
        title: str = "title",
        text: str = "text",
        extras: Mapping[str, str] | None = None,
    ) -> None:
        self.sessions[client_id].sendFrame(Push(message_id, title, text, dict(extras or {})))

    def kick(self, client_id: str, reason: KickReason, text: str = "") -> None:
        self.sessions[client_id].closeWith(Kick(reason, text))

    def acked(self, client_id: str) -> list[str]:
        return [message_id for who, message_id in self.acks if who == client_id]


class ReglogRoute(Resource):
    """``POST /v1/route`` as reglog answers it, issuing tokens from a WireServer.

    ``script`` holds (status, body) answers served first, one per request;
    ``secret`` (if set) is required in the request, as in registration mode.
    """

    isLeaf = True

    def __init__(
        self,
        server: WireServer | None = None,
        *,
        heartbeat: float | None = None,
        secret: str | None = None,
    ) -> None:
        super().__init__()
        # not ``server``: Resource.putChild overwrites that attribute
        self.push_server = server
        self.heartbeat = heartbeat
        self.secret = secret
        self.script: list[tuple[int, Any]] = []
        self.requests: list[Any] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        try:
            body = json.loads(request.content.read())
        except ValueError:
            body = None
        self.requests.append(body)
        if self.script:
            status, scripted = self.script.pop(0)
            return self._answer(request, status, scripted)
        client_id = body.get("clientId") if isinstance(body, dict) else None
        if not is_client_id(client_id):
            return self._answer(
                request,
                400,
                {
                    "error": "invalid",
                    "message": f"clientId must be {CLIENT_ID.text}",
                    "field": "clientId",
                },
            )
        if self.secret is not None and body.get("secret") != self.secret:
            return self._answer(
                request, 401, {"error": "unauthorized", "message": "unknown device or bad secret"}
            )
        if self.push_server is None:
            return self._answer(
                request, 503, {"error": "no_server", "message": "no push server is alive"}
            )
        answer: dict[str, Any] = {
            "token": self.push_server.issue_token(client_id),
            "server": self.push_server.address,
        }
        if self.heartbeat is not None:
            answer["heartbeat"] = self.heartbeat
        return self._answer(request, 200, answer)

    @staticmethod
    def _answer(request: Request, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        if isinstance(body, bytes):
            return body
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()


def reglog_site(route: ReglogRoute) -> Site:
    """A Site serving ``route`` at /v1/route."""
    site = Site(reglog_root(route))
    site.noisy = False
    return site


def reglog_root(route: ReglogRoute) -> Resource:
    """The resource tree of ``reglog_site`` (for treq's in-memory agent)."""
    root = Resource()
    v1 = Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"route", route)
    return root
