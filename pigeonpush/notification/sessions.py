"""Ending a device's session for an application server (the kick).

``DELETE /v1/devices/{clientId}/session`` first revokes the device's token in
the store (AUTH is deleted, so the token can no longer bind a session on any
server), then asks the push server that ROUTE names to close the connection
with KICK (reason POLICY), over AMP like delivery's pushes, or in process in
pigeon-standalone. In that order, a device cannot slip back in with the old
token between the two steps; ROUTE is left for that server's stale-route
cleanup. Revoking twice is harmless, so a caller retries a failed kick.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from pigeonpush.notification import metrics
from pigeonpush.rpc import PushGateway
from pigeonpush.store.interface import Store
from pigeonpush.wire.frames import KickReason


class DeviceSessions:
    """Kicks devices through the push server holding them."""

    log = Logger()

    def __init__(self, store: Store, gateway_for: Callable[[str], PushGateway]) -> None:
        self._store = store
        self._gateway_for = gateway_for

    def kick(self, client_id: str) -> Deferred[bool]:
        """Revoke the token and disconnect the device: True if a server
        closed its connection, False if it had none. Fails with StoreError
        (nothing known) or the gateway's error, such as RpcUnavailable (the
        token is revoked then, the connection maybe not)."""
        return ensureDeferred(self._kick(client_id))

    async def _kick(self, client_id: str) -> bool:
        server = await self._store.revoke_session(client_id)
        kicked = False
        if server is not None:
            kicked = await self._gateway_for(server).kick(client_id, KickReason.POLICY)
        metrics.KICKS.labels("disconnected" if kicked else "no_session").inc()
        self.log.info(
            "Revoked the token of {client_id}; session on {server} closed: {kicked}",
            client_id=client_id,
            server=server,
            kicked=kicked,
        )
        return kicked
