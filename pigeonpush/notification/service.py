"""Lifetime glue for the notification plugin's service tree."""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred

from pigeonpush.store.interface import Store


class StoreOwner(MultiService):
    """Holds the store for its children (the HTTP listener): on stop, the
    children stop first, then the store closes, so no request in flight finds
    the store closed under it."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await super().stopService()
        await self.store.close()
