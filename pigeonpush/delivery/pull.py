"""Answering a push server's pull: a client's pending messages, oldest first.

The pending ids come from the client's WAIT_ACK set (messageIds are ULIDs, so
sorting them is oldest first); the ids already in flight on the client's
connection are skipped; the bodies are read in one round trip. An id whose
body is gone has expired: it is dropped from WAIT_ACK with the reason
``expired`` (the receipt says so) so it is never looked at again, and never
delivered.

``pull_many`` answers the pulls of many clients (a push server batches them)
with one pipelined read of every client's pending ids and one of every body,
so the store sees three round trips per batch at most, not per client.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pigeonpush.delivery import metrics
from pigeonpush.rpc import PullAnswer, PullRequest, PushItem
from pigeonpush.store.interface import Store, StoreError
from pigeonpush.store.model import DropReason

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
        [answer] = await self._pull_many([PullRequest(client_id, limit, tuple(in_flight))])
        return answer

    def pull_many(self, requests: Sequence[PullRequest]) -> Deferred[list[PullAnswer]]:
        """``pull`` for many clients: one read of all their pending ids, one of
        all the bodies, one cleanup of all the expired ids."""
        return ensureDeferred(self._pull_many(requests))

    async def _pull_many(self, requests: Sequence[PullRequest]) -> list[PullAnswer]:
        answers: list[PullAnswer] = [([], False) for _ in requests]
        indices = [index for index, request in enumerate(requests) if request.limit > 0]
        asked = [requests[index] for index in indices]
        if asked:
            wanted = [min(r.limit, MAX_PULL) + len(r.in_flight) + MARGIN for r in asked]
            pending = await self._store.pending_ids_many([r.client_id for r in asked], max(wanted))
            candidates: list[list[str]] = []
            for request, ids, want in zip(asked, pending, wanted, strict=True):
                skip = frozenset(request.in_flight)
                candidates.append([m for m in ids[:want] if m not in skip])
            wanted_bodies = [m for ids in candidates for m in ids]
            bodies = await self._store.bodies(wanted_bodies) if wanted_bodies else []
            now = self._clock.seconds()
            gone: list[tuple[str, str, str]] = []
            position = pulled = 0
            for index, request, ids, want, pending_ids in zip(
                indices, asked, candidates, wanted, pending, strict=True
            ):
                limit = min(request.limit, MAX_PULL)
                client_id = request.client_id
                more = len(pending_ids) >= want
                items: list[PushItem] = []
                for message_id in ids:
                    body = bodies[position]
                    position += 1
                    if body is None or body.expires_at <= now:
                        gone.append((client_id, message_id, DropReason.EXPIRED.value))
                    elif len(items) < limit:
                        items.append(
                            PushItem(client_id, message_id, body.title, body.text, body.extras)
                        )
                    else:
                        more = True
                answers[index] = (items, more)
                pulled += len(items)
            metrics.PULLED.inc(pulled)
            if gone:
                await self._forget(gone)
        metrics.PULLS.inc(len(asked))
        return answers

    async def _forget(self, gone: list[tuple[str, str, str]]) -> None:
        # The answer does not depend on this write: a failure leaves the ids
        # for the next pull to clean, and is no reason to fail this one.
        try:
            await self._store.drop_pending(gone)
        except StoreError as e:
            self.log.warn(
                "Could not remove {count} expired ids from WAIT_ACK: {why}",
                count=len(gone),
                why=str(e),
            )
            return
        metrics.PULL_CLEANED.inc(len(gone))
