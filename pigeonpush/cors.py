"""CORS for an HTTP API that browser pages of other origins call.

``CorsResource(root, origins)`` wraps a site's root resource. A request whose
``Origin`` is allowed gets ``Access-Control-Allow-Origin`` (that origin) and
``Vary: Origin``; a preflight (``OPTIONS`` with
``Access-Control-Request-Method``) from an allowed origin is answered 204
with the methods and headers the API takes, before the wrapped resource sees
it; from another origin, 403 ``origin_not_allowed``. A request without
``Origin`` (not a browser, or same-origin GET) is passed on unchanged:
CORS is what lets a browser read an answer, not an authentication.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from pigeonpush.http import ApiError, write_error

__all__ = ["ALLOW_HEADERS", "ALLOW_METHODS", "MAX_AGE", "CorsResource", "check_origin"]

ALLOW_METHODS = b"GET, POST, OPTIONS"
ALLOW_HEADERS = b"Content-Type, Authorization"
#: Seconds a browser may cache a preflight's answer.
MAX_AGE = b"600"


def check_origin(option: str, origin: str) -> str:
    """An origin option's value: ``*`` or ``http[s]://host[:port]`` (lower case)."""
    if origin == "*":
        return origin
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(
            f"{option} must be '*' or an origin such as https://app.example.com[:port], "
            f"not {origin!r}"
        )
    return origin.strip().rstrip("/").lower()


class _Preflight(Resource):
    isLeaf = True

    def __init__(self, allowed: bool) -> None:
        super().__init__()
        self._allowed = allowed

    def render(self, request: Request) -> bytes:
        if not self._allowed:
            return write_error(
                request,
                ApiError(403, "origin_not_allowed", "this origin may not call this API"),
            )
        request.setResponseCode(204)
        request.setHeader(b"Access-Control-Allow-Methods", ALLOW_METHODS)
        request.setHeader(b"Access-Control-Allow-Headers", ALLOW_HEADERS)
        request.setHeader(b"Access-Control-Max-Age", MAX_AGE)
        return b""


class CorsResource(Resource):
    """``wrapped`` with CORS headers for ``origins`` (``*``: any origin)."""

    def __init__(self, wrapped: IResource, origins: Iterable[str]) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._origins = frozenset(origins)

    def _allowed(self, request: Request) -> bool | None:
        """None without Origin; else whether it is allowed (headers set if so)."""
        raw = request.getHeader(b"origin")
        if raw is None:
            return None
        origin = raw.decode("latin-1")
        allowed = "*" in self._origins or origin.rstrip("/").lower() in self._origins
        if allowed:
            request.setHeader(b"Access-Control-Allow-Origin", raw)
            request.setHeader(b"Vary", b"Origin")
        return allowed

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        allowed = self._allowed(request)
        if request.method == b"OPTIONS" and request.getHeader(b"access-control-request-method"):
            return _Preflight(bool(allowed))
        child: IResource = self._wrapped.getChildWithDefault(path, request)
        return child

    def render(self, request: Request) -> bytes:
        self._allowed(request)
        result: bytes = self._wrapped.render(request)
        return result
