"""Topic and broadcast messages for a push server's devices: catch-up from
the topic logs, the live fan-out from the topic feed, and positions advanced
by ACKs (docs/audiences.rst).

On AUTH_OK and on the heartbeat pull the hub asks ``TopicFeed.catch_up``:
one ``store.catch_up_many`` reads the device's topics and what it has not
ACKed in broadcast and in each topic it is subscribed to, and the entries go
through the hub's ``push`` like any pulled message (window, ACK timeout,
redelivery). The heartbeats' catch-ups of ``BATCH_DELAY`` seconds share one
read (as the pulls share one ``PullMany``): at a heartbeat of 10 s, 19,500
devices are 1,950 catch-ups a second, each three Redis round trips alone.

Live: ``FeedReader`` reads the store's topic feed (each server reads every
topic message once) and hands the entries to ``TopicFeed.live``, which
encodes each PUSH once and writes it to the local sessions subscribed to its
topic (every caught-up session for broadcast): ``topic -> sessions`` is
loaded from the store (``device_topics``) at each catch-up. A message the
live path cannot write (window full, a session not caught up yet) is left to
the next catch-up.

A device's position in a topic moves only over a run of ACKs without a gap:
ACKs can come out of order (a NACKed message comes again later), and moving
past an entry that is not ACKed would lose it for the next catch-up. A
message the hub gives up on (``--max-attempts``) counts as settled, as its
unicast twin leaves WAIT_ACK. Positions are written once per reactor turn
per device (``store.advance``); a failed write is only logged: the entries
come again, and the SDK drops the repeats.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.server.session import Session
from pigeonpush.store.interface import Store, StoreError
from pigeonpush.store.model import Message
from pigeonpush.store.topic_model import (
    CatchUp,
    FeedItem,
    SubscriptionNotice,
    TopicEntry,
    TopicPosition,
    at_or_past,
    offset_key,
)
from pigeonpush.topics import BROADCAST
from pigeonpush.wire.codec import EncodeError, encode, encode_push
from pigeonpush.wire.frames import TOPIC_VERSION, Missed

#: Entries read per topic per catch-up.
CATCH_UP_LIMIT = 100
#: Seconds a heartbeat's catch-up waits for others to share its read.
BATCH_DELAY = 0.01
#: Most catch-ups in one read: a full batch is read at once.
MAX_BATCH = 500
#: Most topics whose log ends a server keeps (the most subscribed locally).
MAX_KNOWN_ENDS = 10_000


@attrs.frozen(slots=True)
class TopicFrames:
    """One topic message's PUSH, encoded once per protocol generation: with
    its topic (version 3 and later) and without (older sessions)."""

    with_topic: bytes
    without_topic: bytes

    @classmethod
    def of(cls, message: Message, topic: str) -> TopicFrames:
        plain = encode_push(message.message_id, message.title, message.text, message.extras)
        return cls(
            encode_push(message.message_id, message.title, message.text, message.extras, topic),
            plain,
        )

    def for_version(self, version: int) -> bytes:
        return self.with_topic if version >= TOPIC_VERSION else self.without_topic


#: The ``complete`` of nearly every session: only broadcast, and it is all read.
_ONLY_BROADCAST = frozenset((BROADCAST,))
#: The ``topics`` of a session subscribed to none (an empty frozenset is 216 bytes).
_NO_TOPICS: frozenset[str] = frozenset()


@attrs.define(slots=True, eq=False)
class _Track:
    """One session's topic entries in flight, per topic in log order.

    Every connection has one (broadcast reaches them all), and most have
    nothing in flight: the containers are None until something goes in,
    and ``complete`` is a frozenset, shared while it is only broadcast (an
    empty set or dict costs 64-216 bytes a session, see docs/benchmarks.rst).
    """

    #: messageId -> its topic (None: none)
    topic_of: dict[str, str] | None = None
    #: topic -> [(messageId, position)] after the stored position, oldest first
    #: (the offset as a sortable pair rides along: parsed once per entry); a
    #: topic with none is absent (None: no topic has any)
    order: dict[str, list[tuple[str, TopicPosition, tuple[int, int]]]] | None = None
    #: messageIds ACKed (or given up on) and not yet behind the position (None: none)
    settled: set[str] | None = None
    #: topics whose last catch-up read everything after the position: a live
    #: entry may join their ``order`` (else it is read again)
    complete: frozenset[str] = frozenset()
    #: the topics the device is subscribed to (broadcast not included)
    topics: frozenset[str] = _NO_TOPICS
    reading: bool = False
    #: a catch-up read has been handed out: live entries may follow on it
    caught_up: bool = False
    #: a live entry was held back (a read was on its way, or the last one was
    #: not complete): read again once the current read is done
    stale: bool = False
    #: topic -> the position this session's ACKs moved it to: a read that
    #: left before the store had it may answer entries up to it again
    #: (None: none)
    acked: dict[str, TopicPosition] | None = None
    #: the last catch-up left entries for later (the window was full, or a
    #: topic had more than one read's worth): read again when the window frees
    more: bool = False


class TopicFeed:
    log = Logger()

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        push: Callable[[Sequence[PushItem]], Deferred[list[PushStatus]]],
        write_frame: Callable[[Session, str, TopicFrames], PushStatus],
        sessions: Mapping[str, Session],
        *,
        count: Callable[[list[PushStatus]], None] = lambda statuses: None,
        limit: int = CATCH_UP_LIMIT,
        max_batch: int = MAX_BATCH,
        ends_interval: float = 30.0,
        max_known_ends: int = MAX_KNOWN_ENDS,
    ) -> None:
        self._store = store
        self._clock = clock
        self._push = push
        self._write_frame = write_frame
        self._count = count
        #: clientId -> its live session (the hub's table)
        self._sessions = sessions
        self._limit = limit
        self._max_batch = max_batch
        #: sessions whose heartbeat catch-up waits for the next batch (in order)
        self._due: dict[Session, None] = {}
        self._due_call: IDelayedCall | None = None
        self._tracks: dict[Session, _Track] = {}
        #: sessions not caught up once yet: in no topic's index
        self._unindexed: set[Session] = set()
        #: topic -> the local sessions subscribed to it
        self._subscribers: dict[str, set[Session]] = {}
        #: clientId -> topic -> position to write at the end of this turn
        self._advances: dict[str, dict[str, TopicPosition]] = {}
        self._flush_call: IDelayedCall | None = None
        #: messageId -> ACKs to count in its receipt at the end of this turn
        self._acks: dict[str, int] = {}
        #: topic -> its log's newest position as last read (``topic_ends``,
        #: at most every ``ends_interval`` seconds) or seen in the feed since:
        #: heartbeat catch-ups skip the topics a device is at the end of
        self._ends: dict[str, TopicPosition] = {}
        self._ends_interval = ends_interval
        self._max_known_ends = max_known_ends
        self._ends_read_at = float("-inf")
        self._reading_ends = False

    def catch_up(self, session: Session, *, heartbeat: bool = False) -> None:
        """Read and push what ``session``'s device has not ACKed (one read at a
        time). ``heartbeat``: the periodic check of an idle device, read
        together with the others of the next ``BATCH_DELAY`` seconds."""
        track = self._tracks.get(session)
        if track is None:
            track = self._tracks[session] = _Track()
            self._unindexed.add(session)
        if session.client_id is None:
            return
        if track.reading:
            track.stale = True  # read again once this read is done
            return
        if not heartbeat:
            self._read([session])
            return
        self._due[session] = None
        if len(self._due) >= self._max_batch:
            self.read_due()
        elif self._due_call is None:
            self._due_call = self._clock.callLater(BATCH_DELAY, self.read_due)

    def read_due(self) -> None:
        """Read the heartbeat catch-ups waiting now. A session that closed
        meanwhile is left out, and so is one whose read began meanwhile (that
        read is newer than its heartbeat)."""
        if self._due_call is not None:
            if self._due_call.active():
                self._due_call.cancel()
            self._due_call = None
        due, self._due = self._due, {}
        self._read(
            [
                session
                for session in due
                if (track := self._tracks.get(session)) is not None and not track.reading
            ],
            heartbeat=True,
        )
        if self._clock.seconds() - self._ends_read_at >= self._ends_interval:
            self._read_ends()

    def _read_ends(self) -> None:
        """Read the log ends of broadcast and of the topics local devices
        hold, the most subscribed first. A log appended to without a feed
        entry (its feed write failed, the feed was trimmed past this reader)
        is so noticed within ``ends_interval``: until then a device at the
        older end is not read in that topic."""
        if self._reading_ends:
            return
        self._reading_ends = True
        self._ends_read_at = self._clock.seconds()
        topics = sorted(self._subscribers, key=lambda t: len(self._subscribers[t]), reverse=True)
        reading = self._store.topic_ends([BROADCAST, *topics[: self._max_known_ends - 1]])

        def read(ends: dict[str, TopicPosition]) -> None:
            self._reading_ends = False
            self._ends = ends

        def failed(failure: Failure) -> None:
            # Not knowing the ends only costs reads: every topic is read.
            self._reading_ends = False
            self._ends = {}
            if failure.check(StoreError):
                self.log.warn("Reading the topics' log ends failed: {why}", why=failure.value)
            else:
                self.log.failure("Reading the topics' log ends failed", failure)

        reading.addCallbacks(read, failed)

    def stop(self) -> None:
        """No more heartbeat reads (the server is stopping)."""
        self._due.clear()
        if self._due_call is not None and self._due_call.active():
            self._due_call.cancel()
        self._due_call = None
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            self._flush()  # the ACKs' positions, written now

    def _read(self, sessions: list[Session], *, heartbeat: bool = False) -> None:
        """One store call for the catch-ups of ``sessions``; a heartbeat's
        reads skip the topics whose known end the device is at."""
        batch: list[tuple[Session, str, _Track]] = []
        for session in sessions:
            track = self._tracks[session]
            assert session.client_id is not None
            track.reading = True
            batch.append((session, session.client_id, track))
        if not batch:
            return
        reading = self._store.catch_up_many(
            [client_id for _, client_id, _ in batch],
            self._limit,
            # Not copied: the feed only moves an end forward and a refresh
            # replaces the dict, so a read sees ends no older than these.
            self._ends if heartbeat else None,
        )
        reading.addCallbacks(
            self._caught_up, self._read_failed, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _caught_up(
        self,
        answers: list[tuple[list[str], list[CatchUp]]],
        batch: list[tuple[Session, str, _Track]],
    ) -> None:
        for _, _, track in batch:
            track.reading = False
        for (session, client_id, track), (topics, found) in zip(batch, answers, strict=True):
            if self._tracks.get(session) is not track:
                continue  # disconnected meanwhile
            try:
                self._index(session, track, frozenset(topics) if topics else _NO_TOPICS)
                self._handle(found, session, track)
            except Exception:
                # One device's failure is not the others': each is logged.
                self._failed(Failure(), client_id)
                continue
            track.caught_up = True
            self._unindexed.discard(session)
            if track.stale:
                # Live entries were held back meanwhile: read them in order now.
                track.stale = False
                self.catch_up(session)

    def _read_failed(self, failure: Failure, batch: list[tuple[Session, str, _Track]]) -> None:
        for _, _, track in batch:
            track.reading = False
        if len(batch) == 1:
            self._failed(failure, batch[0][1])
        elif failure.check(StoreError):
            self.log.warn(
                "Topic catch-up of {count} devices failed: {why}; they are read again on "
                "their next heartbeat",
                count=len(batch),
                why=failure.getErrorMessage(),
            )
        else:
            self.log.failure("Topic catch-up of {count} devices failed", failure, count=len(batch))

    def _index(self, session: Session, track: _Track, topics: frozenset[str]) -> None:
        for gone in track.topics - topics:
            self._unindex(session, gone)
        for topic in topics - track.topics:
            self._subscribers.setdefault(topic, set()).add(session)
        track.topics = topics

    def _unindex(self, session: Session, topic: str) -> None:
        sessions = self._subscribers.get(topic)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._subscribers[topic]

    def _handle(self, found: list[CatchUp], session: Session, track: _Track) -> None:
        client_id = session.client_id
        assert client_id is not None
        track.more = False
        items: list[PushItem] = []
        caught_topics = {caught.topic for caught in found}
        orders = track.order
        complete = set(track.complete)
        for topic in (track.topics | {BROADCAST}) - caught_topics:
            # Nothing after the position: live entries may follow on.
            if orders is not None:
                orders.pop(topic, None)
            complete.add(topic)
        for caught in found:
            if caught.missed:
                self.log.info(
                    "{client_id} missed messages of topic {topic}: its log no longer holds them",
                    client_id=client_id,
                    topic=caught.topic,
                )
                if session.version >= TOPIC_VERSION:
                    session.channel.send(encode(Missed(caught.topic)))
            order: list[tuple[str, TopicPosition, tuple[int, int]]] = []
            floor = track.acked.get(caught.topic) if track.acked is not None else None
            # (read again each time: the advance below may drop what emptied)
            orders, topic_of, settled = track.order, track.topic_of, track.settled
            for entry in caught.entries:
                if floor is not None and at_or_past(floor, entry.position):
                    continue  # ACKed here; the read saw the position before it
                message = entry.message
                order.append(
                    (message.message_id, entry.position, offset_key(entry.position.offset))
                )
                if topic_of is None:
                    topic_of = track.topic_of = {}
                topic_of[message.message_id] = caught.topic
                if settled is None or message.message_id not in settled:
                    items.append(
                        PushItem(
                            client_id,
                            message.message_id,
                            message.title,
                            message.text,
                            message.extras,
                            topic=caught.topic,
                        )
                    )
            if order:
                if orders is None:
                    orders = track.order = {}
                orders[caught.topic] = order
            elif orders is not None:
                orders.pop(caught.topic, None)
            if len(caught.entries) < self._limit:
                complete.add(caught.topic)
            else:
                complete.discard(caught.topic)
                track.more = True
            self._advance_over_settled(client_id, track, caught.topic)
        track.complete = _ONLY_BROADCAST if complete == _ONLY_BROADCAST else frozenset(complete)
        if items:
            pushing = self._push(items)
            pushing.addCallbacks(
                self._pushed, self._failed, callbackArgs=(track,), errbackArgs=(client_id,)
            )

    @staticmethod
    def _pushed(statuses: list[PushStatus], track: _Track) -> None:
        if PushStatus.WINDOW_FULL in statuses:
            track.more = True

    def window_freed(self, session: Session) -> None:
        """Half the session's window (or its socket) is free again: continue
        a catch-up that left entries for later now, with the heartbeats' next
        shared read, rather than at the device's next heartbeat (a device
        back from a long absence would drain a window's worth per heartbeat)."""
        track = self._tracks.get(session)
        if track is None or not track.more or track.reading:
            return
        track.more = False
        self.catch_up(session, heartbeat=True)

    def live(self, entries: Sequence[FeedItem]) -> None:
        """Entries from the topic feed: each written, encoded once, to the
        local sessions subscribed to its topic (every caught-up one for
        broadcast); a local device whose subscriptions changed reads its
        topics again now."""
        for entry in entries:
            if isinstance(entry, SubscriptionNotice):
                for client_id in entry.client_ids:
                    session = self._sessions.get(client_id)
                    if session is not None and session in self._tracks:
                        self.catch_up(session)
                continue
            known = self._ends.get(entry.topic)
            if known is not None and (
                known.epoch != entry.position.epoch
                or offset_key(known.offset) < offset_key(entry.position.offset)
            ):
                self._ends[entry.topic] = entry.position
            if entry.topic == BROADCAST:
                sessions: Sequence[Session] = list(self._tracks)
            else:
                sessions = list(self._subscribers.get(entry.topic, ()))
                # Sessions whose first read is on its way are in no topic's
                # index yet, and their read may have left before this entry
                # was appended: they read again once it is back.
                for session in self._unindexed:
                    self._tracks[session].stale = True
            if not sessions:
                continue
            message = entry.message
            key = offset_key(entry.position.offset)
            try:
                frame = TopicFrames.of(message, entry.topic)
            except EncodeError as e:
                self.log.warn(
                    "Topic message {message_id} cannot be encoded: {why}",
                    message_id=message.message_id,
                    why=str(e),
                )
                continue
            statuses: list[PushStatus] = []
            for session in sessions:
                track = self._tracks.get(session)
                if track is None or (
                    track.topic_of is not None and message.message_id in track.topic_of
                ):
                    continue  # closed, or read (or written) already
                if track.reading or not track.caught_up or entry.topic not in track.complete:
                    # Written now, it could overtake entries not read yet:
                    # the next read brings it in log order.
                    track.stale = True
                    continue
                self._follow(track, entry, key)
                statuses.append(self._write_frame(session, message.message_id, frame))
            self._count(statuses)

    def _follow(self, track: _Track, entry: TopicEntry, key: tuple[int, int]) -> None:
        """Track a live entry for its ACK, in log order among the entries of
        its topic (two publishers may put entries of one topic in the feed
        in the other order): the position never passes it unsettled."""
        if track.topic_of is None:
            track.topic_of = {}
        track.topic_of[entry.message.message_id] = entry.topic
        if track.order is None:
            track.order = {}
        order = track.order.setdefault(entry.topic, [])
        if order and order[-1][1].epoch != entry.position.epoch:
            return  # a new life of the log: the next catch-up tells
        at = len(order)
        while at and order[at - 1][2] > key:
            at -= 1
        order.insert(at, (entry.message.message_id, entry.position, key))

    def settled(self, session: Session, message_ids: Sequence[str], *, acked: bool) -> bool:
        """The device ACKed these (``acked``: counted in their receipts) or
        the hub gave up on them; ids of no topic entry are ignored. True when
        every id was one of this session's topic entries (no WAIT_ACK to clean)."""
        track = self._tracks.get(session)
        client_id = session.client_id
        if track is None or client_id is None:
            return False
        all_topic = True
        for message_id in message_ids:
            topic_of = track.topic_of
            topic = topic_of.get(message_id) if topic_of is not None else None
            if topic is None:
                all_topic = False
                continue
            settled = track.settled
            if settled is None:
                settled = track.settled = set()
            elif message_id in settled:
                continue
            settled.add(message_id)
            if acked:
                self._acks[message_id] = self._acks.get(message_id, 0) + 1
                self._flush_soon()
            self._advance_over_settled(client_id, track, topic)
        return all_topic

    def _advance_over_settled(self, client_id: str, track: _Track, topic: str) -> None:
        orders, settled = track.order, track.settled
        if orders is None or settled is None:
            return
        order = orders.get(topic)
        if not order:
            return
        passed = 0
        while passed < len(order) and order[passed][0] in settled:
            passed += 1
        if not passed:
            return
        position = order[passed - 1][1]
        if track.acked is None:
            track.acked = {}
        track.acked[topic] = position
        topic_of = track.topic_of
        for message_id, _, _ in order[:passed]:
            settled.discard(message_id)
            if topic_of is not None:
                topic_of.pop(message_id, None)
        del order[:passed]
        # What is empty goes back to None: an idle session keeps no containers.
        if not order:
            del orders[topic]
            if not orders:
                track.order = None
        if not settled:
            track.settled = None
        if not topic_of:
            track.topic_of = None
        self._advances.setdefault(client_id, {})[topic] = position
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(BATCH_DELAY, self._flush)

    def _flush(self) -> None:
        """The positions ACKs moved and the receipts' ACK counts of the last
        ``BATCH_DELAY`` seconds, in one store call each (a fan-out's ACKs
        arrive over many reactor turns: a call per device per turn was a
        Redis round trip per ACK)."""
        self._flush_call = None
        advances, self._advances = self._advances, {}
        if advances:
            writing = self._store.advance_many(
                [(client_id, list(positions.items())) for client_id, positions in advances.items()]
            )
            writing.addErrback(self._failed, f"({len(advances)} devices' positions)")
        acks, self._acks = self._acks, {}
        if acks:
            counting = self._store.count_topic_acks(list(acks.items()))
            counting.addErrback(self._failed, "(receipts)")

    def forget(self, session: Session) -> None:
        """The session closed: its entries in flight come again on its next catch-up."""
        self._due.pop(session, None)
        self._unindexed.discard(session)
        track = self._tracks.pop(session, None)
        if track is not None:
            for topic in track.topics:
                self._unindex(session, topic)

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


class FeedReader(Service):
    """Reads the store's topic feed from now on and hands what comes to
    ``deliver`` (``TopicFeed.live``); a store failure is logged and the read
    retried after ``retry`` seconds."""

    log = Logger()

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        deliver: Callable[[Sequence[FeedItem]], None],
        *,
        count: int = 500,
        block: float = 5.0,
        retry: float = 1.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._deliver = deliver
        self._count = count
        self._block = block
        self._retry = retry
        self._current: Deferred[Any] | None = None
        self._loop: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = ensureDeferred(self._run())

    async def _await(self, deferred: Deferred[Any]) -> Any:
        self._current = deferred
        try:
            return await deferred
        finally:
            self._current = None

    async def _run(self) -> None:
        after: str | None = None
        while self.running:
            try:
                if after is None:
                    after, _ = await self._await(self._store.topic_feed(None, 1, 0))
                after, entries = await self._await(
                    self._store.topic_feed(after, self._count, self._block)
                )
                if entries:
                    self._deliver(entries)
            except CancelledError:
                return
            except StoreError as e:
                self.log.warn(
                    "Reading the topic feed failed: {why}; retrying in {delay} s",
                    why=str(e),
                    delay=self._retry,
                )
            except Exception:
                # Start again from the feed's end: the devices catch up what
                # this skips at their next heartbeat.
                self.log.failure("The topic feed's live fan-out failed")
                after = None
            else:
                continue
            try:
                await self._await(deferLater(self._clock, self._retry, lambda: None))
            except CancelledError:
                return

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._current is not None:
            self._current.cancel()
        loop, self._loop = self._loop, None
        return loop
