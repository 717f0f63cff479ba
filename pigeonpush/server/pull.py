"""Pending messages from delivery over AMP: the server's ``PullSource``.

Delivery workers register under ``/pigeonpush/delivery/`` with their RPC
address; ``nodes_changed`` is the discovery watch's callback. Each pull goes to
the next live worker (round robin) and fails over to the others when one cannot
be reached; connections come from an ``AmpPool``.

``PullBatcher`` coalesces the pulls the hub asks for within a few
milliseconds into one ``pull_many``: over AMP that is one ``PullMany`` call
(per 65,535-byte chunk of requests) and, in delivery, one store read for all
of them. A worker that does not know ``PullMany`` (an older one) gets one
``Pull`` per client instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import attrs
from twisted.internet.defer import Deferred, FirstError, ensureDeferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols.amp import UnhandledCommand
from twisted.python.failure import Failure

from pigeonpush.discovery.interface import Node
from pigeonpush.hostport import parse_peer_address
from pigeonpush.rpc import (
    BatchPullSource,
    Pull,
    PullAnswer,
    PullMany,
    PullRequest,
    PullSource,
    PushItem,
    decode_batch,
    encode_pull_requests,
)
from pigeonpush.rpcpool import AmpPool, RpcUnavailable

#: Seconds a pull waits for others to share its call to delivery.
BATCH_DELAY = 0.01
#: Most pulls in one batch: a full batch goes out at once.
MAX_BATCH = 500


class AmpPullSource:
    log = Logger()

    def __init__(self, pool: AmpPool) -> None:
        self._pool = pool
        self._addresses: list[str] = []
        self._next = 0
        #: workers that answered PullMany with UNHANDLED: they get Pull
        self._single: set[str] = set()

    @property
    def addresses(self) -> list[str]:
        """The RPC addresses of the live delivery workers, in pull order."""
        return list(self._addresses)

    def nodes_changed(self, nodes: Mapping[str, Node]) -> None:
        """The live set of delivery workers changed (a discovery watch callback)."""
        addresses: set[str] = set()
        for node in nodes.values():
            address = node.data.get("rpc")
            try:
                parse_peer_address(address if isinstance(address, str) else "")
            except ValueError:
                self.log.warn(
                    "Delivery node {node_id} publishes no usable RPC address: {rpc!r}",
                    node_id=node.node_id,
                    rpc=address,
                )
                continue
            assert isinstance(address, str)
            addresses.add(address)
        for gone in set(self._addresses) - addresses:
            self._pool.drop(gone)
            self._single.discard(gone)
        if addresses != set(self._addresses):
            self.log.info(
                "Delivery nodes for pulls: {addresses}", addresses=", ".join(sorted(addresses))
            )
        self._addresses = sorted(addresses)

    def pull(
        self, client_id: str, limit: int, in_flight: Sequence[str]
    ) -> Deferred[tuple[list[PushItem], bool]]:
        """Pending messages for ``client_id`` from the next worker that answers;
        RpcUnavailable when none does."""
        return ensureDeferred(self._pull(client_id, limit, list(in_flight)))

    async def _pull(
        self, client_id: str, limit: int, in_flight: list[str]
    ) -> tuple[list[PushItem], bool]:
        why = ""
        for address in self._in_order():
            try:
                return await self._pull_one(
                    address, PullRequest(client_id, limit, tuple(in_flight))
                )
            except RpcUnavailable as e:
                why = str(e)
        raise RpcUnavailable(f"no delivery node answered; the last: {why}")

    def pull_many(self, requests: Sequence[PullRequest]) -> Deferred[list[PullAnswer]]:
        """``pull`` for many clients: one ``PullMany`` per chunk of requests that
        fits an AMP value, each to the next worker that answers."""
        return ensureDeferred(self._pull_many(requests))

    async def _pull_many(self, requests: Sequence[PullRequest]) -> list[PullAnswer]:
        answers: list[PullAnswer] = []
        start = 0
        for count, value in encode_pull_requests(requests):
            chunk = requests[start : start + count]
            start += count
            answers += await self._pull_chunk(chunk, value)
        return answers

    async def _pull_chunk(self, chunk: Sequence[PullRequest], value: bytes) -> list[PullAnswer]:
        why = ""
        for address in self._in_order():
            try:
                if address in self._single:
                    return await self._one_by_one(address, chunk)
                try:
                    answer = await self._pool.call(address, PullMany, requests=value)
                except UnhandledCommand:
                    self.log.info(
                        "Delivery node {address} does not know PullMany; using Pull",
                        address=address,
                    )
                    self._single.add(address)
                    return await self._one_by_one(address, chunk)
            except RpcUnavailable as e:
                why = str(e)
                continue
            return _answers(chunk, decode_batch(answer["batch"]), answer["more"])
        raise RpcUnavailable(f"no delivery node answered; the last: {why}")

    async def _one_by_one(self, address: str, chunk: Sequence[PullRequest]) -> list[PullAnswer]:
        pulls = [ensureDeferred(self._pull_one(address, request)) for request in chunk]
        try:
            return cast(list[PullAnswer], await gatherResults(pulls, consumeErrors=True))
        except FirstError as e:
            e.subFailure.raiseException()
            raise  # not reached

    async def _pull_one(self, address: str, request: PullRequest) -> PullAnswer:
        answer = await self._pool.call(
            address,
            Pull,
            clientId=request.client_id,
            limit=request.limit,
            inFlight=list(request.in_flight),
        )
        return decode_batch(answer["batch"]), bool(answer["more"])

    def _in_order(self) -> list[str]:
        """The live workers, starting with the next in round robin."""
        addresses = self._addresses
        if not addresses:
            raise RpcUnavailable("no delivery node is known")
        start = self._next % len(addresses)
        self._next = start + 1
        return addresses[start:] + addresses[:start]


def _answers(
    requests: Sequence[PullRequest], items: list[PushItem], more: Sequence[str]
) -> list[PullAnswer]:
    """Each request's share of one PullMany answer."""
    by_client: dict[str, list[PushItem]] = {}
    for item in items:
        by_client.setdefault(item.client_id, []).append(item)
    with_more = set(more)
    return [(by_client.get(r.client_id, []), r.client_id in with_more) for r in requests]


@attrs.define(slots=True)
class _Waiting:
    request: PullRequest
    answer: Deferred[PullAnswer]


class PullBatcher:
    """Coalesces pulls into ``pull_many`` calls: those asked within
    ``delay`` seconds of the first go out together, at most ``max_batch`` per
    call. A source without ``pull_many`` is asked one ``pull`` per client."""

    def __init__(
        self,
        source: PullSource,
        clock: IReactorTime,
        *,
        delay: float = BATCH_DELAY,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.source = source
        self._clock = clock
        self._delay = delay
        self._max_batch = max_batch
        self._many = getattr(source, "pull_many", None) is not None
        self._waiting: list[_Waiting] = []
        self._timer: IDelayedCall | None = None

    def pull(self, client_id: str, limit: int, in_flight: Sequence[str]) -> Deferred[PullAnswer]:
        """The client's pending messages, from the next batch."""
        if not self._many:
            return self.source.pull(client_id, limit, in_flight)
        answer: Deferred[PullAnswer] = Deferred()
        self._waiting.append(_Waiting(PullRequest(client_id, limit, tuple(in_flight)), answer))
        if len(self._waiting) >= self._max_batch:
            self.flush()
        elif self._timer is None:
            self._timer = self._clock.callLater(self._delay, self.flush)
        return answer

    def flush(self) -> None:
        """Send what is waiting now."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting, []
        if batch:
            self._send(batch)

    def _send(self, batch: list[_Waiting]) -> None:
        source = cast(BatchPullSource, self.source)
        pulling = source.pull_many([each.request for each in batch])
        pulling.addCallback(self._answered, batch).addErrback(self._failed, batch)

    def _answered(self, answers: list[PullAnswer], batch: list[_Waiting]) -> None:
        """Hand out each answer; the clients cut from a full answer (nothing
        for them, "more") are asked again at once, as long as the round gave
        items to someone: after a reconnect storm a batch holds hundreds of
        clients whose backlogs do not fit one answer, and without this most
        of them would wait for their next PING. A round that gives nothing to
        anyone answers "nothing, more", and the hub's own guard takes over."""
        cut: list[_Waiting] = []
        for each, answer in zip(batch, answers, strict=True):
            items, more = answer
            if more and not items:
                cut.append(each)
            else:
                each.answer.callback(answer)
        if cut and len(cut) < len(batch):
            # Next turn, not now: a source that answers at once must not
            # recurse once per round.
            self._clock.callLater(0, self._send, cut)
        else:
            for each in cut:
                each.answer.callback(([], True))

    @staticmethod
    def _failed(failure: Failure, batch: list[_Waiting]) -> None:
        for each in batch:
            if not each.answer.called:
                each.answer.errback(failure)
