"""A real HTTP webhook receiver for the uplink tests: a twisted.web Site on a
loopback port that records every POST and answers the statuses it is told."""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


@attrs.frozen
class Received:
    body: bytes
    headers: dict[str, str]  #: by lower-case name

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class _Hook(Resource):
    isLeaf = True

    def __init__(self, receiver: WebhookReceiver) -> None:
        super().__init__()
        self._receiver = receiver

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        headers = {
            name.decode("latin-1").lower(): values[0].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self._receiver.received.append(Received(request.content.read(), headers))
        statuses = self._receiver.statuses
        request.setResponseCode(statuses.popleft() if statuses else self._receiver.default)
        return b"{}"


class WebhookReceiver:
    """Listens on 127.0.0.1; ``url`` is its hook. ``statuses`` are answered
    first, in order; then ``default``."""

    def __init__(self, reactor: Any, *statuses: int, default: int = 200) -> None:
        self.received: list[Received] = []
        self.statuses: deque[int] = deque(statuses)
        self.default = default
        root = Resource()
        root.putChild(b"hook", _Hook(self))
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/hook"

    def stop(self) -> Any:
        return self.port.stopListening()
