"""Argument checks of the topic calls, shared by both backends so that both
refuse the same input with the same message, before writing anything."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

from pigeonpush.identifiers import check_topic
from pigeonpush.store import checks
from pigeonpush.store.model import Message
from pigeonpush.store.topic_model import TopicEntry, TopicPosition, offset_key
from pigeonpush.topics import check_audience

#: The most devices one subscribe or unsubscribe call takes.
MAX_BATCH = 10_000


def new_epoch() -> str:
    """A fresh epoch: random, so a log created again never reuses one."""
    return secrets.token_hex(8)


def client_ids(values: Sequence[str]) -> tuple[str, ...]:
    """``values`` without repeats; ValueError for an empty or oversized batch
    or an id that is not a non-empty string."""
    ids = checks.distinct(values)
    if len(ids) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} devices per call, not {len(ids)}")
    if not all(isinstance(value, str) and value for value in ids):
        raise ValueError("clientIds must be non-empty strings")
    return ids


def subscription(topic: str, values: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    return check_topic(topic), client_ids(values)


def published(topic: str, message: Message, max_length: int, now: float) -> float:
    """The message's remaining time to live; ValueError if it cannot be logged."""
    check_audience(topic)
    checks.positive_count(max_length, "max_length")
    if not message.message_id:
        raise ValueError("a message needs a non-empty messageId")
    remaining = message.expires_at - now
    if not math.isfinite(remaining) or remaining <= 0:
        raise ValueError(f"message {message.message_id} expired before it was stored")
    return remaining


def advances(positions: Sequence[tuple[str, TopicPosition]]) -> None:
    for topic, position in positions:
        check_audience(topic)
        if not position.epoch or " " in position.epoch:
            raise ValueError(f"not an epoch: {position.epoch!r}")
        offset_key(position.offset)


def replayed(topic: str, message: Message, record: str) -> TopicEntry:
    """The answer to a publish whose idempotency key was seen: the first
    acceptance (its record is ``<messageId> <epoch> <offset>``)."""
    message_id, epoch, offset = record.split(" ")
    first = Message(
        message_id,
        message.title,
        message.text,
        dict(message.extras),
        message.created_at,
        message.expires_at,
    )
    return TopicEntry(topic, TopicPosition(epoch, offset), first, duplicate=True)
