"""Uplink records in Redis: stream entries and dead-letter JSON, to and from
the model (docs/data-model.rst, ``PIGEON:{UPLINK}``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pigeonpush.store.model import DeadUplink, Uplink
from pigeonpush.store.redis_codec import DecodeError, dump_time


def uplink_args(uplink: Uplink) -> list[str]:
    """clientId, uplinkId, data, receivedAt: ADD_UPLINK's first arguments."""
    return [
        uplink.client_id,
        uplink.uplink_id,
        json.dumps(dict(uplink.data), ensure_ascii=False, separators=(",", ":")),
        dump_time(uplink.received_at),
    ]


def load_uplink(entry_id: str, flat_fields: Sequence[object]) -> Uplink:
    """An uplink from a stream entry's id and field/value list."""
    fields = dict(zip(flat_fields[::2], flat_fields[1::2], strict=False))
    try:
        data = json.loads(str(fields["data"]))
        return Uplink(
            client_id=str(fields["clientId"]),
            uplink_id=str(fields["uplinkId"]),
            data=_string_map(data),
            received_at=float(str(fields["receivedAt"])),
            entry_id=entry_id,
        )
    except (KeyError, ValueError) as e:
        raise DecodeError(f"uplink entry {entry_id} does not decode: {e}") from e


def dump_dead(dead: DeadUplink) -> str:
    u = dead.uplink
    return json.dumps(
        {
            "entryId": u.entry_id,
            "clientId": u.client_id,
            "uplinkId": u.uplink_id,
            "data": dict(u.data),
            "receivedAt": u.received_at,
            "attempts": dead.attempts,
            "error": dead.error,
            "failedAt": dead.failed_at,
        },
        ensure_ascii=False,
    )


def load_dead(raw: object) -> DeadUplink:
    try:
        record: Any = json.loads(str(raw))
        uplink = Uplink(
            client_id=str(record["clientId"]),
            uplink_id=str(record["uplinkId"]),
            data=_string_map(record["data"]),
            received_at=float(record["receivedAt"]),
            entry_id=str(record["entryId"]),
        )
        return DeadUplink(
            uplink, int(record["attempts"]), str(record["error"]), float(record["failedAt"])
        )
    except (KeyError, ValueError, TypeError) as e:
        raise DecodeError(f"a dead uplink record does not decode: {e}") from e


def _string_map(value: object) -> Mapping[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("data is not a map of strings")
    return value
