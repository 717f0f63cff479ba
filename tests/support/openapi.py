"""Keep an OpenAPI 3.1 document true: check real HTTP answers against it.

``OpenAPIDocument.load(path)`` reads a JSON document (docs/openapi/*.json).

``check_document()``
    the document itself: OpenAPI 3.1, every schema a valid JSON Schema 2020-12,
    every example valid against its schema.
``check_response(method, path, status, headers, body)``
    one real answer. For an operation the document describes, the status must be
    listed (exactly, as ``4XX`` or as ``default``), the ``Content-Type`` must be one
    of the listed media types, a JSON body must match the schema and the headers
    marked ``required`` must be present. A path the document does not describe
    must answer 404 with ``components/responses/NotFound``, a method it does not
    describe for a described path 405 with ``components/responses/MethodNotAllowed``
    (when the document defines them). Returns the parsed body.
``check_request(method, path, content_type, body)``
    a request body about to be sent (for well-formed requests).

``CheckedClient(reactor, base_url, document)`` is a small treq client whose every
answer goes through ``check_response``; ``close()`` it at the end of the test.

Mismatches raise ``OpenAPIMismatch`` (an AssertionError) saying what differs.
Schemas are checked with ``jsonschema`` (Draft 2020-12, the dialect of OpenAPI
3.1); ``$ref`` to ``#/components/...`` resolves inside the document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
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


@attrs.frozen
class _Operation:
    template: str
    method: str
    pointer: str  # JSON pointer of the operation object
    spec: Mapping[str, Any]


class OpenAPIDocument:
    def __init__(self, document: Mapping[str, Any], name: str = "document") -> None:
        self.document = document
        self.name = name
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_DOCUMENT_URI, resource)
        self._templates = [
            (template, self._template_regex(template)) for template in document.get("paths", {})
        ]

    @classmethod
    def load(cls, path: str | Path) -> OpenAPIDocument:
        path = Path(path)
        return cls(json.loads(path.read_text("utf-8")), name=path.name)

    # -- lookup ----------------------------------------------------------------

    @staticmethod
    def _template_regex(template: str) -> re.Pattern[str]:
        parts = re.split(r"(\{[^}/]+\})", template)
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
        return re.compile(pattern)

    def _template(self, path: str) -> str | None:
        path = urlsplit(path).path or "/"
        for template, regex in self._templates:
            if regex.fullmatch(path):
                return template
        return None

    def _operation(self, method: str, path: str) -> _Operation | None:
        template = self._template(path)
        if template is None:
            return None
        spec = self.document["paths"][template].get(method.lower())
        if spec is None:
            return None
        return _Operation(
            template, method.lower(), _pointer("paths", template, method.lower()), spec
        )

    def _validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator(
            {"$ref": f"{_DOCUMENT_URI}#{pointer}"},
            registry=self._registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )

    def _validate(self, value: Any, pointer: str, what: str) -> None:
        errors = sorted(self._validator(pointer).iter_errors(value), key=lambda e: list(e.path))
        if errors:
            details = "; ".join(
                f"at {'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
                for error in errors[:5]
            )
            raise OpenAPIMismatch(f"{what} does not match {self.name}{pointer}: {details}")

    # -- the document ------------------------------------------------------------

    def _schemas(self) -> Iterator[tuple[str, Any]]:
        """(pointer, schema) of every schema the document holds."""
        for name, schema in self.document.get("components", {}).get("schemas", {}).items():
            yield _pointer("components", "schemas", name), schema
        for pointer, media in self._media_objects():
            if "schema" in media:
                yield pointer + "/schema", media["schema"]

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

    def check_document(self) -> None:
        version = str(self.document.get("openapi", ""))
        if not version.startswith("3.1."):
            raise OpenAPIMismatch(f"{self.name}: expected an OpenAPI 3.1 document, not {version!r}")
        for pointer, schema in self._schemas():
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as error:
                raise OpenAPIMismatch(
                    f"{self.name}{pointer}: invalid schema: {error.message}"
                ) from None
        for pointer, media in self._media_objects():
            if "schema" not in media:
                continue
            if "example" in media:
                self._validate(media["example"], pointer + "/schema", f"example at {pointer}")
            for name, example in media.get("examples", {}).items():
                self._validate(
                    example["value"], pointer + "/schema", f"example {name!r} at {pointer}"
                )
        for template, item in self.document.get("paths", {}).items():
            for method in _METHODS:
                if method in item and not item[method].get("responses"):
                    raise OpenAPIMismatch(
                        f"{self.name}: {method.upper()} {template} has no responses"
                    )
        resolver = self._registry.resolver(_DOCUMENT_URI)
        for ref in sorted(set(_refs(self.document))):
            try:
                resolver.lookup(ref)
            except Unresolvable:
                raise OpenAPIMismatch(f"{self.name}: $ref {ref!r} does not resolve") from None

    # -- answers -----------------------------------------------------------------

    def _response_for(self, method: str, path: str, status: int) -> tuple[Mapping[str, Any], str]:
        operation = self._operation(method, path)
        if operation is not None:
            responses = operation.spec.get("responses", {})
            for key in (str(status), f"{str(status)[0]}XX", "default"):
                if key in responses:
                    return responses[key], operation.pointer + _pointer("responses", key)
            raise OpenAPIMismatch(
                f"{method.upper()} {path} answered {status}, which {self.name} does not list "
                f"for {method.upper()} {operation.template} (it lists {', '.join(responses)})"
            )
        known_path = self._template(path) is not None
        expected, name = (405, "MethodNotAllowed") if known_path else (404, "NotFound")
        if status != expected:
            raise OpenAPIMismatch(
                f"{method.upper()} {path} is not in {self.name}: expected {expected}, got {status}"
            )
        fallback = self.document.get("components", {}).get("responses", {}).get(name)
        if fallback is None:
            raise OpenAPIMismatch(
                f"{method.upper()} {path} is not in {self.name} (and it has no "
                f"components/responses/{name} for it)"
            )
        return fallback, _pointer("components", "responses", name)

    def check_response(
        self,
        method: str,
        path: str,
        status: int,
        headers: Mapping[str, str] | Headers,
        body: bytes,
    ) -> Any:
        response, pointer = self._response_for(method, path, status)
        lookup = _header_lookup(headers)
        for name, header in response.get("headers", {}).items():
            if header.get("required") and lookup(name) is None:
                raise OpenAPIMismatch(
                    f"{method.upper()} {path} -> {status}: header {name} missing ({pointer})"
                )
        content = response.get("content", {})
        if not content:
            if body:
                raise OpenAPIMismatch(
                    f"{method.upper()} {path} -> {status}: {self.name}{pointer} has no body, "
                    f"got {body[:80]!r}"
                )
            return None
        if method.upper() == "HEAD":
            return None
        media_type = _media_type(lookup("content-type"))
        if media_type not in content:
            raise OpenAPIMismatch(
                f"{method.upper()} {path} -> {status}: Content-Type {media_type!r} is not one of "
                f"{', '.join(content)} ({pointer})"
            )
        media_pointer = pointer + _pointer("content", media_type)
        if _is_json(media_type):
            try:
                value = json.loads(body)
            except ValueError as error:
                raise OpenAPIMismatch(
                    f"{method.upper()} {path} -> {status}: body is not JSON ({error}): "
                    f"{body[:80]!r}"
                ) from None
        else:
            value = body.decode("utf-8")
        if "schema" in content[media_type]:
            self._validate(
                value, media_pointer + "/schema", f"{method.upper()} {path} -> {status} body"
            )
        return value

    def check_request(self, method: str, path: str, content_type: str, body: Any) -> None:
        operation = self._operation(method, path)
        if operation is None:
            raise OpenAPIMismatch(f"{method.upper()} {path} is not in {self.name}")
        request_body = operation.spec.get("requestBody")
        if request_body is None:
            raise OpenAPIMismatch(f"{method.upper()} {path} takes no body in {self.name}")
        media_type = _media_type(content_type)
        if media_type not in request_body.get("content", {}):
            raise OpenAPIMismatch(f"{method.upper()} {path} does not take {media_type}")
        pointer = operation.pointer + "/requestBody" + _pointer("content", media_type) + "/schema"
        self._validate(body, pointer, f"request body of {method.upper()} {path}")


def _refs(value: Any) -> Iterator[str]:
    """Every ``$ref`` in a document."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


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
        check_request: bool = False,
    ) -> Answer:
        """Send a request; ``json_body`` is sent as JSON, ``data`` as raw bytes."""
        import treq

        send_headers = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            send_headers.setdefault("Content-Type", "application/json")
            if check_request:
                self.document.check_request(method, path, "application/json", json_body)
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
