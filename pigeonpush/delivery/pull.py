"""Answering a push server's pull: a client's pending messages, oldest first.

The pending ids come from the client's WAIT_ACK set (messageIds are ULIDs, so
sorting them is oldest first); the ids already in flight on the client's
connection are skipped; the bodies are read in one round trip. An id whose
body is gone has expired: it is removed from WAIT_ACK so it is never looked at
again, and never delivered.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pigeonpush.delivery import metrics
from pigeonpush.rpc import PushItem
from pigeonpush.store.interface import Store, StoreError

#: The most messages one pull returns, whatever the server asks.
MAX_PULL = 1000
#: Ids read beyond the limit, so that a few expired ones do not leave a
#: client's window half empty until the next pull.
MARGIN = 16


class PendingMessages:
    """Delivery's ``PullSource``: used over AMP by ``rpc_server`` or in process."""

    log = Logger()

    def __init__(self, store: Store, clock: IReactorTime) -> None:
        self._store = store
        self._clock = clock

    def pull(
        self, client_id: str, limit: int, in_flight: Sequence[str]
    ) -> Deferred[tuple[list[PushItem], bool]]:
        return ensureDeferred(self._pull(client_id, limit, in_flight))

    async def _pull(
        self, client_id: str, limit: int, in_flight: Sequence[str]
    ) -> tuple[list[PushItem], bool]:
        limit = min(limit, MAX_PULL)
        if limit <= 0:
            return [], False
        skip = frozenset(in_flight)
        wanted = limit + len(skip) + MARGIN
        ids = await self._store.pending_ids(client_id, wanted)
        more = len(ids) >= wanted
        candidates = [message_id for message_id in ids if message_id not in skip]
        bodies = await self._store.bodies(candidates)
        now = self._clock.seconds()
        items: list[PushItem] = []
        gone: list[tuple[str, str]] = []
        for message_id, body in zip(candidates, bodies, strict=True):
            if body is None or body.expires_at <= now:
                gone.append((client_id, message_id))
            elif len(items) < limit:
                items.append(PushItem(client_id, message_id, body.title, body.text, body.extras))
            else:
                more = True
        if gone:
            await self._forget(gone)
        metrics.PULLS.inc()
        metrics.PULLED.inc(len(items))
        return items, more

    async def _forget(self, gone: list[tuple[str, str]]) -> None:
        # The answer does not depend on this write: a failure leaves the ids
        # for the next pull to clean, and is no reason to fail this one.
        try:
            await self._store.ack(gone)
        except StoreError as e:
            self.log.warn(
                "Could not remove {count} expired ids from WAIT_ACK: {why}",
                count=len(gone),
                why=str(e),
            )
            return
        metrics.PULL_CLEANED.inc(len(gone))
