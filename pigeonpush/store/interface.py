"""The shared-state interface every module uses; Redis and memory implement it.

Every method returns a Deferred. Batched methods take and return sequences in
the same order, so a batch of N is one round trip (or one script), not N.

Errors: a Deferred fails with ValueError for arguments that cannot be stored
(a TTL that is not a positive number of seconds, a message that already
expired, a notification without recipients); nothing is written then. It
fails with StoreError when the backend cannot do the work (Redis unreachable,
the connection lost while the call was in flight, no answer in time, the
store closed). Durations are seconds (float); times are seconds since the
epoch on the store's clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from twisted.internet.defer import Deferred

from pigeonpush.store.model import (
    Accepted,
    CancelResult,
    DeadUplink,
    DeviceRecord,
    Message,
    Notification,
    QueueEntry,
    Receipt,
    Uplink,
    UplinkStored,
)
from pigeonpush.store.topic_model import (
    CatchUp,
    FeedItem,
    SubscriptionChange,
    TopicEntry,
    TopicPosition,
    TopicReceipt,
)

#: How long an idempotency key is remembered unless the store is told otherwise (24 h).
DEFAULT_IDEMPOTENCY_TTL = 24 * 60 * 60.0
#: How long (clientId, uplinkId) is remembered to drop a resent uplink (1 h).
DEFAULT_UPLINK_DEDUP_WINDOW = 60 * 60.0
#: About how many uplinks the stream keeps (older ones are trimmed).
DEFAULT_UPLINK_MAX_LEN = 100_000
#: How many dead uplinks (given up by a webhook) are kept.
DEFAULT_DEAD_UPLINK_MAX = 10_000

#: How long a receipt stays readable after its message's TTL ran out (1 day):
#: time to learn who never got a message, without keeping its body.
DEFAULT_RECEIPT_RETENTION = 24 * 60 * 60.0


class StoreError(Exception):
    """The store could not do what was asked (connection lost, server error).

    A call that fails with StoreError may or may not have been carried out
    (the connection can drop after Redis ran it); callers retry with the same
    idempotency key, or treat the operation as unknown."""


class Store(Protocol):
    # -- sessions: tokens (reglog) and routes (push server) --------------------

    def issue_token(self, client_id: str, token: str, ttl: float) -> Deferred[None]:
        """Set ``PIGEON:AUTH:<clientId>`` to ``token``, expiring after ``ttl`` seconds
        (replacing any earlier token, used or not; ROUTE is left alone).
        ValueError for an empty token or one that starts with ``keys.BOUND``."""

    def issue_tokens(self, tokens: Sequence[tuple[str, str]], ttl: float) -> Deferred[None]:
        """``issue_token`` for each ``(clientId, token)`` pair, in one batch (one
        round trip to Redis): reglog's route requests of one reactor turn. A
        clientId given twice ends with its last token. ValueError, and nothing
        written, if any token is one ``issue_token`` refuses."""

    def token(self, client_id: str) -> Deferred[str | None]:
        """The current token, whether a session used it already or not
        (None: none or expired)."""

    def bind_session(self, client_id: str, token: str, server: str, ttl: float) -> Deferred[bool]:
        """If AUTH holds ``token`` and no session used it yet: mark it used
        (it binds no other session), set ROUTE to ``server`` and give AUTH and
        ROUTE ``ttl``; atomically. False (nothing written) for a missing,
        expired, different or already used token: a token is single-use, so
        a replay of a live session's token cannot take the session over. The
        comparison leaks no timing about the stored token: this is the
        server's whole check of a client's AUTH, one round trip."""

    def end_session(self, client_id: str, token: str, server: str) -> Deferred[bool]:
        """Conditional cleanup of a closed session, atomically: only while AUTH
        still holds ``token`` (used or not) and ROUTE holds ``server`` (or
        nothing), delete both. A stale session's cleanup never erases the
        session that replaced it: the newer one has a new token, since a used
        token binds no second session. True if the session was deleted."""

    def refresh_sessions(self, client_ids: Sequence[str], ttl: float) -> Deferred[None]:
        """Set the expiry of AUTH and ROUTE of live sessions to ``ttl`` from now
        (one batch); keys that are gone stay gone."""

    def revoke_session(self, client_id: str) -> Deferred[str | None]:
        """Delete AUTH, so that the client's token no longer authenticates
        (the operator's kick), and answer ROUTE: the server (RPC address)
        that may still hold a connection to KICK, or None. Atomically. ROUTE
        is left for that server's cleanup (``drop_route`` once it is stale)."""

    def drop_route(self, client_id: str, server: str) -> Deferred[bool]:
        """Delete ROUTE only if it still points to ``server`` (stale route)."""

    def route(self, client_id: str) -> Deferred[str | None]:
        """The server (RPC address) holding ``client_id``, or None."""

    def routes(self, client_ids: Sequence[str]) -> Deferred[list[str | None]]:
        """``route`` for many clients in one round trip, in order."""

    # -- messages ----------------------------------------------------------

    def accept(self, notifications: Sequence[Notification]) -> Deferred[list[Accepted]]:
        """For each notification, atomically: store the body until its
        ``expires_at`` and its receipt (recipients, no outcome yet) until
        ``expires_at`` plus the receipt retention, add the id to every
        recipient's WAIT_ACK (whose expiry is raised to the longest TTL it
        holds), and append it with its recipients to the queue. One whose
        ``idempotency_key`` was seen within the store's idempotency TTL
        writes nothing and answers the first acceptance (``duplicate=True``).
        Repeated recipients count once.

        The whole batch is checked first (ValueError: nothing written); then
        each notification is atomic on its own, not the batch as a whole. (On
        a Redis Cluster a notification whose keys span slots is written in
        ordered steps that a retry with its idempotency key resumes: see
        docs/data-model.rst.)

        ``collapse_key``: for each recipient, the message last accepted with
        the same key (``PIGEON:COLLAPSE:{clientId}``) leaves its WAIT_ACK if it
        is still there, its receipt saying ``replaced`` for that recipient;
        this message becomes the key's latest. An ACKed one is left alone.

        ``send_at`` in the future: only the body and the receipt (every
        recipient ``scheduled``) are written, and the id joins
        ``PIGEON:{SCHEDULE}``; ``release_due`` does the rest (WAIT_ACK, the
        collapse, the queue) once the time came. A past ``send_at`` is now."""

    def release_due(self, limit: int, lease: float) -> Deferred[int]:
        """Send up to ``limit`` scheduled messages whose time came (oldest
        first): each enters its recipients' WAIT_ACK (collapsing as
        ``accept`` does) and the queue, once, however many workers call this
        at the same time. A worker claims an entry for ``lease`` seconds; one
        that dies holding it leaves it to the next claim after the lease,
        which sends it unless it was sent already (on a Redis Cluster it resumes
        the dead worker's steps). Answers how many it sent
        (cancelled, expired and already sent entries are only cleaned up)."""

    def cancel(self, message_id: str) -> Deferred[CancelResult]:
        """Cancel a scheduled message that was not sent yet: it never enters
        any WAIT_ACK, its body is deleted and every recipient's state reads
        ``cancelled``. Cancelling again answers CANCELLED; a message already
        sent (or never scheduled) answers SENT, and one unknown UNKNOWN."""

    def pending_ids(self, client_id: str, limit: int | None = None) -> Deferred[list[str]]:
        """Ids in ``PIGEON:WAIT_ACK:<clientId>``, oldest first, at most ``limit``.
        May include ids whose body already expired (``bodies`` says None):
        the reader acks those away."""

    def pending_ids_many(
        self, client_ids: Sequence[str], limit: int | None = None
    ) -> Deferred[list[list[str]]]:
        """``pending_ids`` for many clients in one round trip, in order."""

    def bodies(self, message_ids: Sequence[str]) -> Deferred[list[Message | None]]:
        """Message bodies in order; None where expired or unknown."""

    def ack(self, acks: Sequence[tuple[str, str]]) -> Deferred[None]:
        """Remove each ``(clientId, messageId)`` from WAIT_ACK (one batch)
        and, where it was there, record ``acked`` in the message's receipt,
        atomically per pair; unknown pairs are ignored."""

    def drop_pending(self, drops: Sequence[tuple[str, str, str]]) -> Deferred[None]:
        """Remove each ``(clientId, messageId, reason)`` from WAIT_ACK without
        an ACK (one batch) and, where it was there, record ``reason`` (a
        ``DropReason`` value) in the message's receipt, atomically per pair:
        the message will never reach that client. Unknown pairs are ignored;
        ValueError (nothing written) for a reason that is no ``DropReason``.
        The first outcome recorded for a recipient stays."""

    def add_failures(self, failures: Sequence[tuple[str, str]], ttl: float) -> Deferred[list[int]]:
        """Add one to the failure count of each ``(clientId, messageId)`` (the
        device NACKed it, or did not ACK it in time) and answer each count
        after its increment, in order (a pair given twice counts twice). A
        client's counts live in ``PIGEON:FAILED:<clientId>`` and expire ``ttl``
        seconds after its latest failure; ValueError for a ``ttl`` that is not
        a positive number of seconds. Only the failure path calls this: a
        message that is ACKed costs no write here."""

    def receipt(self, message_id: str) -> Deferred[Receipt | None]:
        """The delivery receipt: every recipient's state (``Receipt``). It
        outlives the body: readable until the receipt retention after the
        message's TTL, recipients without an outcome then reading as
        expired. None once that ended, or for a message never seen."""

    # -- devices (registration mode) ----------------------------------------

    def register_device(self, record: DeviceRecord) -> Deferred[bool]:
        """Store a device record; False (nothing written) if the clientId exists."""

    def device(self, client_id: str) -> Deferred[DeviceRecord | None]:
        """The registered device, or None."""

    # -- the notification queue (streams PIGEON:QUEUE:{shard}, group ``delivery``) --

    def consume(self, consumer: str, count: int, block: float) -> Deferred[list[QueueEntry]]:
        """Up to ``count`` entries never handed out before, oldest first, for
        ``consumer`` (they stay pending with it until acknowledged), waiting up
        to ``block`` seconds for the first one (0: do not wait); [] if none
        came. Cancelling the Deferred stops the wait."""

    def acknowledge(self, entry_ids: Sequence[str]) -> Deferred[None]:
        """Mark entries handled and delete them from the queue: they are never
        handed out again. Unknown ids are ignored."""

    def reclaim(self, consumer: str, min_idle: float, count: int) -> Deferred[list[QueueEntry]]:
        """Take over up to ``count`` pending entries that nobody acknowledged
        for ``min_idle`` seconds (a crashed worker's), oldest first; their
        ``deliveries`` counts this hand-out too."""

    def queue_lag(self) -> Deferred[int]:
        """Entries accepted but not yet acknowledged (a gauge for operators)."""

    # -- uplinks (stream PIGEON:{UPLINK}; docs/uplink.rst) ---------------------

    def add_uplink(
        self, uplink: Uplink, *, dedup_window: float, max_len: int
    ) -> Deferred[UplinkStored]:
        """Append ``uplink`` (its ``entry_id`` is ignored) unless the same
        (clientId, uplinkId) was stored within ``dedup_window`` seconds, then
        answer the first copy's entry (``duplicate=True``); atomically. The
        stream keeps about ``max_len`` entries (the oldest are trimmed).
        ValueError for a window that is not positive or a ``max_len`` below 1."""

    def uplinks(self, after: str, count: int, block: float = 0.0) -> Deferred[list[Uplink]]:
        """Up to ``count`` uplinks whose entry id is after the cursor ``after``
        (an entry id, or ``"0"``: from the oldest kept), oldest first, waiting
        up to ``block`` seconds for the first one if there is none yet. []
        if none came. ValueError for a cursor that is not an entry id.
        Cancelling the Deferred stops the wait."""

    def last_uplink_id(self) -> Deferred[str]:
        """The newest entry id (``"0"`` when the stream is empty): a cursor
        that reads only what comes next."""

    def claim_uplinks(self, consumer: str, count: int, block: float) -> Deferred[list[Uplink]]:
        """Up to ``count`` uplinks no webhook sender was handed yet (consumer
        group ``webhook``, created on first use at the oldest kept entry), for
        ``consumer``; they stay pending with it until ``settle_uplinks``. Waits
        up to ``block`` seconds for the first one."""

    def reclaim_uplinks(self, consumer: str, min_idle: float, count: int) -> Deferred[list[Uplink]]:
        """Take over up to ``count`` uplinks another sender was handed and did
        not settle for ``min_idle`` seconds (it crashed)."""

    def settle_uplinks(self, entry_ids: Sequence[str]) -> Deferred[None]:
        """The webhook is done with these entries (sent, or dead-lettered):
        they leave the group's pending list. The stream keeps them for the
        pull API. Unknown ids are ignored."""

    def add_dead_uplink(self, dead: DeadUplink, max_len: int) -> Deferred[None]:
        """Keep ``dead`` in ``PIGEON:{UPLINK}:DEAD``, newest first, at most
        ``max_len`` of them."""

    def dead_uplinks(self, count: int) -> Deferred[list[DeadUplink]]:
        """The newest ``count`` dead uplinks, newest first."""

    # -- topics and broadcast (docs/audiences.rst) ------------------------------
    # A topic name follows ``pigeonpush.topics`` (ValueError otherwise); the
    # log calls also take ``topics.BROADCAST``, the topic every device is
    # subscribed to without asking.

    def subscribe(
        self, topic: str, client_ids: Sequence[str], max_topics: int
    ) -> Deferred[SubscriptionChange]:
        """Subscribe each device to ``topic`` from the end of its log: it gets
        what is published from now on, not what was before. A device already
        subscribed keeps its position; one that already holds ``max_topics``
        topics is refused (named in the answer). At most
        ``topic_checks.MAX_BATCH`` devices per call."""

    def unsubscribe(self, topic: str, client_ids: Sequence[str]) -> Deferred[int]:
        """Unsubscribe each device (its position is forgotten); how many were subscribed."""

    def device_topics(self, client_id: str) -> Deferred[list[str]]:
        """The topics ``client_id`` is subscribed to, sorted (broadcast is not listed)."""

    def subscriber_count(self, topic: str) -> Deferred[int]:
        """How many devices are subscribed to ``topic``."""

    def delete_topic(self, topic: str) -> Deferred[int]:
        """Unsubscribe every device and delete the log; how many were
        subscribed. The topic can be used again; its log then has a new epoch."""

    def publish(
        self,
        topic: str,
        message: Message,
        max_length: int,
        idempotency_key: str | None = None,
    ) -> Deferred[TopicEntry]:
        """Append ``message`` to the topic's log (one write, whatever the
        number of subscribers) and answer its position. An
        ``idempotency_key`` seen for this topic within the store's idempotency
        TTL appends nothing and answers the first acceptance (``duplicate``). The log keeps at most
        ``max_length`` entries: a device whose position falls behind what
        was trimmed so has missed messages. Expired entries are dropped and
        the log expires with its longest-lived message."""

    def topic_feed(
        self, after: str | None, count: int, block: float
    ) -> Deferred[tuple[str, list[FeedItem]]]:
        """Every topic and broadcast message published after feed id
        ``after`` (and a ``SubscriptionNotice`` per ``subscribe`` call that
        added devices and per ``unsubscribe`` call), oldest first, at most
        ``count``, waiting up to ``block`` seconds for the first (0: not at
        all), and the id to read after next (each push server reads the feed
        for its live fan-out). ``after``
        None answers the current end and no entries: a reader starts from
        now. The feed keeps about ``topic_keys.FEED_LENGTH`` entries; a
        reader further behind misses some (its devices catch up from the
        logs). Cancelling the Deferred stops the wait."""

    def topic_receipt(self, message_id: str) -> Deferred[TopicReceipt | None]:
        """The counts of a topic or broadcast message (``publish`` writes it,
        with the topic's subscriber count as ``targeted``), kept for the
        receipt retention after the message's TTL; None once gone or unknown."""

    def count_topic_acks(self, counts: Sequence[tuple[str, int]]) -> Deferred[None]:
        """Add ``(messageId, ACKs)`` to the receipts still kept (one batch)."""

    def catch_up(self, client_id: str, limit: int) -> Deferred[list[CatchUp]]:
        """For broadcast and every topic ``client_id`` is subscribed to (in
        that order, topics sorted), the first ``limit`` unexpired entries after
        its position, oldest first; topics with nothing to tell are left out.
        A device with no broadcast position yet reads the whole broadcast log.
        Where the log no longer holds everything after the position (trimmed
        by length, or a new epoch: Redis lost it, the topic was deleted), the
        answer says ``missed``, reads from the log's start, and moves the
        position past the loss, so that it is said once."""

    def catch_up_many(
        self,
        client_ids: Sequence[str],
        limit: int,
        known_ends: Mapping[str, TopicPosition] | None = None,
    ) -> Deferred[list[tuple[list[str], list[CatchUp]]]]:
        """``catch_up`` of each device, with the topics it is subscribed to
        (as ``device_topics`` lists them), in one call: a push server's
        heartbeat catch-ups share their round trips to the store.
        ``known_ends``: the newest position the caller knows of some topics'
        logs (``topic_ends`` and the feed); a device whose position is at or
        past it, in its epoch, is not read in that topic: an idle device at
        the end of broadcast costs no read of broadcast's log, whose one hash
        slot every device would otherwise share."""

    def topic_ends(self, topics: Sequence[str]) -> Deferred[dict[str, TopicPosition]]:
        """The position of the newest entry each topic's log holds (its epoch,
        and ``START`` for an empty log); topics with no log are left out. A
        read: nothing is created."""

    def advance_many(
        self, advances: Sequence[tuple[str, Sequence[tuple[str, TopicPosition]]]]
    ) -> Deferred[None]:
        """``advance`` of each ``(clientId, positions)``, in one call: a push
        server's ACKs of one moment share their round trip to the store."""

    def advance(
        self, client_id: str, positions: Sequence[tuple[str, TopicPosition]]
    ) -> Deferred[None]:
        """Record that the device ACKed up to each ``(topic, position)``.
        Within an epoch a position only moves forward; a topic the device is
        no longer subscribed to is ignored (broadcast always counts)."""

    # -- lifetime ------------------------------------------------------------

    def ping(self) -> Deferred[None]:
        """Fires once the backend answered (health checks); StoreError if not."""

    def close(self) -> Deferred[None]:
        """Release connections; pending calls fail with StoreError, and so does
        every call made afterwards. Closing twice is harmless."""
