"""Keep an OpenAPI 3.1 document true: check real HTTP answers against it.

``OpenAPIDocument.load(path)`` reads a JSON document (docs/openapi/*.json);
openapi-core validates it (openapi-spec-validator) and, in ``check_response``,
validates each real answer: the operation, the status (exact, ``4XX`` or
``default``), the media type, the body against its schema (formats included)
and the headers marked ``required``.

On top of that, the project's own rules:

``check_document()``
    the document is OpenAPI 3.1, every operation lists its responses and every
    example is valid against its schema (JSON Schema 2020-12, the dialect of
    OpenAPI 3.1; ``$ref`` to ``#/components/...`` resolves in the document).
``check_response(method, path, status, headers, body)``
    a path the document does not describe must answer 404 with
    ``components/responses/NotFound``, a method it does not describe for a
    described path 405 with ``components/responses/MethodNotAllowed``; a response
    without content must have no body. Returns the parsed body (JSON, or text).

``CheckedClient(reactor, base_url, document)`` is a small treq client whose every
answer goes through ``check_response``; ``close()`` it at the end of the test.

Mismatches raise ``OpenAPIMismatch`` (an AssertionError) saying what differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from jsonschema import Draft202012Validator
from openapi_core import OpenAPI
from openapi_core.exceptions import OpenAPIError
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.templating.paths.finders import APICallPathFinder
from openapi_core.templating.responses.finders import ResponseFinder
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from twisted.web.http_headers import Headers

_DOCUMENT_URI = "urn:pigeonpush:openapi"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class OpenAPIMismatch(AssertionError):
    """A real answer (or the document itself) does not match the document."""


def _pointer(*parts: str) -> str:
    return "/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def _media_type(content_type: str | None) -> str | None:
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


class OpenAPIDocument:
    def __init__(self, document: Mapping[str, Any], name: str = "document") -> None:
        self.document = document
        self.name = name
        try:
            self._openapi = OpenAPI.from_dict(dict(document))
        except OpenAPIValidationError as error:
            raise OpenAPIMismatch(f"{name}: {error}") from None
        servers = document.get("servers") or [{"url": "http://localhost"}]
        #: answers are matched as if they came from the document's first server
        self._server = str(servers[0]["url"]).rstrip("/")
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_DOCUMENT_URI, resource)

    @classmethod
    def load(cls, path: str | Path) -> OpenAPIDocument:
        path = Path(path)
        return cls(json.loads(path.read_text("utf-8")), name=path.name)

    # -- the document (the project's rules) --------------------------------------

    def _media_objects(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        def media_of(pointer: str, holder: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
            for media_type, media in holder.get("content", {}).items():
                yield pointer + _pointer("content", media_type), media

        for name, response in self.document.get("components", {}).get("responses", {}).items():
            yield from media_of(_pointer("components", "responses", name), response)
        for template, item in self.document.get("paths", {}).items():
            for method in _METHODS:
                operation = item.get(method)
                if operation is None:
                    continue
                base = _pointer("paths", template, method)
                if "requestBody" in operation:
                    yield from media_of(base + "/requestBody", operation["requestBody"])
                for status, response in operation.get("responses", {}).items():
                    yield from media_of(base + _pointer("responses", status), response)

    def _validate(self, value: Any, pointer: str, what: str) -> None:
        validator = Draft202012Validator(
            {"$ref": f"{_DOCUMENT_URI}#{pointer}"},
            registry=self._registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            details = "; ".join(
                f"at {'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
                for error in errors[:5]
            )
            raise OpenAPIMismatch(f"{what} does not match {self.name}{pointer}: {details}")

    def check_document(self) -> None:
        version = str(self.document.get("openapi", ""))
        if not version.startswith("3.1."):
            raise OpenAPIMismatch(f"{self.name}: expected an OpenAPI 3.1 document, not {version!r}")
        for template, item in self.document.get("paths", {}).items():
            for method in _METHODS:
                if method in item and not item[method].get("responses"):
                    raise OpenAPIMismatch(
                        f"{self.name}: {method.upper()} {template} has no responses"
                    )
        for pointer, media in self._media_objects():
            if "schema" not in media:
                continue
            examples = {"example": media["example"]} if "example" in media else {}
            examples.update(
                {
                    repr(name): example["value"]
                    for name, example in media.get("examples", {}).items()
                }
            )
            for name, example in examples.items():
                self._validate(example, pointer + "/schema", f"{name} at {pointer}")

    # -- answers -----------------------------------------------------------------

    def _fallback(self, method: str, path: str, status: int, error: OpenAPIError) -> str:
        """An undescribed path answers 404, an undescribed method 405, with the
        document's ``NotFound`` / ``MethodNotAllowed`` response: its pointer."""
        expected, name = (
            (404, "NotFound") if isinstance(error, PathNotFound) else (405, "MethodNotAllowed")
        )
        if status != expected:
            raise OpenAPIMismatch(
                f"{method.upper()} {path} is not in {self.name}: expected {expected}, got {status}"
            )
        if name not in self.document.get("components", {}).get("responses", {}):
            raise OpenAPIMismatch(
                f"{method.upper()} {path} is not in {self.name} (and it has no "
                f"components/responses/{name} for it)"
            )
        return _pointer("components", "responses", name)

    def check_response(
        self,
        method: str,
        path: str,
        status: int,
        headers: Mapping[str, str] | Headers,
        body: bytes,
    ) -> Any:
        what = f"{method.upper()} {path} -> {status}"
        content_type = _header_lookup(headers)("content-type")
        url = self._server + (urlsplit(path).path or "/")
        request = MockRequest(self._server, method.lower(), urlsplit(path).path or "/")
        response = MockResponse(
            body, status_code=status, headers=_header_dict(headers), content_type=content_type or ""
        )
        fallback: str | None = None
        try:
            # A concrete path is matched before a template (OpenAPI's rule),
            # also for a method it does not describe.
            concrete = self.document.get("paths", {}).get(request.path)
            if concrete is not None and method.lower() not in concrete:
                raise OperationNotFound(request.path, method.lower())
            self._openapi.validate_response(request, response)
        except (PathNotFound, OperationNotFound) as error:
            fallback = self._fallback(method, path, status, error)
        except OpenAPIError as error:
            cause = f" ({error.__cause__})" if error.__cause__ else ""
            raise OpenAPIMismatch(f"{what}: {self.name}: {error}{cause}") from None
        if fallback is None:
            found = APICallPathFinder(self._openapi.spec).find(method.lower(), url)
            matched = ResponseFinder(found.operation / "responses").find(str(status))
            media_types = list((matched / "content").keys()) if "content" in matched else []
        else:
            spec = _resolve_pointer(self.document, fallback)
            media_types = list(spec.get("content", {}))
        if not media_types:
            if body:
                raise OpenAPIMismatch(f"{what}: {self.name} lists no body, got {body[:80]!r}")
            return None
        if method.upper() == "HEAD":
            return None
        media_type = _media_type(content_type)
        if fallback is not None and media_type not in media_types:
            raise OpenAPIMismatch(
                f"{what}: Content-Type {media_type!r} is not one of {', '.join(media_types)}"
            )
        if not _is_json(media_type):
            value: Any = body.decode("utf-8")
        else:
            try:
                value = json.loads(body)
            except ValueError as error:
                raise OpenAPIMismatch(
                    f"{what}: body is not JSON ({error}): {body[:80]!r}"
                ) from None
        if fallback is not None:  # openapi-core checked the described answers' bodies
            schema = fallback + _pointer("content", media_type, "schema")
            self._validate(value, schema, f"{what} body")
        return value


def _resolve_pointer(document: Mapping[str, Any], pointer: str) -> Mapping[str, Any]:
    value: Any = document
    for part in pointer.lstrip("/").split("/"):
        value = value[part.replace("~1", "/").replace("~0", "~")]
    return value


def _header_dict(headers: Mapping[str, str] | Headers) -> dict[str, str]:
    if isinstance(headers, Headers):
        return {
            name.decode("latin-1"): values[-1].decode("latin-1")
            for name, values in headers.getAllRawHeaders()
        }
    return dict(headers)


def _header_lookup(headers: Mapping[str, str] | Headers) -> Any:
    if isinstance(headers, Headers):

        def from_twisted(name: str) -> str | None:
            values = headers.getRawHeaders(name)
            return None if not values else values[-1]

        return from_twisted
    lowered = {key.lower(): value for key, value in headers.items()}
    return lambda name: lowered.get(name.lower())


# -- a checked HTTP client ------------------------------------------------------------


@attrs.frozen
class Answer:
    """One checked HTTP answer."""

    status: int
    headers: Headers
    body: bytes
    json: Any  #: the parsed body (text for non-JSON media types)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if not values else values[-1]


class CheckedClient:
    """treq over its own connection pool; every answer is checked against ``document``."""

    def __init__(self, reactor: Any, base_url: str, document: OpenAPIDocument) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.base_url = base_url.rstrip("/")
        self.document = document
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._http = HTTPClient(Agent(reactor, pool=self._pool))
        #: every answer seen, in order (for tests that look back)
        self.answers: list[tuple[str, str, Answer]] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send a request; ``json_body`` is sent as JSON, ``data`` as raw bytes."""
        import treq

        send_headers = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            send_headers.setdefault("Content-Type", "application/json")
        response = await self._http.request(
            method,
            self.base_url + path,
            data=data,
            headers={name: [value] for name, value in send_headers.items()},
        )
        body = await treq.content(response)
        value = self.document.check_response(method, path, response.code, response.headers, body)
        answer = Answer(response.code, response.headers, body, value)
        self.answers.append((method, path, answer))
        return answer

    async def post(self, path: str, json_body: Any = None, **kwargs: Any) -> Answer:
        return await self.request("POST", path, json_body=json_body, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> Answer:
        return await self.request("GET", path, **kwargs)

    async def close(self) -> None:
        await self._pool.closeCachedConnections()
