"""The AMP side of delivery: ``Pull`` answered from a ``PullSource``.

A thin adapter: it checks the arguments, calls the source, and fits the answer
into one AMP value (65,535 bytes): what does not fit is left for the next pull
and ``more`` says so. Failures go back to the server as the command's declared
errors (``TemporarilyUnavailable``, ``BadRequest``), never as an undeclared
one, which would make AMP close the connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from pigeonpush.delivery import metrics
from pigeonpush.rpc import (
    BadRequest,
    Pull,
    PullSource,
    PushItem,
    TemporarilyUnavailable,
    encode_batches,
)
from pigeonpush.store.interface import StoreError

#: Longest clientId accepted in a Pull (the API's limit).
MAX_CLIENT_ID = 128


class PullResponder(amp.AMP):
    log = Logger()

    def __init__(self, source: PullSource) -> None:
        super().__init__()
        self._source = source

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    @Pull.responder
    def pull(self, clientId: str, limit: int, inFlight: Sequence[str]) -> Any:
        if not 0 < len(clientId) <= MAX_CLIENT_ID or limit < 0:
            raise BadRequest("clientId must be 1 to 128 characters and limit at least 0")
        return self._source.pull(clientId, limit, inFlight).addCallbacks(
            _fit, self._failed, errbackArgs=(clientId,)
        )

    def _failed(self, failure: Failure, client_id: str) -> None:
        metrics.PULL_ERRORS.inc()
        if failure.check(StoreError):
            self.log.warn(
                "Pull for {client_id} failed: {why}",
                client_id=client_id,
                why=failure.getErrorMessage(),
            )
        else:
            self.log.failure("Pull for {client_id} failed", failure, client_id=client_id)
        raise TemporarilyUnavailable("pending messages are unavailable; retry later")


def _fit(answer: tuple[list[PushItem], bool]) -> dict[str, Any]:
    items, more = answer
    count, value = next(encode_batches(items), (0, b"[]"))
    return {"batch": value, "more": more or count < len(items)}


class PullServerFactory(Factory):
    """Makes a ``PullResponder`` per push server connection."""

    def __init__(self, source: PullSource) -> None:
        self._source = source

    def buildProtocol(self, addr: Any) -> PullResponder:
        protocol = PullResponder(self._source)
        protocol.factory = self
        return protocol
