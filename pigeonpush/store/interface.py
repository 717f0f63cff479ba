"""The shared-state interface every module uses; Redis and memory implement it.

Every method returns a Deferred. Batched methods take and return sequences in
the same order, so a batch of N is one round trip (or one script), not N.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet.defer import Deferred

from pigeonpush.store.model import (
    Accepted,
    DeviceRecord,
    Message,
    Notification,
    QueueEntry,
    Receipt,
)


class StoreError(Exception):
    """The store could not do what was asked (connection lost, server error)."""


class Store(Protocol):
    # -- sessions: tokens (reglog) and routes (push server) --------------------

    def issue_token(self, client_id: str, token: str, ttl: float) -> Deferred[None]:
        """Set ``PIGEON:AUTH:<clientId>`` to ``token``, expiring after ``ttl`` seconds."""

    def token(self, client_id: str) -> Deferred[str | None]:
        """The current token, for the server's constant-time comparison."""

    def bind_session(self, client_id: str, token: str, server: str, ttl: float) -> Deferred[bool]:
        """If AUTH still holds ``token``: set ROUTE to ``server`` and give AUTH and
        ROUTE ``ttl``; atomically. False (nothing written) if the token moved on."""

    def end_session(self, client_id: str, token: str, server: str) -> Deferred[bool]:
        """Conditional cleanup of a closed session: only while AUTH still holds
        ``token``, delete it, and delete ROUTE if it holds ``server``; atomically.
        A stale session's cleanup never erases the session that replaced it."""

    def refresh_sessions(self, client_ids: Sequence[str], ttl: float) -> Deferred[None]:
        """Extend AUTH and ROUTE of live sessions to ``ttl`` (one batch)."""

    def drop_route(self, client_id: str, server: str) -> Deferred[bool]:
        """Delete ROUTE only if it still points to ``server`` (stale route)."""

    def route(self, client_id: str) -> Deferred[str | None]:
        """The server (RPC address) holding ``client_id``, or None."""

    def routes(self, client_ids: Sequence[str]) -> Deferred[list[str | None]]:
        """``route`` for many clients in one round trip, in order."""

    # -- messages ----------------------------------------------------------

    def accept(self, notifications: Sequence[Notification]) -> Deferred[list[Accepted]]:
        """For each notification, atomically: store the body with its expiry, add
        the id to every recipient's WAIT_ACK, and append it to the queue. One
        whose ``idempotency_key`` was seen before writes nothing and answers the
        first acceptance (``duplicate=True``)."""

    def pending_ids(self, client_id: str, limit: int | None = None) -> Deferred[list[str]]:
        """Ids in ``PIGEON:WAIT_ACK:<clientId>``, oldest first, at most ``limit``."""

    def bodies(self, message_ids: Sequence[str]) -> Deferred[list[Message | None]]:
        """Message bodies in order; None where expired or unknown."""

    def ack(self, acks: Sequence[tuple[str, str]]) -> Deferred[None]:
        """Remove each ``(clientId, messageId)`` from WAIT_ACK (one batch)."""

    def receipt(self, message_id: str) -> Deferred[Receipt | None]:
        """The delivery receipt, or None once the message expired or was never seen."""

    # -- devices (registration mode) ----------------------------------------

    def register_device(self, record: DeviceRecord) -> Deferred[bool]:
        """Store a device record; False (nothing written) if the clientId exists."""

    def device(self, client_id: str) -> Deferred[DeviceRecord | None]:
        """The registered device, or None."""

    # -- the notification queue (stream PIGEON:QUEUE, group ``delivery``) ------

    def consume(self, consumer: str, count: int, block: float) -> Deferred[list[QueueEntry]]:
        """Up to ``count`` new entries for ``consumer``, waiting up to ``block``
        seconds for the first one; [] if none came."""

    def acknowledge(self, entry_ids: Sequence[str]) -> Deferred[None]:
        """Mark entries handled: they are never handed out again."""

    def reclaim(self, consumer: str, min_idle: float, count: int) -> Deferred[list[QueueEntry]]:
        """Take over entries another consumer left un-acknowledged for ``min_idle``
        seconds (a crashed worker's)."""

    def queue_lag(self) -> Deferred[int]:
        """Entries accepted but not yet acknowledged (a gauge for operators)."""

    # -- lifetime ------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Release connections; pending calls fail with StoreError."""
