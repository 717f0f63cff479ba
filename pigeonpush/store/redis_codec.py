"""How the model's values are written into Redis strings and read back.

Times are written with ``repr`` (the shortest text that reads back as the
same float), extras and recipients as compact JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from pigeonpush.compactjson import dumps as compact_json
from pigeonpush.store.keys import RECEIPT_META, RECEIPT_SCHEDULED, RECEIPT_SEND_AT
from pigeonpush.store.model import (
    Accepted,
    DeviceRecord,
    Message,
    Notification,
    Receipt,
    recipient_states,
)


class DecodeError(ValueError):
    """A stored value is not what this module writes."""


def dump_json(value: object) -> str:
    return compact_json(value)


def dump_time(value: float) -> str:
    return repr(float(value))


def message_args(message: Message, recipients: Sequence[str]) -> list[str]:
    """title, text, extras, createdAt, expiresAt, recipients: the fields
    MSG_BODY and the queue entry share (in ACCEPT, after the count and the id)."""
    return [
        message.title,
        message.text,
        dump_json(dict(message.extras)),
        dump_time(message.created_at),
        dump_time(message.expires_at),
        dump_json(list(recipients)),
    ]


def accepted_record(accepted: Accepted) -> str:
    """The IDEMPOTENCY value: the first acceptance."""
    return dump_json({"messageId": accepted.message_id, "recipients": accepted.recipients})


def load_accepted(record: str) -> Accepted:
    try:
        value = json.loads(record)
        return Accepted(str(value["messageId"]), int(value["recipients"]), duplicate=True)
    except (ValueError, TypeError, KeyError) as e:
        raise DecodeError(f"bad idempotency record {record!r}") from e


def load_message(message_id: str, values: Sequence[object]) -> Message | None:
    """A message from HMGET of BODY_FIELDS; None if the hash is gone."""
    title, text, extras, created_at, expires_at = values[:5]
    if title is None:
        return None
    try:
        return Message(
            message_id=message_id,
            title=str(title),
            text=str(text),
            extras=_load_extras(extras),
            created_at=float(str(created_at)),
            expires_at=float(str(expires_at)),
        )
    except (ValueError, TypeError) as e:
        raise DecodeError(f"bad MSG_BODY for {message_id}: {e}") from e


def load_recipients(value: object) -> tuple[str, ...]:
    try:
        recipients = json.loads(str(value))
    except ValueError as e:
        raise DecodeError(f"bad recipients {value!r}") from e
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise DecodeError(f"bad recipients {value!r}")
    return tuple(recipients)


def load_receipt(message_id: str, fields: Mapping[str, str], now: float) -> Receipt | None:
    """A receipt from HGETALL of RECEIPT (``#``-fields and outcomes); None if
    the hash is gone."""
    if not fields:
        return None
    recipients_field, created_field, expires_field = RECEIPT_META
    try:
        recipients = load_recipients(fields[recipients_field])
        created_at = float(fields[created_field])
        expires_at = float(fields[expires_field])
        scheduled = RECEIPT_SCHEDULED in fields
        states = recipient_states(recipients, fields, expires_at <= now, scheduled)
        send_at = float(fields[RECEIPT_SEND_AT]) if RECEIPT_SEND_AT in fields else None
    except (KeyError, ValueError, TypeError) as e:
        raise DecodeError(f"bad RECEIPT for {message_id}: {e}") from e
    return Receipt(message_id, created_at, expires_at, recipients, states, send_at=send_at)


def load_notification(flat_fields: Sequence[object]) -> Notification:
    """A notification from a queue entry's field/value list."""
    fields = dict(zip(flat_fields[::2], flat_fields[1::2], strict=False))
    message_id = fields.get("messageId")
    if not isinstance(message_id, str):
        raise DecodeError("queue entry without messageId")
    message = load_message(
        message_id,
        [fields.get(name) for name in ("title", "text", "extras", "createdAt", "expiresAt")],
    )
    if message is None:
        raise DecodeError(f"queue entry {message_id} without title")
    key = fields.get("idempotencyKey")
    collapse_key = fields.get("collapseKey")
    return Notification(
        message,
        load_recipients(fields.get("recipients")),
        None if key is None else str(key),
        collapse_key=None if collapse_key is None else str(collapse_key),
    )


def load_device(client_id: str, values: Sequence[object]) -> DeviceRecord | None:
    secret_hash, created_at = values[:2]
    if secret_hash is None:
        return None
    try:
        return DeviceRecord(client_id, str(secret_hash), float(str(created_at)))
    except ValueError as e:
        raise DecodeError(f"bad DEVICE record for {client_id}") from e


def _load_extras(value: object) -> Mapping[str, str]:
    if value is None:
        return {}
    try:
        extras = json.loads(str(value))
    except ValueError as e:
        raise DecodeError(f"bad extras {value!r}") from e
    if not isinstance(extras, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extras.items()
    ):
        raise DecodeError(f"bad extras {value!r}")
    return extras
