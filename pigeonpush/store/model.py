"""The values the store keeps and hands back (see docs/data-model.rst)."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs


class DropReason(str, enum.Enum):
    """Why a message left a client's WAIT_ACK without an ACK (its receipt says so)."""

    TOO_LARGE = "too_large"  #: it cannot be written within the connection's frame limit
    FAILED = "failed"  #: the device refused or never ACKed it after every attempt
    EXPIRED = "expired"  #: its TTL ran out before the device ACKed it


@attrs.frozen(slots=True)
class Message:
    """A notification's body, stored once under ``PIGEON:MSG_BODY:<messageId>``."""

    message_id: str
    title: str
    text: str
    extras: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    created_at: float = 0.0  #: seconds since the epoch, when the API accepted it
    expires_at: float = 0.0  #: seconds since the epoch; gone from the store after it


@attrs.frozen(slots=True)
class Notification:
    """One accepted message and who it is for: what the queue carries."""

    message: Message
    recipients: tuple[str, ...]
    #: opaque key that makes a retried request a no-op (notification API)
    idempotency_key: str | None = None


@attrs.frozen(slots=True)
class Accepted:
    """The store's answer to one notification of ``accept``."""

    message_id: str
    recipients: int
    #: True when ``idempotency_key`` was seen before: nothing new was written
    duplicate: bool = False


@attrs.frozen(slots=True)
class QueueEntry:
    """A notification read from the queue; ``entry_id`` is what ``acknowledge`` takes."""

    entry_id: str
    notification: Notification
    #: how often the queue has handed this entry out (1 on first delivery)
    deliveries: int = 1


@attrs.frozen(slots=True)
class Receipt:
    """A delivery receipt: which recipients still wait for the message."""

    message: Message
    recipients: tuple[str, ...]
    pending: tuple[str, ...]

    @property
    def acked(self) -> int:
        return len(self.recipients) - len(self.pending)


@attrs.frozen(slots=True)
class DeviceRecord:
    """A registered device (registration mode): only a salted hash of its secret."""

    client_id: str
    secret_hash: str
    created_at: float
