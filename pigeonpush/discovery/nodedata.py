"""Node data on the wire: one JSON object, canonical and bounded.

Data is encoded when it is handed over (so bad data is refused at the call that
brought it) and canonically (sorted keys, no spaces), so equal data gives equal
bytes and an unchanged update costs no write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: Node data is a handful of addresses and counters; ZooKeeper's own limit is ~1 MB.
MAX_DATA_BYTES = 64 * 1024


def encode_data(data: Mapping[str, Any]) -> bytes:
    """The canonical JSON of ``data``; ValueError if it is not a JSON object."""
    if not isinstance(data, Mapping):
        raise ValueError(f"node data must be a mapping, not {type(data).__name__}")
    if not all(isinstance(key, str) for key in data):
        raise ValueError("node data keys must be strings")
    try:
        text = json.dumps(
            dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"node data must be JSON-serialisable: {e}") from e
    raw = text.encode()
    if len(raw) > MAX_DATA_BYTES:
        raise ValueError(f"node data is {len(raw)} bytes of JSON; the limit is {MAX_DATA_BYTES}")
    return raw


def decode_data(raw: bytes) -> dict[str, Any]:
    """The object in ``raw``; ValueError if ``raw`` is not one (written by someone else)."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"node data is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"node data is a JSON {type(value).__name__}, not an object")
    return value
