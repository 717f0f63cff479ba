"""The AMP side of delivery: ``Pull`` and ``PullMany`` answered from a ``PullSource``.

A thin adapter: it checks the arguments, calls the source, and fits the answer
into one AMP value (65,535 bytes): what does not fit is left for the next pull
and ``more`` says so (for ``PullMany``: ``more`` lists those clients). A
``PullMany`` reaches a source without ``pull_many`` as one ``pull`` per client.
Failures go back to the server as the command's declared errors
(``TemporarilyUnavailable``, ``BadRequest``), never as an undeclared one,
which would make AMP close the connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from pigeonpush.delivery import metrics
from pigeonpush.identifiers import CLIENT_ID, is_client_id
from pigeonpush.rpc import (
    BadRequest,
    BatchPullSource,
    Pull,
    PullAnswer,
    PullMany,
    PullRequest,
    PullSource,
    PushItem,
    TemporarilyUnavailable,
    decode_pull_requests,
    encode_batches,
)
from pigeonpush.store.interface import StoreError

#: Most clients one PullMany may ask for.
MAX_PULL_MANY = 1000


def _check_request(client_id: str, limit: int) -> None:
    """BadRequest for a clientId no reglog would route, or a negative limit."""
    if not is_client_id(client_id):
        raise BadRequest(f"clientId must be {CLIENT_ID.text}")
    if limit < 0:
        raise BadRequest(f"limit must be at least 0, not {limit}")


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
        _check_request(clientId, limit)
        return self._source.pull(clientId, limit, inFlight).addCallbacks(
            _fit, self._failed, errbackArgs=(clientId,)
        )

    @PullMany.responder
    def pull_many(self, requests: bytes) -> Any:
        try:
            asked = decode_pull_requests(requests)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if len(asked) > MAX_PULL_MANY:
            raise BadRequest(f"at most {MAX_PULL_MANY} clients per PullMany, not {len(asked)}")
        for request in asked:
            _check_request(request.client_id, request.limit)
        many = getattr(self._source, "pull_many", None)
        answering: Deferred[list[PullAnswer]]
        if many is not None:
            answering = cast(BatchPullSource, self._source).pull_many(asked)
        else:
            answering = _one_by_one(self._source, asked)
        return answering.addCallback(_fit_many, asked).addErrback(
            self._failed, f"{len(asked)} clients"
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


def _one_by_one(source: PullSource, requests: list[PullRequest]) -> Deferred[list[PullAnswer]]:
    pulls = [source.pull(r.client_id, r.limit, r.in_flight) for r in requests]
    return gatherResults(pulls, consumeErrors=True).addErrback(_first_failure)


def _first_failure(failure: Failure) -> Failure:
    """The failure of the first pull that failed, not gatherResults' FirstError."""
    failure.trap(FirstError)
    assert isinstance(failure.value, FirstError)
    return failure.value.subFailure


def _fit_many(answers: list[PullAnswer], requests: list[PullRequest]) -> dict[str, Any]:
    items = [item for batch, _ in answers for item in batch]
    count, value = next(encode_batches(items), (0, b"[]"))
    sent: dict[str, int] = {}
    for item in items[:count]:
        sent[item.client_id] = sent.get(item.client_id, 0) + 1
    more = [
        request.client_id
        for request, (batch, more) in zip(requests, answers, strict=True)
        if more or sent.get(request.client_id, 0) < len(batch)
    ]
    return {"batch": value, "more": more}


class PullServerFactory(Factory):
    """Makes a ``PullResponder`` per push server connection."""

    def __init__(self, source: PullSource) -> None:
        self._source = source

    def buildProtocol(self, addr: Any) -> PullResponder:
        protocol = PullResponder(self._source)
        protocol.factory = self
        return protocol
