"""support/openapi.py: openapi-core's response validation plus the project's
rules, on a small document of its own (docs/openapi/*.json change apart)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from support.openapi import OpenAPIDocument, OpenAPIMismatch

ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "t", "version": "1"},
    "servers": [{"url": "http://127.0.0.1:8200"}],
    "paths": {
        "/items/batch": {"post": {"responses": {"204": {"description": "done"}}}},
        "/items/{id}": {
            "get": {
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "an item",
                        "headers": {"ETag": {"required": True, "schema": {"type": "string"}}},
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["at"],
                                    "properties": {"at": {"type": "string", "format": "date-time"}},
                                },
                                "example": {"at": "2026-01-01T00:00:00Z"},
                            }
                        },
                    },
                    "4XX": {"description": "refused", "content": JSON_ERROR},
                },
            }
        },
    },
    "components": {
        "schemas": {"Error": ERROR},
        "responses": {
            "NotFound": {"description": "no such path", "content": JSON_ERROR},
            "MethodNotAllowed": {"description": "no such method", "content": JSON_ERROR},
        },
    },
}
JSON = {"Content-Type": "application/json"}
AN_ERROR = json.dumps({"error": "x", "message": "y"}).encode()


def check(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Any:
    return OpenAPIDocument(DOCUMENT).check_response(method, path, status, headers, body)


def test_a_described_answer_is_parsed() -> None:
    body = b'{"at": "2026-01-01T00:00:00Z"}'
    answer = check("GET", "/items/a?x=1", 200, {**JSON, "ETag": '"1"'}, body)
    assert answer == {"at": "2026-01-01T00:00:00Z"}
    assert check("GET", "/items/a", 409, JSON, AN_ERROR) == {"error": "x", "message": "y"}
    assert check("POST", "/items/batch", 204, {}, b"") is None


@pytest.mark.parametrize(
    ("method", "path", "status", "headers", "body", "message"),
    [
        ("GET", "/items/a", 500, JSON, AN_ERROR, "500"),
        ("GET", "/items/a", 200, JSON, b'{"at": "2026-01-01T00:00:00Z"}', "ETag"),
        ("GET", "/items/a", 200, {**JSON, "ETag": "1"}, b'{"at": "yesterday"}', "date-time"),
        ("GET", "/items/a", 404, {"Content-Type": "text/plain"}, b"no", "text/plain"),
        ("GET", "/nowhere", 200, JSON, AN_ERROR, "expected 404, got 200"),
        ("GET", "/nowhere", 404, JSON, b'{"error": "x"}', "message"),
        ("GET", "/items/batch", 404, JSON, AN_ERROR, "expected 405, got 404"),
        ("POST", "/items/batch", 204, {}, b"{}", "lists no body"),
    ],
)
def test_a_mismatch_says_what_differs(
    method: str, path: str, status: int, headers: dict[str, str], body: bytes, message: str
) -> None:
    with pytest.raises(OpenAPIMismatch, match=message):
        check(method, path, status, headers, body)


def test_an_undescribed_method_of_a_concrete_path_is_405() -> None:
    """GET /items/batch is not GET /items/{id}: the concrete path wins."""
    assert check("GET", "/items/batch", 405, JSON, AN_ERROR) == {"error": "x", "message": "y"}


def test_the_document_rules() -> None:
    OpenAPIDocument(DOCUMENT).check_document()
    wrong_example = copy.deepcopy(DOCUMENT)
    media = wrong_example["paths"]["/items/{id}"]["get"]["responses"]["200"]["content"]
    media["application/json"]["example"] = {"at": 3}
    with pytest.raises(OpenAPIMismatch, match="example"):
        OpenAPIDocument(wrong_example).check_document()
    old = {**DOCUMENT, "openapi": "3.0.3"}
    with pytest.raises(OpenAPIMismatch):
        OpenAPIDocument(old).check_document()
    invalid = {**DOCUMENT, "paths": {"/x": {"get": {"responses": {"200": {}}}}}}
    with pytest.raises(OpenAPIMismatch):
        OpenAPIDocument(invalid)  # no description: openapi-spec-validator refuses it
