"""Pending messages from delivery over AMP: the server's ``PullSource``.

Delivery workers register under ``/pigeonpush/delivery/`` with their RPC
address; ``nodes_changed`` is the discovery watch's callback. Each pull goes to
the next live worker (round robin) and fails over to the others when one cannot
be reached; connections come from an ``AmpPool``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from pigeonpush.discovery.interface import Node
from pigeonpush.rpc import Pull, PushItem, decode_batch
from pigeonpush.rpcpool import AmpPool, RpcUnavailable, split_address


class AmpPullSource:
    log = Logger()

    def __init__(self, pool: AmpPool) -> None:
        self._pool = pool
        self._addresses: list[str] = []
        self._next = 0

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
                split_address(address if isinstance(address, str) else "")
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
        addresses = self._addresses
        if not addresses:
            raise RpcUnavailable("no delivery node is known")
        start = self._next % len(addresses)
        self._next = start + 1
        why = ""
        for address in addresses[start:] + addresses[:start]:
            try:
                answer = await self._pool.call(
                    address, Pull, clientId=client_id, limit=limit, inFlight=in_flight
                )
            except RpcUnavailable as e:
                why = str(e)
                continue
            return decode_batch(answer["batch"]), bool(answer["more"])
        raise RpcUnavailable(f"no delivery node answered; the last: {why}")
