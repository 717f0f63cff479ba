"""One error vocabulary for both HTTP APIs (``pigeonpush.http.ERROR_CODES``),
stated once in each OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pigeonpush.http import ERROR_CODES, ApiError, checked_identifier, invalid
from pigeonpush.identifiers import CLIENT_ID, TOPIC

OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi"
DOCUMENTS = {
    name: json.loads((OPENAPI / f"{name}.json").read_text()) for name in ("reglog", "notification")
}


def _error_enums(node: Any) -> Iterator[list[str]]:
    """The ``error`` enums that narrow ``Error`` in one response."""
    if isinstance(node, dict):
        error = node.get("properties", {}).get("error") if "properties" in node else None
        if isinstance(error, dict) and "enum" in error:
            yield error["enum"]
        for value in node.values():
            yield from _error_enums(value)
    elif isinstance(node, list):
        for value in node:
            yield from _error_enums(value)


def _responses(document: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                for status, response in operation["responses"].items():
                    yield f"{method.upper()} {path}", status, response
    for name, response in document["components"].get("responses", {}).items():
        yield name, {"NotFound": "404", "MethodNotAllowed": "405"}.get(name, "?"), response


def test_both_documents_state_the_same_error_schema_with_every_code() -> None:
    reglog, notification = (DOCUMENTS[name]["components"]["schemas"]["Error"] for name in DOCUMENTS)
    assert reglog == notification
    assert reglog["properties"]["error"]["enum"] == list(ERROR_CODES)
    for code, status in ERROR_CODES.items():
        assert f"`{code}` ({status}):" in reglog["description"]


@pytest.mark.parametrize("name", DOCUMENTS)
def test_each_response_lists_only_codes_of_its_status(name: str) -> None:
    seen = 0
    for where, status, response in _responses(DOCUMENTS[name]):
        for enum in _error_enums(response):
            for code in enum:
                assert code in ERROR_CODES, (where, status, code)
                assert str(ERROR_CODES[code]) == status, (where, status, code)
                seen += 1
    assert seen > 10


def test_every_status_of_the_vocabulary_is_an_error() -> None:
    assert all(400 <= status < 600 for status in ERROR_CODES.values())
    for code, status in ERROR_CODES.items():
        assert ApiError(status, code, "a sentence").body() == {
            "error": code,
            "message": "a sentence",
        }


def test_an_invalid_identifier_is_answered_without_quoting_the_value() -> None:
    assert checked_identifier(CLIENT_ID, "device-1") == "device-1"
    with pytest.raises(ApiError) as raised:
        checked_identifier(CLIENT_ID, "a\x1bb")
    error = raised.value
    assert (error.status, error.code, error.field) == (400, "invalid", "clientId")
    assert error.message == f"clientId must be {CLIENT_ID.text}"
    with pytest.raises(ApiError) as raised:
        checked_identifier(TOPIC, 42, "topics[2]")
    assert raised.value.body() == {
        "error": "invalid",
        "message": f"topic must be {TOPIC.text}",
        "field": "topics[2]",
    }
    assert invalid("x").field is None
