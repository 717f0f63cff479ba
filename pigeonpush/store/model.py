"""The values the store keeps and hands back (see docs/data-model.rst)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

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
    #: a newer message with the same key to the same recipient replaces this
    #: one while it is still pending for that recipient (``replaced``)
    collapse_key: str | None = None
    #: seconds since the epoch: held in PIGEON:SCHEDULE until then (None: now)
    send_at: float | None = None


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


class RecipientState(str, enum.Enum):
    """What became of a message for one recipient (its receipt reports it)."""

    PENDING = "pending"  #: not ACKed yet, and the message's TTL still runs
    ACKED = "acked"  #: the device ACKed it
    EXPIRED = "expired"  #: its TTL ran out before the device ACKed it
    TOO_LARGE = "too_large"  #: dropped: it cannot fit the connection's frame limit
    FAILED = "failed"  #: dropped: the device refused or never ACKed it after every attempt
    #: a newer message with the same collapse key replaced it before the device ACKed it
    REPLACED = "replaced"
    SCHEDULED = "scheduled"  #: its send time has not come yet
    CANCELLED = "cancelled"  #: cancelled before its send time


#: The state a drop of each reason leaves.
DROPPED_STATE = {
    DropReason.TOO_LARGE: RecipientState.TOO_LARGE,
    DropReason.FAILED: RecipientState.FAILED,
    DropReason.EXPIRED: RecipientState.EXPIRED,
}


@attrs.frozen(slots=True)
class Receipt:
    """A delivery receipt: what became of the message for each recipient.

    It outlives the message's body: after ``expires_at`` the store keeps it
    for its receipt retention, every recipient that had not ACKed by then
    reading as expired (or as dropped, with the reason recorded)."""

    message_id: str
    created_at: float
    expires_at: float
    recipients: tuple[str, ...]
    #: one per recipient, in the same order
    states: tuple[RecipientState, ...]
    #: the send time of a scheduled message (None: sent when accepted)
    send_at: float | None = None

    def with_state(self, state: RecipientState) -> tuple[str, ...]:
        """The recipients in ``state``, in recipient order."""
        return tuple(
            client_id
            for client_id, held in zip(self.recipients, self.states, strict=True)
            if held is state
        )

    @property
    def pending(self) -> tuple[str, ...]:
        return self.with_state(RecipientState.PENDING)

    @property
    def acked(self) -> int:
        """How many recipients ACKed it (dropped and expired ones do not count)."""
        return sum(1 for state in self.states if state is RecipientState.ACKED)


def recipient_states(
    recipients: Sequence[str], outcomes: Mapping[str, str], expired: bool, scheduled: bool = False
) -> tuple[RecipientState, ...]:
    """Each recipient's state from the outcomes the store recorded (clientId
    to a state value): a recipient with none is pending (scheduled while the
    message waits for its send time), or expired once the message's TTL ran
    out. ValueError for a recorded value that is no state."""
    if expired:
        unresolved = RecipientState.EXPIRED
    elif scheduled:
        unresolved = RecipientState.SCHEDULED
    else:
        unresolved = RecipientState.PENDING
    return tuple(
        RecipientState(outcomes[client_id]) if client_id in outcomes else unresolved
        for client_id in recipients
    )


class CancelResult(str, enum.Enum):
    """What ``Store.cancel`` did to a scheduled message."""

    CANCELLED = "cancelled"  #: it was waiting for its send time; now it never goes out
    SENT = "sent"  #: too late: its send time came (or it was never scheduled)
    UNKNOWN = "unknown"  #: no such message (or its receipt retention ended)


@attrs.frozen(slots=True)
class DeviceRecord:
    """A registered device (registration mode): only a salted hash of its secret."""

    client_id: str
    secret_hash: str
    created_at: float


@attrs.frozen(slots=True)
class Uplink:
    """Data a device sent (frame UPLINK), as stored in ``PIGEON:{UPLINK}``."""

    client_id: str
    uplink_id: str  #: the device's id: (client_id, uplink_id) is stored once per window
    data: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    received_at: float = 0.0  #: seconds since the epoch, when the push server stored it
    #: the stream entry id (``<ms>-<seq>``): the readers' cursor; "" before it is stored
    entry_id: str = ""


@attrs.frozen(slots=True)
class UplinkStored:
    """The store's answer to ``add_uplink``."""

    entry_id: str  #: the entry holding the uplink (the first one's, for a duplicate)
    #: True when (clientId, uplinkId) was stored within the de-duplication window
    duplicate: bool = False


@attrs.frozen(slots=True)
class DeadUplink:
    """An uplink a webhook gave up on (``PIGEON:{UPLINK}:DEAD``)."""

    uplink: Uplink
    attempts: int
    error: str  #: the last failure, for operators
    failed_at: float
