"""The values of topics and broadcast in the store (docs/audiences.rst).

A topic's messages are stored once, in the topic's log; each device keeps a
position per topic (the last entry it ACKed). A position is an epoch and an
offset: the offset orders the log's entries, the epoch names one life of the
log. When the store loses the log (Redis lost its data, the topic was
deleted) the epoch changes, and a position of another epoch says nothing
about what the device has seen: the device is told it missed messages, as
it is when the log was trimmed past its offset. (Centrifugo's offset and
epoch recovery works the same way.)
"""

from __future__ import annotations

import attrs

from pigeonpush.store.model import Message

#: The offset before the first entry of any log.
START = "0-0"


def offset_key(offset: str) -> tuple[int, int]:
    """An offset (``<milliseconds>-<sequence>``, a Redis stream id) as a
    sortable pair; ValueError for anything else."""
    ms, sep, seq = offset.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"not a topic offset: {offset!r}")
    return int(ms), int(seq)


@attrs.frozen(slots=True)
class TopicPosition:
    """Where a device is in a topic's log: the last entry it ACKed."""

    epoch: str
    offset: str = START

    def dump(self) -> str:
        """The stored form, ``<epoch> <offset>`` (epochs hold no space)."""
        return f"{self.epoch} {self.offset}"

    @classmethod
    def load(cls, value: str) -> TopicPosition:
        epoch, sep, offset = value.partition(" ")
        if not sep:
            raise ValueError(f"not a topic position: {value!r}")
        offset_key(offset)
        return cls(epoch, offset)


@attrs.frozen(slots=True)
class TopicEntry:
    """One message of a topic's log, with its place in the log."""

    topic: str  #: the topic name, or ``topics.BROADCAST``
    position: TopicPosition
    message: Message
    #: ``publish`` saw its idempotency key before: nothing was appended, and
    #: ``position`` and the messageId are the first acceptance's
    duplicate: bool = False


@attrs.frozen(slots=True)
class CatchUp:
    """What a device has not ACKed in one topic it is subscribed to."""

    topic: str
    #: unexpired entries after the device's position, oldest first
    entries: tuple[TopicEntry, ...]
    #: the log no longer holds everything after the device's position
    #: (trimmed by length, or a new epoch): the device is told once
    missed: bool = False


@attrs.frozen(slots=True)
class SubscriptionChange:
    """The store's answer to ``subscribe``."""

    added: int  #: devices newly subscribed
    #: devices left out: they already hold the most topics a device may
    refused: tuple[str, ...] = ()


@attrs.frozen(slots=True)
class SubscriptionNotice:
    """In the topic feed: these devices' subscriptions changed (``subscribe``
    or ``unsubscribe``), so that the servers holding them read their topics
    again now rather than at their next heartbeat."""

    topic: str
    client_ids: tuple[str, ...]


#: What the topic feed carries.
FeedItem = TopicEntry | SubscriptionNotice


@attrs.frozen(slots=True)
class TopicReceipt:
    """What became of a topic or broadcast message: counts, never lists."""

    message_id: str
    topic: str  #: the topic, or ``topics.BROADCAST``
    created_at: float
    expires_at: float
    #: devices subscribed when it was accepted (None for broadcast)
    targeted: int | None
    #: ACKs counted by the push servers (a device that ACKs again after a
    #: lost position write counts twice)
    acked: int


def at_or_past(position: TopicPosition | None, end: TopicPosition | None) -> bool:
    """Whether a device at ``position`` has nothing to read before ``end``
    (a log's newest entry): the same epoch, and not before it."""
    return (
        position is not None
        and end is not None
        and position.epoch == end.epoch
        and offset_key(position.offset) >= offset_key(end.offset)
    )
