"""Prometheus metrics over HTTP: the resource every plugin mounts at /metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request

from pigeonpush.http import ApiError, write_error


class MetricsResource(Resource):
    """Renders a registry in the Prometheus text format (no threads needed).

    GET and HEAD only; other methods answer 405 in the APIs' JSON error
    format with ``Allow``, like every other endpoint (not Twisted's HTML page).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return bytes(generate_latest(self._registry))

    def render(self, request: Request) -> bytes:
        if request.method in (b"GET", b"HEAD"):
            return self.render_GET(request)
        method = request.method.decode("ascii", "replace")
        return write_error(
            request,
            ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed here; use GET, HEAD",
                {"Allow": "GET, HEAD"},
            ),
        )
