"""The AMP endpoint delivery calls: ``Push`` and ``Kick`` over a ``PushGateway``.

A thin adapter: it decodes the batch, calls the gateway (the hub, the same
object the all-in-one process calls directly) and encodes the answer. Errors
the caller can act on are AMP errors declared on the commands (BAD_REQUEST,
UNAVAILABLE), so the connection survives them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from pigeonpush.rpc import (
    BadRequest,
    Kick,
    Push,
    PushGateway,
    PushStatus,
    TemporarilyUnavailable,
    decode_batch,
)
from pigeonpush.store.interface import StoreError
from pigeonpush.wire.frames import KickReason


class ServerRpc(amp.AMP):
    """One delivery connection."""

    log = Logger()

    def __init__(self, factory: ServerRpcFactory) -> None:
        super().__init__()
        self.factory = factory

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.factory.protocols.add(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.factory.protocols.discard(self)

    @Push.responder
    def push(self, batch: bytes) -> Deferred[dict[str, Any]]:
        try:
            items = decode_batch(batch)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        answer: Deferred[dict[str, Any]] = self.factory.gateway.push(items).addCallbacks(
            _results, self._push_failed
        )
        return answer

    def _push_failed(self, failure: Failure) -> None:
        failure.trap(StoreError)
        self.log.warn("Push failed: {why}", why=failure.getErrorMessage())
        raise TemporarilyUnavailable(f"the store did not answer: {failure.getErrorMessage()}")

    @Kick.responder
    def kick(self, clientId: str, reason: int) -> Deferred[dict[str, Any]]:
        try:
            KickReason(reason)
        except ValueError:
            raise BadRequest(f"{reason} is not a KICK reason") from None
        answer: Deferred[dict[str, Any]] = self.factory.gateway.kick(clientId, reason).addCallback(
            _kicked
        )
        return answer


def _kicked(kicked: bool) -> dict[str, Any]:
    return {"kicked": kicked}


def _results(statuses: list[PushStatus]) -> dict[str, Any]:
    return {"results": bytes(statuses)}


class ServerRpcFactory(Factory):
    """Builds a ``ServerRpc`` per delivery connection; keeps them so that a
    stopping server can close them."""

    def __init__(self, gateway: PushGateway) -> None:
        self.gateway = gateway
        self.protocols: set[ServerRpc] = set()

    def buildProtocol(self, addr: Any) -> ServerRpc:
        return ServerRpc(self)

    def close_connections(self) -> None:
        for protocol in list(self.protocols):
            if protocol.transport is not None:
                protocol.transport.loseConnection()
