"""Routing one batch of queue entries to the push servers holding the recipients.

``MessageRouter.route(entries)``: drop expired messages, look up every recipient's
ROUTE in one round trip, group the recipients by server (keeping queue order
within each server's batch, which keeps per-client order on the live path)
and push each server its batch concurrently through a ``PushGateway``.

Nothing here acknowledges anything: recipients that are offline, have a full
window or sit on a server that does not answer keep the message in their
WAIT_ACK set and get it from the next pull. A store error fails the whole
batch (the caller retries it); a push server's failure only affects its own
recipients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.delivery import metrics
from pigeonpush.rpc import PushGateway, PushItem, PushStatus
from pigeonpush.store.interface import Store
from pigeonpush.store.model import QueueEntry

#: The gateway for a push server's RPC address (over AMP, or in process).
GatewayFor = Callable[[str], PushGateway]

#: Result labels beyond PushStatus, for recipients that never reached a server.
NO_ROUTE = "no_route"
UNAVAILABLE = "unavailable"


@attrs.define(slots=True)
class BatchReport:
    """What routing one batch did, per recipient (a message to one client)."""

    entries: int = 0
    expired: int = 0
    results: dict[str, int] = attrs.field(factory=dict)

    def add(self, result: str, count: int = 1) -> None:
        self.results[result] = self.results.get(result, 0) + count


class MessageRouter:
    log = Logger()

    def __init__(self, store: Store, gateway_for: GatewayFor, clock: IReactorTime) -> None:
        self._store = store
        self._gateway_for = gateway_for
        self._clock = clock

    async def route(self, entries: Sequence[QueueEntry]) -> BatchReport:
        """Push ``entries`` to their recipients' servers; StoreError fails it."""
        report = BatchReport(entries=len(entries))
        now = self._clock.seconds()
        live = [e for e in entries if e.notification.message.expires_at > now]
        report.expired = len(entries) - len(live)
        targets = await self._targets(live)
        clients = list(dict.fromkeys(client for client, _ in targets))
        routes = dict(zip(clients, await self._store.routes(clients), strict=True))
        groups: dict[str, list[PushItem]] = {}
        for client, entry in targets:
            address = routes[client]
            if address is None:
                report.add(NO_ROUTE)
                continue
            message = entry.notification.message
            groups.setdefault(address, []).append(
                PushItem(client, message.message_id, message.title, message.text, message.extras)
            )
        pushes = [self._push(address, items, report) for address, items in groups.items()]
        if pushes:
            await DeferredList(pushes)
        for result, count in report.results.items():
            metrics.PUSH_RESULTS.labels(result).inc(count)
        metrics.EXPIRED.inc(report.expired)
        metrics.BATCHES.inc()
        return report

    async def _targets(self, entries: Sequence[QueueEntry]) -> list[tuple[str, QueueEntry]]:
        """(clientId, entry) pairs to push, in queue order. An entry handed out
        before (a crashed worker's) goes only to recipients that have not ACKed
        it yet: one receipt read per such entry, which is rare, saves the
        clients a duplicate. So does an entry with a collapse key: a newer
        message with the same key may have replaced it for some recipients
        while it waited in the queue, and those must not get it after all."""
        again = [e for e in entries if e.deliveries > 1 or e.notification.collapse_key]
        still: dict[str, frozenset[str]] = {}
        if again:
            receipts = await gatherResults(
                [self._store.receipt(e.notification.message.message_id) for e in again],
                consumeErrors=True,
            ).addErrback(_first_error)
            for entry, receipt in zip(again, receipts, strict=True):
                pending = receipt.pending if receipt is not None else ()
                still[entry.entry_id] = frozenset(pending)
        targets = []
        for entry in entries:
            keep = still.get(entry.entry_id)
            for client in entry.notification.recipients:
                if keep is None or client in keep:
                    targets.append((client, entry))
        return targets

    def _push(self, address: str, items: list[PushItem], report: BatchReport) -> Deferred[None]:
        try:
            pushed = self._gateway_for(address).push(items)
        except Exception as e:  # a gateway that cannot even start the call
            pushed = Deferred()
            pushed.errback(Failure(e))

        def done(statuses: list[PushStatus]) -> None:
            if len(statuses) != len(items):
                raise ValueError(f"{len(statuses)} statuses for {len(items)} items")
            for status in statuses:
                report.add(status.name.lower())

        def failed(failure: Failure) -> None:
            # Offline for this batch: the messages stay in WAIT_ACK and the
            # clients pull them when they reconnect or ping.
            self.log.warn(
                "Push of {count} messages to {address} failed: {why}",
                count=len(items),
                address=address,
                why=failure.getErrorMessage(),
            )
            report.add(UNAVAILABLE, len(items))

        return pushed.addCallback(done).addErrback(failed)


def _first_error(failure: Failure) -> Failure:
    """gatherResults wraps errors in FirstError; hand on the store's own."""
    from twisted.internet.defer import FirstError

    error = failure.value
    if isinstance(error, FirstError):
        inner: Failure = error.subFailure
        return inner
    return failure
