"""A delivery double for the push server's tests: it answers ``Pull``.

``PendingMessages`` is the in-process form (a ``PullSource``); ``DeliveryDouble``
serves the same answers over AMP on a loopback port and can register itself
under ``delivery`` in discovery, as a delivery worker does. Pending messages
are planted by the test and handed out oldest first (by messageId), skipping
the ids the server says are in flight, at most ``limit``, with ``more`` when
some were left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted.python.failure import Failure

from pigeonpush.rpc import Pull, PushItem, encode_batches


@attrs.define
class PullCall:
    client_id: str
    limit: int
    in_flight: list[str]


class PendingMessages:
    """An in-process PullSource over planted messages; records every call."""

    def __init__(self) -> None:
        self.pending: dict[str, list[PushItem]] = {}
        self.calls: list[PullCall] = []
        #: when set, pulls fail with it
        self.error: Exception | None = None
        #: when True, pulls wait until ``release()``
        self.hold = False
        self._held: list[tuple[Deferred[tuple[list[PushItem], bool]], PullCall]] = []

    def plant(self, *items: PushItem) -> None:
        for item in items:
            self.pending.setdefault(item.client_id, []).append(item)

    def acked(self, client_id: str, message_id: str) -> None:
        self.pending[client_id] = [
            item for item in self.pending.get(client_id, []) if item.message_id != message_id
        ]

    def answer(self, call: PullCall) -> tuple[list[PushItem], bool]:
        skip = set(call.in_flight)
        waiting = sorted(
            (item for item in self.pending.get(call.client_id, []) if item.message_id not in skip),
            key=lambda item: item.message_id,
        )
        return waiting[: call.limit], len(waiting) > call.limit

    def pull(
        self, client_id: str, limit: int, in_flight: Sequence[str]
    ) -> Deferred[tuple[list[PushItem], bool]]:
        call = PullCall(client_id, limit, list(in_flight))
        self.calls.append(call)
        if self.error is not None:
            return fail(self.error)
        if self.hold:
            waiting: Deferred[tuple[list[PushItem], bool]] = Deferred()
            self._held.append((waiting, call))
            return waiting
        return succeed(self.answer(call))

    def release(self) -> None:
        held, self._held = self._held, []
        for waiting, call in held:
            waiting.callback(self.answer(call))


class _DeliveryAMP(amp.AMP):
    def __init__(self, double: DeliveryDouble) -> None:
        super().__init__()
        self.double = double

    def connectionMade(self) -> None:
        super().connectionMade()
        self.double.connections.append(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.double.connections.remove(self)

    @Pull.responder
    def pull(self, clientId: str, limit: int, inFlight: list[str]) -> Deferred[dict[str, Any]]:
        answering = self.double.messages.pull(clientId, limit, inFlight)

        def encode(result: tuple[list[PushItem], bool]) -> dict[str, Any]:
            items, more = result
            batches = list(encode_batches(items))
            assert len(batches) <= 1, "the double answers with one AMP value"
            return {"batch": batches[0][1] if batches else b"[]", "more": more}

        return answering.addCallback(encode)


class DeliveryDouble(Factory):
    """``Pull`` over AMP on a loopback port, answered by ``messages``."""

    def __init__(self, messages: PendingMessages | None = None) -> None:
        self.messages = messages if messages is not None else PendingMessages()
        self.connections: list[_DeliveryAMP] = []
        self.port: Any = None
        self.registration: Any = None

    def buildProtocol(self, addr: Any) -> _DeliveryAMP:
        return _DeliveryAMP(self)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    async def start(self, discovery: Any = None, node_id: str = "delivery-double") -> None:
        """Listen on a free loopback port; register in ``discovery`` if given."""
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString

        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self)
        if discovery is not None:
            self.registration = await discovery.register("delivery", node_id, {"rpc": self.address})

    async def stop(self) -> None:
        if self.registration is not None:
            await self.registration.unregister()
            self.registration = None
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        for protocol in list(self.connections):
            protocol.transport.abortConnection()
