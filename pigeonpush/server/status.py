"""The server's HTTP status endpoint: ``/metrics`` (Prometheus) and ``/health``.

``/health`` answers 200 with ``{"status": "serving", ...}`` while the server
accepts clients and 503 while it starts or drains, so a load balancer or an
orchestrator can tell the difference.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from pigeonpush.http import JsonSite, JsonTree, write_json
from pigeonpush.metrics import MetricsResource
from pigeonpush.server.hub import PushHub


class _Phased(Protocol):
    phase: str
    node_id: str | None


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, hub: PushHub, service: _Phased) -> None:
        super().__init__()
        self._hub = hub
        self._service = service

    def render_GET(self, request: Request) -> bytes:
        phase = self._service.phase
        body = {
            "status": phase,
            "node": self._service.node_id,
            "connections": len(self._hub.sessions),
            "sockets": len(self._hub.all_sessions),
            "capacity": self._hub.settings.capacity,
        }
        return write_json(request, 200 if phase == "serving" else 503, body)


def status_site(hub: PushHub, service: _Phased, reactor: Any = None) -> Site:
    """A Site with ``/metrics`` and ``/health``; other paths answer 404 in JSON."""
    root = JsonTree()
    root.putChild(b"metrics", MetricsResource())
    root.putChild(b"health", HealthResource(hub, service))
    return JsonSite(root, max_body=0, reactor=reactor)
