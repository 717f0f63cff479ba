"""The shared compact encoder writes what ``json.dumps`` with the same
arguments writes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pigeonpush.compactjson import dumps


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        ["client-00001"],
        {"messageId": "01J0000000000000000000000", "recipients": ["a", "b"]},
        {"caf\u00e9": "\u4e2d\u6587", "quote": '"\\', "control": "\x00\n"},
        {"lone": "\ud800"},
        [1, 2.5, None, True, 2**70, float("inf")],
    ],
)
def test_dumps_is_json_dumps_compact_and_unescaped(value: Any) -> None:
    assert dumps(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_a_value_json_cannot_write_is_refused_as_by_json_dumps() -> None:
    with pytest.raises(TypeError):
        dumps({"a": object()})
