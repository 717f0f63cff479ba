"""The demo page (``/demo/``): a person types a clientId, connects over
WebSocket with the JavaScript client, watches messages arrive with their ACK
state, and sends uplinks.

Served by reglog (``--demo``; pigeon-standalone turns it on) from reglog's
own origin, so that the page's ``POST /v1/route`` needs no CORS, and the
push server's Origin check sees a page of a known host. ``client`` is the
JavaScript client of ``clients/js`` (a link in the source tree, files in an
installed package): the page loads exactly the module that is published.
"""

from __future__ import annotations

from pathlib import Path

from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import File
from twisted.web.util import redirectTo

__all__ = ["HERE", "demo_resource"]

HERE = Path(__file__).parent
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def _file(path: Path) -> File:
    static = File(str(path), defaultType="application/octet-stream")
    static.contentTypes = {**static.contentTypes, **_TYPES}
    return static


class _Demo(Resource):
    """``/demo`` (no slash) redirects to ``/demo/``, so that the page's
    relative imports resolve."""

    def render(self, request: Request) -> bytes:
        return redirectTo(b"/demo/", request)


def demo_resource() -> Resource:
    """``/demo/``: the page, and the client module under ``client/``."""
    page = _file(HERE / "index.html")
    root = _Demo()
    root.putChild(b"", page)
    root.putChild(b"index.html", page)
    client = Resource()
    client.putChild(b"pigeonpush.js", _file(HERE / "client" / "pigeonpush.js"))
    client.putChild(b"src", _file(HERE / "client" / "src"))
    root.putChild(b"client", client)
    return root
