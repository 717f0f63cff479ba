"""Argument checks shared by the backends, so both refuse the same input with
the same message (and before writing anything)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import attrs

from pigeonpush.store.keys import BOUND
from pigeonpush.store.model import DROPPED_STATE, DropReason, Notification, RecipientState


def issuable_token(token: str) -> str:
    """``token`` if AUTH can hold it unused, else ValueError (empty, or
    spelled like a token a session already used)."""
    if not token or token.startswith(BOUND):
        raise ValueError(f"a token must not be empty nor start with {BOUND!r}")
    return token


def positive_seconds(value: float, what: str) -> float:
    """``value`` if it is a finite number of seconds above zero, else ValueError."""
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


def non_negative_seconds(value: float, what: str) -> float:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{what} must be zero or a positive number of seconds, not {value!r}")
    return float(value)


def milliseconds(seconds: float) -> int:
    """Whole milliseconds, rounded up so that a positive duration never becomes 0."""
    return max(1, math.ceil(seconds * 1000))


def positive_count(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    return value


def optional_limit(value: int | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"limit must be None or an integer >= 0, not {value!r}")
    return value


def distinct(values: Sequence[str]) -> tuple[str, ...]:
    """``values`` without repeats, first occurrence kept (order matters for receipts)."""
    return tuple(dict.fromkeys(values))


def accepted_batch(
    notifications: Sequence[Notification], now: float
) -> list[tuple[Notification, float]]:
    """Each notification with its recipients made distinct and its remaining
    time to live; ValueError for the first one that cannot be stored, so that a
    bad batch writes nothing."""
    checked: list[tuple[Notification, float]] = []
    for notification in notifications:
        message = notification.message
        if not message.message_id:
            raise ValueError("a message needs a non-empty messageId")
        recipients = distinct(notification.recipients)
        if not recipients:
            raise ValueError(f"message {message.message_id} has no recipients")
        if not all(isinstance(r, str) and r for r in recipients):
            raise ValueError(f"message {message.message_id}: recipients must be non-empty strings")
        remaining = message.expires_at - now
        if not math.isfinite(remaining) or remaining <= 0:
            raise ValueError(
                f"message {message.message_id} expired before it was stored "
                f"(expiresAt {message.expires_at!r}, now {now!r})"
            )
        send_at = notification.send_at
        if send_at is not None and (
            isinstance(send_at, bool)
            or not isinstance(send_at, (int, float))
            or not math.isfinite(send_at)
            or send_at >= message.expires_at
        ):
            raise ValueError(
                f"message {message.message_id}: sendAt must be a time before its expiresAt, "
                f"not {send_at!r}"
            )
        if notification.collapse_key is not None and not notification.collapse_key:
            raise ValueError(f"message {message.message_id}: an empty collapse key")
        if recipients != notification.recipients:
            notification = attrs.evolve(notification, recipients=recipients)
        checked.append((notification, remaining))
    return checked


def dropped(drops: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, RecipientState]]:
    """``drop_pending``'s triples with each reason turned into the state it
    leaves; ValueError for the first reason that is no ``DropReason``."""
    settled: list[tuple[str, str, RecipientState]] = []
    for client_id, message_id, reason in drops:
        try:
            state = DROPPED_STATE[DropReason(reason)]
        except ValueError:
            known = ", ".join(r.value for r in DropReason)
            raise ValueError(f"a drop reason must be one of {known}, not {reason!r}") from None
        settled.append((client_id, message_id, state))
    return settled


#: An entry id, complete (``<ms>-<seq>``) or not (``<ms>``), as XREAD takes it.
_ENTRY_ID = re.compile(r"[0-9]{1,20}(?:-[0-9]{1,20})?")


def entry_key(entry_id: str) -> tuple[int, int]:
    """An entry id as a sortable pair; ValueError (what is wrong) for a bad one."""
    if not isinstance(entry_id, str) or _ENTRY_ID.fullmatch(entry_id) is None:
        raise ValueError(
            f"a cursor must be a stream entry id such as 1700000000000-0 (or 0), not {entry_id!r}"
        )
    ms, _, seq = entry_id.partition("-")
    key = int(ms), int(seq or 0)
    if max(key) >= 1 << 64:  # Redis refuses a stream id past 64 bits
        raise ValueError(f"a cursor's parts must be below 2**64, not {entry_id!r}")
    return key
