"""Topic and broadcast messages for a push server's devices: catch-up from
the topic logs, and positions advanced by ACKs (docs/audiences.rst).

On AUTH_OK and on the heartbeat pull the hub asks ``TopicFeed.catch_up``:
one ``store.catch_up`` reads what the device has not ACKed in broadcast and
in each topic it is subscribed to, and the entries go through the hub's
``push`` like any pulled message (window, ACK timeout, redelivery).

A device's position in a topic moves only over a run of ACKs without a gap:
ACKs can come out of order (a NACKed message comes again later), and moving
past an entry that is not ACKed would lose it for the next catch-up. A
message the hub gives up on (``--max-attempts``) counts as settled, as its
unicast twin leaves WAIT_ACK. Positions are written once per reactor turn
per device (``store.advance``); a failed write is only logged: the entries
come again, and the SDK drops the repeats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.server.session import Session
from pigeonpush.store.interface import Store, StoreError
from pigeonpush.store.topic_model import CatchUp, TopicPosition

#: Entries read per topic per catch-up.
CATCH_UP_LIMIT = 100


@attrs.define(slots=True, eq=False)
class _Track:
    """One session's topic entries in flight, per topic in log order."""

    #: messageId -> its topic
    topic_of: dict[str, str] = attrs.field(factory=dict)
    #: topic -> [(messageId, position)] after the stored position, oldest first
    order: dict[str, list[tuple[str, TopicPosition]]] = attrs.field(factory=dict)
    #: messageIds ACKed (or given up on) and not yet behind the position
    settled: set[str] = attrs.field(factory=set)
    reading: bool = False


class TopicFeed:
    log = Logger()

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        push: Callable[[Sequence[PushItem]], Deferred[list[PushStatus]]],
        *,
        limit: int = CATCH_UP_LIMIT,
    ) -> None:
        self._store = store
        self._clock = clock
        self._push = push
        self._limit = limit
        self._tracks: dict[Session, _Track] = {}
        #: clientId -> topic -> position to write at the end of this turn
        self._advances: dict[str, dict[str, TopicPosition]] = {}
        self._flush_call: IDelayedCall | None = None

    def catch_up(self, session: Session) -> None:
        """Read and push what ``session``'s device has not ACKed (one read at a time)."""
        track = self._tracks.setdefault(session, _Track())
        if track.reading or session.client_id is None:
            return
        track.reading = True
        client_id = session.client_id
        reading = self._store.catch_up(client_id, self._limit)
        reading.addCallback(self._read, session, track)
        reading.addErrback(self._failed, client_id)
        reading.addBoth(self._done_reading, track)

    def _done_reading(self, result: object, track: _Track) -> object:
        track.reading = False
        return result

    def _read(self, found: list[CatchUp], session: Session, track: _Track) -> None:
        if self._tracks.get(session) is not track:
            return  # disconnected meanwhile
        client_id = session.client_id
        assert client_id is not None
        items: list[PushItem] = []
        for caught in found:
            if caught.missed:
                self.log.info(
                    "{client_id} missed messages of topic {topic}: its log no longer holds them",
                    client_id=client_id,
                    topic=caught.topic,
                )
            order = []
            for entry in caught.entries:
                message = entry.message
                order.append((message.message_id, entry.position))
                track.topic_of[message.message_id] = caught.topic
                if message.message_id not in track.settled:
                    items.append(
                        PushItem(
                            client_id,
                            message.message_id,
                            message.title,
                            message.text,
                            message.extras,
                        )
                    )
            track.order[caught.topic] = order
            self._advance_over_settled(client_id, track, caught.topic)
        if items:
            self._push(items).addErrback(self._failed, client_id)

    def settled(self, session: Session, message_ids: Sequence[str]) -> None:
        """The device ACKed these (or the hub gave up on them); ids of no
        topic entry are ignored."""
        track = self._tracks.get(session)
        client_id = session.client_id
        if track is None or client_id is None:
            return
        for message_id in message_ids:
            topic = track.topic_of.get(message_id)
            if topic is None:
                continue
            track.settled.add(message_id)
            self._advance_over_settled(client_id, track, topic)

    def _advance_over_settled(self, client_id: str, track: _Track, topic: str) -> None:
        order = track.order.get(topic)
        if not order:
            return
        passed = 0
        while passed < len(order) and order[passed][0] in track.settled:
            passed += 1
        if not passed:
            return
        position = order[passed - 1][1]
        for message_id, _ in order[:passed]:
            track.settled.discard(message_id)
            track.topic_of.pop(message_id, None)
        del order[:passed]
        self._advances.setdefault(client_id, {})[topic] = position
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        advances, self._advances = self._advances, {}
        for client_id, positions in advances.items():
            writing = self._store.advance(client_id, list(positions.items()))
            writing.addErrback(self._failed, client_id)

    def forget(self, session: Session) -> None:
        """The session closed: its entries in flight come again on its next catch-up."""
        self._tracks.pop(session, None)

    def _failed(self, failure: Failure, client_id: str) -> None:
        if failure.check(StoreError):
            self.log.warn(
                "Topic catch-up of {client_id} failed: {why}; it is read again on the "
                "next heartbeat",
                client_id=client_id,
                why=failure.getErrorMessage(),
            )
        else:
            self.log.failure("Topic catch-up of {client_id} failed", failure, client_id=client_id)
