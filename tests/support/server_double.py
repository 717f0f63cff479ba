"""A push server stand-in for delivery tests: answers ``Push`` and ``Kick``.

``ServerDouble`` is a ``PushGateway`` (for in-process router tests) and, once
``listen``-ed, an AMP peer on a real loopback port (for tests over the
network). It records every push batch; which clients are "connected" decides
the answer (WRITTEN, else OFFLINE), ``window_full`` marks clients whose window
is full, and ``hold()`` makes it stop answering, as a stuck server would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from pigeonpush.rpc import Kick, Push, PushItem, PushStatus, decode_batch


class ServerDouble:
    def __init__(self, online: Sequence[str] = ()) -> None:
        self.online: set[str] = set(online)
        self.window_full: set[str] = set()
        #: every Push received: the items of each call, in arrival order
        self.batches: list[list[PushItem]] = []
        self.kicks: list[tuple[str, int]] = []
        self._held: list[tuple[Deferred[Any], Any]] | None = None
        self._port: Any = None
        self._protocols: list[amp.AMP] = []

    # -- what tests look at ------------------------------------------------------

    @property
    def written(self) -> list[tuple[str, str]]:
        """(clientId, messageId) of every item answered WRITTEN, in order."""
        return [
            (item.client_id, item.message_id)
            for batch in self.batches
            for item in batch
            if self.status_of(item) is PushStatus.WRITTEN
        ]

    def items(self) -> list[PushItem]:
        return [item for batch in self.batches for item in batch]

    # -- behaviour -----------------------------------------------------------------

    def status_of(self, item: PushItem) -> PushStatus:
        if item.client_id not in self.online:
            return PushStatus.OFFLINE
        if item.client_id in self.window_full:
            return PushStatus.WINDOW_FULL
        return PushStatus.WRITTEN

    def hold(self) -> None:
        """Receive pushes but answer none until ``release``."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for waiting, answer in held:
            waiting.callback(answer)

    def _answer(self, answer: Any) -> Deferred[Any]:
        if self._held is None:
            return succeed(answer)
        waiting: Deferred[Any] = Deferred()
        self._held.append((waiting, answer))
        return waiting

    # -- PushGateway ---------------------------------------------------------------

    def push(self, items: Sequence[PushItem]) -> Deferred[list[PushStatus]]:
        self.batches.append(list(items))
        return self._answer([self.status_of(item) for item in items])

    def kick(self, client_id: str, reason: int) -> Deferred[bool]:
        self.kicks.append((client_id, reason))
        return succeed(client_id in self.online)

    # -- over AMP ------------------------------------------------------------------

    async def listen(self, reactor: Any) -> str:
        """Serve Push/Kick on a loopback port; returns its ``host:port``."""
        from twisted.internet.endpoints import TCP4ServerEndpoint

        double = self

        class Responder(amp.AMP):
            def connectionMade(self) -> None:
                super().connectionMade()
                double._protocols.append(self)

            @Push.responder
            def push(self, batch: bytes) -> Deferred[dict[str, bytes]]:
                return double.push(decode_batch(batch)).addCallback(
                    lambda statuses: {"results": bytes(statuses)}
                )

            @Kick.responder
            def kick(self, clientId: str, reason: int) -> Deferred[dict[str, bool]]:
                return double.kick(clientId, reason).addCallback(lambda kicked: {"kicked": kicked})

        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self._port = await endpoint.listen(Factory.forProtocol(Responder))
        return f"127.0.0.1:{self._port.getHost().port}"

    async def stop(self) -> None:
        self.release()
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        if self._port is not None:
            await self._port.stopListening()
            self._port = None
