"""JSON over twisted.web: the helpers every PigeonPush HTTP API shares.

Building blocks, each usable on its own:

``JsonSite(resource, max_body=..., reactor=...)``
    A ``Site`` whose requests keep at most ``max_body`` bytes of a body in
    memory (the rest is counted and dropped, and the resource answers 413), that
    does not parse form bodies, closes idle connections after ``timeout``
    seconds and writes no per-request access log unless ``access_log`` names a
    file. Hostile clients are bounded (see ``BoundedChannel``): a request must
    arrive whole within ``request_timeout`` seconds (else 408 and close), at
    most ``max_connections`` connections are open at once (more are closed as
    they are accepted, or, on a port the site was told of with
    ``listening_on``, wait in the listen backlog), and a client that does not
    read its answers is not read from either.
``JsonResource({b"POST": handler, ...})``
    A leaf that maps HTTP methods to ``async`` handlers. A handler takes the
    request and returns a ``JsonResponse``; raising ``ApiError`` gives the
    error answer; any other exception is logged and answered 500
    ``internal_error``. Other methods get 405 ``method_not_allowed`` (with
    ``Allow``), extra path segments 404 ``not_found``. Nothing is written
    once the client has gone away.
``JsonTree()``
    A directory resource (``putChild`` as usual) whose unknown children and own
    path answer 404 ``not_found`` in JSON instead of Twisted's HTML page.
``read_json(request, max_bytes)`` / ``read_json_object(...)``
    The body as JSON, or ``ApiError``: 413 ``body_too_large``, 415
    ``unsupported_media_type`` (a ``Content-Type`` that is not JSON; a missing
    one is accepted), 400 ``bad_json`` (not UTF-8/16/32 JSON, NaN or
    Infinity, nesting too deep) and, for ``read_json_object``, 400
    ``invalid`` when the document is not an object.
``write_json(request, status, body)`` / ``write_error(request, error)``
    Set status and headers and return the encoded body (compact UTF-8 JSON,
    ``Content-Type: application/json``, ``Cache-Control: no-store``).
``bearer_token(request)``
    The credentials of an ``Authorization: Bearer <token>`` header, or None.
``echo(text)``
    Untrusted text (a field name, a key) made safe to quote in an error
    message: shortened, with control characters and lone surrogates escaped.

Every error body has the project's shape::

    {"error": "invalid", "message": "clientId must be a string of ...", "field": "clientId"}

a short snake_case code that clients can branch on, one human sentence and,
for ``invalid`` when one part of the request is to blame, that part
(``field``). Both APIs (reglog and notification) speak one vocabulary,
``ERROR_CODES``, each code with its one status; the OpenAPI documents list it
(``components/schemas/Error``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from io import BytesIO
from typing import Any

import attrs
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocolFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer_only

from pigeonpush.compactjson import dumps as compact_json
from pigeonpush.identifiers import Rule
from pigeonpush.logsafe import untrusted

log = Logger()

JSON_CONTENT_TYPE = b"application/json"

#: Default limit on a request body, in bytes.
DEFAULT_MAX_BODY = 4096

#: Default idle timeout of an HTTP connection, in seconds (Twisted's is 12 h).
DEFAULT_TIMEOUT = 60.0

#: Default time a client has to send a whole request (headers and body), in
#: seconds, from its first byte. The idle timeout alone restarts with every
#: byte: one byte every few seconds held a connection (and a file
#: descriptor) for ever.
DEFAULT_REQUEST_TIMEOUT = 10.0

#: Default cap on the HTTP connections open at once on one listener; the
#: next ones are closed as soon as they are accepted. It keeps slow clients
#: from taking every file descriptor of the process (the push server's too,
#: in pigeon-standalone).
DEFAULT_MAX_CONNECTIONS = 512


#: Every error code of the HTTP APIs, with its status. Clients branch on the
#: code; a code means the same thing wherever it appears.
ERROR_CODES: Mapping[str, int] = {
    # The request's content (body field, query parameter, header, path
    # segment) is not what the API takes; ``field`` names the part when one is
    # to blame.
    "invalid": 400,
    # The body is not JSON (empty, not UTF-8, NaN or Infinity, nested too deeply).
    "bad_json": 400,
    "unauthorized": 401,  # notification: no API key, or a wrong one
    "secret_required": 401,  # reglog, registered mode: no device secret
    "bad_secret": 401,  # reglog, registered mode: unknown clientId or wrong secret
    "bad_admin_key": 401,  # reglog: registration without the admin key
    "origin_not_allowed": 403,  # a browser's Origin that is not allowed
    "not_found": 404,  # no such path, or no such resource
    "registration_disabled": 404,  # reglog in open mode: no /v1/devices
    "method_not_allowed": 405,  # with Allow
    "request_timeout": 408,  # the request did not arrive whole in time
    "already_sent": 409,  # notification: too late to cancel
    "client_exists": 409,  # reglog: that clientId is registered already
    "body_too_large": 413,
    "unsupported_media_type": 415,
    "internal_error": 500,
    "no_server": 503,  # reglog: no push server alive with room
    "server_unavailable": 503,  # notification: a push server did not answer
    "store_unavailable": 503,  # the shared store did not answer
}


class ApiError(Exception):
    """An answer in the project's error format: raise it from a handler.

    ``code`` is one of ``ERROR_CODES`` and ``status`` its status: a new code
    goes there first, and into both OpenAPI documents.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        field: str | None = None,
    ) -> None:
        if ERROR_CODES.get(code) != status:
            raise ValueError(f"{code!r} is not an error code of status {status} (ERROR_CODES)")
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers: Mapping[str, str] = headers or {}

    def body(self) -> dict[str, str]:
        return error_body(self.code, self.message, self.field)

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def error_body(code: str, message: str, field: str | None = None) -> dict[str, str]:
    """The project's error document (``field`` only when given)."""
    if field is None:
        return {"error": code, "message": message}
    return {"error": code, "message": message, "field": field}


def invalid(message: str, field: str | None = None) -> ApiError:
    """400 ``invalid``: the request is well-formed but not what the API takes;
    ``field`` names the part to blame (a body field such as ``to[3]``, a query
    parameter, a header, a path segment such as ``clientId``)."""
    return ApiError(400, "invalid", message, field=field)


def checked_identifier(rule: Rule, value: object, field: str | None = None) -> str:
    """``value`` if it follows ``rule``, else 400 ``invalid`` naming the field
    (the identifier's own name unless told) and the rule, without quoting the
    value."""
    if not rule.matches(value):
        raise invalid(f"{rule.name} must be {rule.text}", rule.name if field is None else field)
    return value


@attrs.frozen(slots=True)
class JsonResponse:
    """What a handler answers: a JSON-serialisable body, a status and extra headers."""

    body: Any
    status: int = 200
    headers: Mapping[str, str] = attrs.field(factory=dict)


Handler = Callable[[Request], Awaitable[JsonResponse]]


# -- requests ------------------------------------------------------------------


class LimitedRequest(Request):
    """A request that keeps at most ``max_body`` bytes of its body in memory.

    Twisted reads the whole body before a resource sees the request, into
    memory or a temporary file. Here the bytes past the limit are counted and
    dropped as they arrive, so an oversized upload costs no memory or disk, and
    ``read_json`` answers 413.
    """

    def __init__(self, *args: Any, max_body: int = DEFAULT_MAX_BODY, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_body = max_body
        self.body_size = 0
        self.body_too_large = False
        self._kept = BytesIO()
        self._content_type: Sequence[bytes] | None = None

    def gotLength(self, length: int | None) -> None:
        self._kept = BytesIO()
        self.content = self._kept
        if length is not None and length > self.max_body:
            self.body_too_large = True

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Hides the Content-Type from Twisted's form parsing (which would
        read a form-encoded or multipart POST into ``args``, and answer a
        malformed multipart body with its own bare 400) until ``process``: the
        JSON APIs parse bodies themselves and refuse other types with a 415.
        (Twisted 25.5 has ``Site(parsePOSTFormSubmission=False)`` for this;
        the header dance works on every version.)"""
        headers = self.requestHeaders
        self._content_type = headers.getRawHeaders(b"content-type")
        headers.removeHeader(b"content-type")
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if self._content_type is not None:
            self.requestHeaders.setRawHeaders(b"content-type", self._content_type)
        super().process()

    def handleContentChunk(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.body_too_large:
            return
        if self.body_size > self.max_body:
            self.body_too_large = True
            self._kept = self.content = BytesIO()
            return
        self._kept.write(data)


REQUEST_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/json\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)


def _buffered(chunks: list[bytes]) -> int:
    return sum(map(len, chunks))


class BoundedChannel(HTTPChannel):
    """Twisted's HTTP/1.1 channel with three bounds it lacks.

    * Answers waiting for a slow reader: when the transport's write buffer
      is full, Twisted stops reading only between requests; one in hand when
      the buffer fills lets it go on reading and answering pipelined requests
      into the buffer for ever (about 600 bytes a request). Here a full write
      buffer stops reading and parsing at once, until the peer has read: the
      answers in flight on a connection are what fills the transport's buffer
      (64 KB) and the one being written.
    * Requests read ahead while one is answered on a later turn: see
      ``requestDone``.
    * Time to send a request: from the first byte of a request to the end of
      its body, at most ``request_timeout`` seconds; then 408 and close.
    """

    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    _request_deadline: IDelayedCall | None = None
    _host: IAddress | None = None
    _peer: IAddress | None = None

    # Every Request asks for both addresses; they do not change while the
    # connection lasts, and the local one is a getsockname system call each
    # time (3 us a request, 2 % of reglog's route request).
    def getHost(self) -> IAddress:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> IAddress:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def dataReceived(self, data: bytes) -> None:
        if data and not self._handlingRequest:
            self._start_request_deadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        # Pipelined requests read while another was handled come back
        # through here, not dataReceived.
        self._start_request_deadline()
        super().lineReceived(line)

    def allContentReceived(self) -> None:
        self._cancel_request_deadline()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        super().requestDone(request)
        # Twisted resumes reading after every answer, then starts the next
        # pipelined request from its buffer: with answers that come on a later
        # turn (a Redis-backed store), each answer let in one more read (64
        # KB) and took out one request (100 bytes), so a client that pipelines
        # and never reads grew the buffer without bound. Reading waits until
        # the buffered requests are down to what Twisted itself allows.
        if self._handlingRequest and _buffered(self._dataBuffer) > self._optimisticEagerReadSize:
            self._networkProducer.pauseProducing()
        # Part of the next request came with this one: its time runs now.
        if self._buffer and not self._handlingRequest and self.persistent:
            self._start_request_deadline()

    def pauseProducing(self) -> None:
        """The transport's write buffer is full."""
        super().pauseProducing()
        # Twisted leaves the network running while a request is in hand...
        self._networkProducer.pauseProducing()
        # ...and goes on parsing (and answering) the requests of a read in
        # hand: one 64 KB read held 1,900 pipelined GETs. LineReceiver's own
        # flag keeps them in its buffer until the peer has read.
        self.paused = True

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self.paused:
            self.paused = False
            # The requests held back, before any new read (none comes sooner).
            LineReceiver.dataReceived(self, b"")

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_request_deadline()
        factory = getattr(self, "site", None)
        if isinstance(factory, JsonSite):
            factory.connection_closed()
        super().connectionLost(reason)

    def _start_request_deadline(self) -> None:
        if self._request_deadline is None and self.request_timeout is not None:
            self._request_deadline = self.callLater(self.request_timeout, self._request_too_slow)

    def _cancel_request_deadline(self) -> None:
        if self._request_deadline is not None:
            if self._request_deadline.active():
                self._request_deadline.cancel()
            self._request_deadline = None

    def _request_too_slow(self) -> None:
        self._request_deadline = None
        if self.transport is None:
            return
        body = encode_json(
            error_body(
                "request_timeout",
                f"the request did not arrive whole within {self.request_timeout:g} seconds",
            )
        )
        self.transport.write(REQUEST_TIMEOUT_ANSWER % (len(body), body))
        # Stop parsing whatever else comes; close once the answer is out
        # (or at once if the peer does not read it either).
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.transport.loseConnection()
        self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)


# HTTP/1.1 only, so no ALPN: a factory that offers protocols has TLS set its
# selection callback on the shared context at every connection, which
# pyOpenSSL 25.1+ refuses once the context made one (Twisted 25.5's TLS then
# fails every HTTPS connection after the first).
@implementer_only(IProtocolFactory)
class JsonSite(Site):
    """A Site for JSON APIs: bounded bodies, no form parsing, a sane idle
    timeout, a deadline per request and a cap on open connections."""

    # Twisted's default wraps HTTPChannel for HTTP/2 negotiation, which needs
    # TLS ALPN and the h2 package; these APIs speak HTTP/1.1.
    protocol = BoundedChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        timeout: float = DEFAULT_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        access_log: str | None = None,
        reactor: Any = None,
    ) -> None:
        if max_body < 0:
            raise ValueError("max_body must not be negative")
        if not request_timeout > 0:
            raise ValueError("request_timeout must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        #: Connections open now, those closed at once over the cap (no port
        #: to pause), and how often accepting was paused at the cap.
        self.connections = 0
        self.refused = 0
        self.paused = 0
        self._ports: list[object] = []
        self._accepting = True

        def make_request(*args: Any, **kwargs: Any) -> LimitedRequest:
            return LimitedRequest(*args, max_body=max_body, **kwargs)

        kwargs: dict[str, Any] = {"timeout": timeout, "logPath": access_log}
        if reactor is not None:
            kwargs["reactor"] = reactor
        super().__init__(resource, requestFactory=make_request, **kwargs)
        self.max_body = max_body
        self._access_log = access_log is not None

    def listening_on(self, port: object) -> None:
        """The port this site accepts on. At the cap it stops accepting: the
        next connections wait in the kernel's listen backlog, as a reconnect
        storm's route lookups should, instead of being reset; below the cap it
        accepts again."""
        self._ports.append(port)
        if not self._accepting:
            _switch(port, accepting=False)

    def buildProtocol(self, addr: IAddress) -> BoundedChannel | None:  # type: ignore[override]
        # With its port paused at the cap, the only connections over it are
        # those of the accept burst in hand (Twisted's port accepts a batch
        # per read): served, since they already cost a file descriptor and
        # each has the request deadline. Without a port to pause, refuse.
        if self.connections >= self.max_connections and not self._ports:
            # None: the listening port closes the new socket at once.
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warn(
                    "HTTP connection refused: {open} connections are open, the most "
                    "allowed ({refused} refused so far)",
                    open=self.connections,
                    refused=self.refused,
                )
            return None
        channel: BoundedChannel = super().buildProtocol(addr)
        channel.request_timeout = self.request_timeout
        self.connections += 1
        if self.connections >= self.max_connections:
            self._accept(False)
        return channel

    def connection_closed(self) -> None:
        self.connections -= 1
        if self.connections < self.max_connections:
            self._accept(True)

    def _accept(self, accepting: bool) -> None:
        if accepting == self._accepting:
            return
        self._accepting = accepting
        if not accepting:
            self.paused += 1
        for port in self._ports:
            _switch(port, accepting)

    def log(self, request: Any) -> None:
        # Twisted's default writes one line per request to the global log: on
        # a busy API that is noise on the hot path; a file is written on demand.
        if self._access_log:
            super().log(request)


def _switch(port: object, accepting: bool) -> None:
    """Start or stop accepting on ``port``: a listening port is a file
    descriptor the reactor reads to accept (one that stopped listening is left
    alone)."""
    switch = getattr(port, "startReading" if accepting else "stopReading", None)
    if switch is not None and getattr(port, "connected", True):
        switch()


def _is_json_type(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == JSON_CONTENT_TYPE or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, or 413 ``body_too_large`` past ``max_bytes``."""
    too_large = ApiError(
        413, "body_too_large", f"request body must not be larger than {max_bytes} bytes"
    )
    if getattr(request, "body_too_large", False):
        raise too_large
    declared = request.getHeader(b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise too_large
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large
    return data


def read_json(
    request: Request, max_bytes: int = DEFAULT_MAX_BODY, *, allow_empty: bool = False
) -> Any:
    """The body parsed as JSON (see the module docstring for the errors).

    With ``allow_empty`` an empty body reads as ``None``.
    """
    content_type = request.getHeader(b"content-type")
    if content_type is not None and not _is_json_type(content_type):
        raise ApiError(
            415,
            "unsupported_media_type",
            "request body must be JSON: send Content-Type: application/json",
        )
    data = read_body(request, max_bytes)
    if not data.strip():
        if allow_empty:
            return None
        raise ApiError(400, "bad_json", "request body is empty: send a JSON object")
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise ApiError(
            400,
            "bad_json",
            f"request body is not valid JSON: {error.msg} at line {error.lineno} "
            f"column {error.colno}",
        ) from None
    except UnicodeDecodeError:
        raise ApiError(400, "bad_json", "request body is not UTF-8 encoded JSON") from None
    except RecursionError:
        raise ApiError(400, "bad_json", "request body is nested too deeply") from None
    except ValueError as error:
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {error}") from None


def read_json_object(
    request: Request, max_bytes: int = DEFAULT_MAX_BODY, *, allow_empty: bool = False
) -> dict[str, Any]:
    """The body as a JSON object; an empty body reads as ``{}`` with ``allow_empty``."""
    value = read_json(request, max_bytes, allow_empty=allow_empty)
    if value is None and allow_empty:
        return {}
    if not isinstance(value, dict):
        raise invalid("request body must be a JSON object")
    return value


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None if absent or another scheme."""
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not credentials.strip():
        return None
    try:
        return credentials.strip().decode("ascii")
    except UnicodeDecodeError:
        return None


# -- answers -------------------------------------------------------------------


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON. A lone surrogate (JSON allows ``"\\ud800"``, UTF-8
    cannot carry it) is written as its JSON escape instead of failing."""
    return compact_json(value).encode("utf-8", "backslashreplace")


#: Characters of untrusted text quoted in an error message.
ECHO_LIMIT = 64


def echo(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` fit to quote in an answer: at most ``limit`` characters (then
    ``...``), control characters, quotes, backslashes and lone surrogates as
    JSON escapes (``\\ud800``), so what a client sent cannot break the answer."""
    # Readable text (accents, CJK) stays as it is; only what needs it is escaped.
    escaped = "".join(
        char
        if char.isprintable() and char not in '"\\' and not 0xD800 <= ord(char) <= 0xDFFF
        else json.dumps(char)[1:-1]
        for char in text[:limit]
    )
    return escaped + ("..." if len(text) > limit else "")


def write_json(
    request: Request, status: int, body: Any, headers: Mapping[str, str] | None = None
) -> bytes:
    """Set the status and JSON headers; return the encoded body to write."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
    request.setHeader(b"Cache-Control", b"no-store")
    for name, value in (headers or {}).items():
        request.setHeader(name.encode("ascii"), value.encode("latin-1"))
    return encode_json(body)


def write_error(request: Request, error: ApiError) -> bytes:
    return write_json(request, error.status, error.body(), error.headers)


INTERNAL_ERROR = ApiError(500, "internal_error", "the server failed to handle the request")


def serve(request: Request, handler: Handler) -> int:
    """Run ``handler`` for ``request`` and write its answer; for ``render`` methods.

    Returns ``NOT_DONE_YET``; the answer is written when the handler finishes,
    unless the client has disconnected by then.
    """
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _failure: gone.append(True))

    async def answer() -> None:
        try:
            response = await handler(request)
            body = write_json(request, response.status, response.body, response.headers)
        except ApiError as error:
            body = write_error(request, error)
        except Exception:
            log.failure(
                "Unhandled error answering {method} {path}",
                method=untrusted(request.method),
                path=untrusted(request.path),
            )
            body = write_error(request, INTERNAL_ERROR)
        if gone:
            return
        # A length instead of chunked encoding: less to frame and parse on
        # both ends, for every API answer.
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def unexpected(failure: Failure) -> None:
        log.failure("Could not write an HTTP answer", failure)

    ensureDeferred(answer()).addErrback(unexpected)
    return NOT_DONE_YET


def _not_found(request: Request) -> bytes:
    path = request.path.decode("ascii", "replace")
    if len(path) > 100:
        path = path[:100] + "..."
    return write_error(request, ApiError(404, "not_found", f"no such resource: {path}"))


class JsonResource(Resource):
    """A leaf mapping HTTP methods (``b"GET"``, ``b"POST"``...) to async handlers."""

    isLeaf = True

    def __init__(self, handlers: Mapping[bytes, Handler]) -> None:
        super().__init__()
        self._handlers = dict(handlers)
        if b"GET" in self._handlers and b"HEAD" not in self._handlers:
            # twisted.web drops the body of a HEAD answer by itself.
            self._handlers[b"HEAD"] = self._handlers[b"GET"]

    def render(self, request: Request) -> bytes | int:
        if request.postpath:
            return _not_found(request)
        handler = self._handlers.get(request.method)
        if handler is None:
            allowed = ", ".join(sorted(method.decode("ascii") for method in self._handlers))
            return write_error(
                request,
                ApiError(
                    405,
                    "method_not_allowed",
                    f"{request.method.decode('ascii', 'replace')} is not allowed here; "
                    f"use {allowed}",
                    {"Allow": allowed},
                ),
            )
        return serve(request, handler)


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _not_found(request)


class JsonTree(Resource):
    """A directory of resources: unknown paths answer 404 ``not_found`` in JSON."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return _not_found(request)
