"""pigeonpush.http: JSON in and out over real HTTP on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from pigeonpush.http import (
    ApiError,
    JsonResource,
    JsonResponse,
    JsonSite,
    JsonTree,
    LimitedRequest,
    bearer_token,
    invalid,
    read_json,
    read_json_object,
)
from support.waiting import wait_for

#: Large enough for a body nested past every supported Python's parser limit.
MAX_BODY = 65536


@attrs.define
class Handlers:
    """The test resources' handlers, and what they saw."""

    stalled: list[Deferred[None]] = attrs.Factory(list)
    gone: list[Request] = attrs.Factory(list)

    async def echo(self, request: Request) -> JsonResponse:
        return JsonResponse({"got": read_json_object(request, MAX_BODY)})

    async def echo_any(self, request: Request) -> JsonResponse:
        return JsonResponse({"got": read_json(request, MAX_BODY)})

    async def optional(self, request: Request) -> JsonResponse:
        return JsonResponse({"got": read_json_object(request, MAX_BODY, allow_empty=True)})

    async def token(self, request: Request) -> JsonResponse:
        return JsonResponse({"token": bearer_token(request)})

    async def teapot(self, request: Request) -> JsonResponse:
        raise ApiError(503, "no_server", "no push server is alive", {"Retry-After": "1"})

    async def created(self, request: Request) -> JsonResponse:
        return JsonResponse({"id": "é"}, status=201, headers={"Location": "/things/1"})

    async def boom(self, request: Request) -> JsonResponse:
        raise RuntimeError("handler bug")

    async def stall(self, request: Request) -> JsonResponse:
        request.notifyFinish().addErrback(lambda _: self.gone.append(request))
        waiting: Deferred[None] = Deferred()
        self.stalled.append(waiting)
        await waiting
        return JsonResponse({"late": True})


def build_tree(handlers: Handlers) -> JsonTree:
    root = JsonTree()
    api = JsonTree()
    root.putChild(b"api", api)
    api.putChild(b"echo", JsonResource({b"POST": handlers.echo}))
    api.putChild(b"any", JsonResource({b"POST": handlers.echo_any}))
    api.putChild(b"optional", JsonResource({b"POST": handlers.optional}))
    api.putChild(b"token", JsonResource({b"GET": handlers.token}))
    api.putChild(b"teapot", JsonResource({b"POST": handlers.teapot}))
    api.putChild(b"created", JsonResource({b"POST": handlers.created, b"PUT": handlers.created}))
    api.putChild(b"boom", JsonResource({b"POST": handlers.boom}))
    api.putChild(b"stall", JsonResource({b"GET": handlers.stall}))
    return root


@attrs.define
class Served:
    url: str
    port: int
    handlers: Handlers
    site: JsonSite


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class _RawClient(Protocol):
    def __init__(self, payload: bytes, done: Deferred[bytes]) -> None:
        self.payload = payload
        self.done = done
        self.received = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.received)


async def raw_exchange(port: int, payload: bytes) -> Reply:
    """Send bytes as they are (chunked bodies, odd headers); read until the server closes."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    done: Deferred[bytes] = Deferred()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    await endpoint.connect(Factory.forProtocol(lambda: _RawClient(payload, done)))
    done.addTimeout(10, reactor)
    raw = await done
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return Reply(status, headers, body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def request_bytes(
    method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


async def call(
    served: Served,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    return await raw_exchange(served.port, request_bytes(method, path, body, headers))


JSON = {"Content-Type": "application/json"}


@pytest_twisted.async_yield_fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    handlers = Handlers()
    site = JsonSite(build_tree(handlers), max_body=MAX_BODY, reactor=reactor)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    number = port.getHost().port
    yield Served(f"http://127.0.0.1:{number}", number, handlers, site)
    for waiting in handlers.stalled:
        if not waiting.called:
            waiting.callback(None)
    await port.stopListening()


# -- JSON in ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_json_object_is_read_and_answered_as_compact_json(served: Served) -> None:
    reply = await call(served, "POST", "/api/echo", b'{"a": [1, 2.5, null], "b": "\xc3\xa9"}', JSON)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    assert reply.body == '{"got":{"a":[1,2.5,null],"b":"é"}}'.encode()
    # A length, not chunks: cheaper to frame and to parse for every client.
    assert reply.headers["content-length"] == str(len(reply.body))
    assert "transfer-encoding" not in reply.headers


@pytest_twisted.ensureDeferred
async def test_json_content_types_with_parameters_or_suffix_and_no_type_are_accepted(
    served: Served,
) -> None:
    for headers in (
        {"Content-Type": "application/json; charset=utf-8"},
        {"Content-Type": "Application/JSON"},
        {"Content-Type": "application/merge-patch+json"},
        {},
    ):
        reply = await call(served, "POST", "/api/echo", b'{"x": 1}', headers)
        assert (reply.status, reply.json) == (200, {"got": {"x": 1}}), headers


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"clientId": ', "not valid JSON: Expecting value at line 1 column 14"),
        (b"{'single': 'quotes'}", "not valid JSON"),
        (b'{"a": 1} trailing', "not valid JSON: Extra data"),
        (b'{"a": "\xff\xfe"}', "not UTF-8"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": Infinity}', "Infinity is not a JSON number"),
        # Python 3.13's parser takes a few thousand levels; 20,000 is too deep
        # for every supported version.
        (b"[" * 20000 + b"]" * 20000, "nested too deeply"),
        (b"", "body is empty"),
        (b"  \r\n ", "body is empty"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_json_is_400_bad_json(served: Served, body: bytes, fragment: str) -> None:
    reply = await call(served, "POST", "/api/echo", body, JSON)
    assert reply.status == 400
    assert reply.json["error"] == "bad_json"
    assert fragment in reply.json["message"]
    assert set(reply.json) == {"error", "message"}


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"3", b"null", b"true"])
@pytest_twisted.ensureDeferred
async def test_json_that_is_not_an_object_is_400_invalid(served: Served, body: bytes) -> None:
    reply = await call(served, "POST", "/api/echo", body, JSON)
    assert reply.status == 400
    assert reply.json == {"error": "invalid", "message": "request body must be a JSON object"}


@pytest_twisted.ensureDeferred
async def test_read_json_takes_any_json_value(served: Served) -> None:
    reply = await call(served, "POST", "/api/any", b"[1, 2]", JSON)
    assert reply.json == {"got": [1, 2]}


@pytest_twisted.ensureDeferred
async def test_an_optional_body_may_be_empty(served: Served) -> None:
    assert (await call(served, "POST", "/api/optional", b"", JSON)).json == {"got": {}}
    assert (await call(served, "POST", "/api/optional")).json == {"got": {}}
    reply = await call(served, "POST", "/api/optional", b'{"k": "v"}', JSON)
    assert reply.json == {"got": {"k": "v"}}
    reply = await call(served, "POST", "/api/optional", b"[]", JSON)
    assert reply.json["error"] == "invalid"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_json_is_415(served: Served, content_type: str) -> None:
    reply = await call(served, "POST", "/api/echo", b'{"a": 1}', {"Content-Type": content_type})
    assert reply.status == 415
    assert reply.json == {
        "error": "unsupported_media_type",
        "message": "request body must be JSON: send Content-Type: application/json",
    }


# -- the body limit ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_body_at_the_limit_is_read(served: Served) -> None:
    filler = "x" * (MAX_BODY - len('{"f": ""}'))
    body = json.dumps({"f": filler}, separators=(", ", ": ")).encode()
    assert len(body) == MAX_BODY
    reply = await call(served, "POST", "/api/echo", body, JSON)
    assert reply.status == 200
    assert reply.json == {"got": {"f": filler}}


@pytest_twisted.ensureDeferred
async def test_a_declared_oversized_body_is_413(served: Served) -> None:
    body = b'{"f": "' + b"x" * MAX_BODY + b'"}'
    reply = await call(served, "POST", "/api/echo", body, JSON)
    assert reply.status == 413
    assert reply.json == {
        "error": "body_too_large",
        "message": f"request body must not be larger than {MAX_BODY} bytes",
    }


@pytest_twisted.ensureDeferred
async def test_an_oversized_chunked_body_is_413(served: Served) -> None:
    chunk = b"x" * 1000
    count = MAX_BODY // len(chunk) + 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(count)) + b"0\r\n\r\n"
    payload = request_bytes(
        "POST",
        "/api/echo",
        b"",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    reply = await raw_exchange(served.port, payload + chunks)
    assert reply.status == 413
    assert reply.json["error"] == "body_too_large"


def test_a_limited_request_keeps_no_more_than_the_limit_in_memory() -> None:
    request = LimitedRequest(DummyChannel(), max_body=10)
    request.gotLength(None)
    request.handleContentChunk(b"12345678")
    assert request.content.getvalue() == b"12345678"
    request.handleContentChunk(b"9abc")
    request.handleContentChunk(b"d" * 100_000)
    assert request.body_too_large
    assert request.body_size == 100_012
    assert request.content.getvalue() == b""


def test_a_limited_request_refuses_a_declared_length_over_the_limit_at_once() -> None:
    request = LimitedRequest(DummyChannel(), max_body=10)
    request.gotLength(11)
    request.handleContentChunk(b"x" * 11)
    assert request.body_too_large
    assert request.content.getvalue() == b""


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_body"):
        JsonSite(JsonTree(), max_body=-1)


# -- answers ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_handler_sets_status_and_headers(served: Served) -> None:
    reply = await call(served, "POST", "/api/created", b"{}", JSON)
    assert reply.status == 201
    assert reply.headers["location"] == "/things/1"
    assert reply.json == {"id": "é"}


@pytest_twisted.ensureDeferred
async def test_an_api_error_is_answered_in_the_project_format(served: Served) -> None:
    reply = await call(served, "POST", "/api/teapot", b"{}", JSON)
    assert reply.status == 503
    assert reply.headers["retry-after"] == "1"
    assert reply.headers["content-type"] == "application/json"
    assert reply.json == {"error": "no_server", "message": "no push server is alive"}


def test_an_error_code_outside_the_vocabulary_or_its_status_is_refused() -> None:
    with pytest.raises(ValueError, match="'teapot' is not an error code of status 418"):
        ApiError(418, "teapot", "this is a teapot")
    with pytest.raises(ValueError, match="'invalid' is not an error code of status 422"):
        ApiError(422, "invalid", "a status of its own")


def test_invalid_names_the_field_when_one_is_to_blame() -> None:
    assert invalid("ttl must be a number", "ttl").body() == {
        "error": "invalid",
        "message": "ttl must be a number",
        "field": "ttl",
    }
    assert invalid("request body must be a JSON object").body() == {
        "error": "invalid",
        "message": "request body must be a JSON object",
    }
    assert invalid("x").status == 400


@pytest_twisted.ensureDeferred
async def test_an_unexpected_error_is_500_and_logged(served: Served, logged_failures: Any) -> None:
    reply = await call(served, "POST", "/api/boom", b"{}", JSON)
    assert reply.status == 500
    assert reply.json == {
        "error": "internal_error",
        "message": "the server failed to handle the request",
    }
    assert "handler bug" not in reply.body.decode()
    (failure,) = logged_failures.flush(RuntimeError)
    assert str(failure.value) == "handler bug"


@pytest_twisted.ensureDeferred
async def test_another_method_is_405_with_allow(served: Served) -> None:
    reply = await call(served, "GET", "/api/echo")
    assert reply.status == 405
    assert reply.headers["allow"] == "POST"
    assert reply.json == {
        "error": "method_not_allowed",
        "message": "GET is not allowed here; use POST",
    }
    reply = await call(served, "DELETE", "/api/created")
    assert reply.headers["allow"] == "POST, PUT"


@pytest_twisted.ensureDeferred
async def test_head_is_served_like_get_without_a_body(served: Served) -> None:
    reply = await call(served, "HEAD", "/api/token")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.body == b""


@pytest.mark.parametrize("path", ["/", "/nothing", "/api", "/api/nothing", "/api/echo/extra"])
@pytest_twisted.ensureDeferred
async def test_unknown_paths_are_404_in_json(served: Served, path: str) -> None:
    reply = await call(served, "POST", path, b"{}", JSON)
    assert reply.status == 404
    assert reply.json == {"error": "not_found", "message": f"no such resource: {path}"}


@pytest_twisted.ensureDeferred
async def test_a_long_unknown_path_is_shortened_in_the_message(served: Served) -> None:
    path = "/" + "p" * 500
    reply = await call(served, "GET", path)
    assert reply.status == 404
    assert reply.json["message"] == "no such resource: " + path[:100] + "..."


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.DEF-123", "abc.DEF-123"),
        ("bearer   spaced  ", "spaced"),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("Bearer ", None),
        (None, None),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bearer_token(served: Served, header: str | None, token: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    reply = await call(served, "GET", "/api/token", None, headers)
    assert reply.json == {"token": token}


@pytest_twisted.ensureDeferred
async def test_an_answer_after_the_client_left_is_dropped_quietly(served: Served) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    done: Deferred[bytes] = Deferred()
    client = _RawClient(request_bytes("GET", "/api/stall"), done)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", served.port, timeout=5)
    await endpoint.connect(Factory.forProtocol(lambda: client))
    await wait_for(lambda: served.handlers.stalled, timeout=5, what="the handler to start")
    assert client.transport is not None
    client.transport.loseConnection()
    await wait_for(lambda: served.handlers.gone, timeout=5, what="the server to see the client go")
    served.handlers.stalled[0].callback(None)
    # Nothing is written and nothing logged (logged_failures checks the log).
    assert await done == b""


# -- the site ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_access_log_line_per_request_by_default(served: Served) -> None:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await call(served, "POST", "/api/echo", b"{}", JSON)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [event for event in events if "/api/echo" in (formatEvent(event) or "")]


@pytest_twisted.ensureDeferred
async def test_an_access_log_file_gets_a_line_per_request(tmp_path: Path) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    log_path = tmp_path / "access.log"
    site = JsonSite(build_tree(Handlers()), access_log=str(log_path), reactor=reactor)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    try:
        await raw_exchange(port.getHost().port, request_bytes("POST", "/api/echo", b"{}", JSON))
    finally:
        await port.stopListening()
    assert '"POST /api/echo HTTP/1.1" 200' in log_path.read_text()
