"""Discovery without ZooKeeper: a fixed list of nodes plus an in-process registry.

``pigeon-standalone`` runs every part in one process: the push server registers
itself here and reglog sees it through the same interface. A small deployment
without ZooKeeper lists its fixed nodes instead (``static:`` specs, see spec.py).

Callbacks are never called synchronously: changes are published from the
reactor loop (``clock.callLater(0, ...)``), several changes in one turn as one
set, like the ZooKeeper backend's asynchronous watches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.discovery.interface import (
    KINDS,
    DiscoveryClosed,
    Node,
    NodeRegistration,
    Watch,
    WatchCallback,
)
from pigeonpush.discovery.liveset import EMPTY, LiveSet
from pigeonpush.discovery.naming import check_kind, check_node_id
from pigeonpush.discovery.nodedata import decode_data, encode_data
from pigeonpush.discovery.ratelimit import RateLimitedWriter

_NO_NODES: Mapping[str, Sequence[Node]] = MappingProxyType({})


class _StaticRegistration:
    """This process's node in the in-process registry."""

    __slots__ = ("_owner", "_writer", "kind", "node_id")

    log = Logger()

    def __init__(self, owner: StaticDiscovery, kind: str, node_id: str) -> None:
        self._owner = owner
        self.kind = kind
        self.node_id = node_id
        self._writer = RateLimitedWriter(
            owner._clock, owner._min_update_interval, self._write, self._write_failed
        )

    def begin(self, encoded: bytes) -> None:
        self._writer.submit(encoded, urgent=True)

    def update(self, data: Mapping[str, Any]) -> None:
        self._writer.submit(encode_data(data))

    def unregister(self) -> Deferred[None]:
        self._writer.stop()
        self._owner._remove(self)
        return succeed(None)

    def _write(self, encoded: bytes) -> Deferred[None]:
        self._owner._store(self, decode_data(encoded))
        return succeed(None)

    def _write_failed(self, failure: Failure) -> None:
        self.log.failure(
            "Could not publish {kind} node {node_id}",
            failure=failure,
            kind=self.kind,
            node_id=self.node_id,
        )


class StaticDiscovery:
    """A fixed set of nodes per kind, plus the nodes this process registers.

    ``nodes`` maps a kind to its fixed nodes (whose ``kind`` must match); they
    are always live and cannot be registered over. ``min_update_interval``
    rate-limits ``update`` exactly as the ZooKeeper backend does.
    """

    log = Logger()

    def __init__(
        self,
        nodes: Mapping[str, Sequence[Node]] = _NO_NODES,
        *,
        clock: IReactorTime,
        min_update_interval: float = 1.0,
    ) -> None:
        if min_update_interval < 0:
            raise ValueError("min_update_interval must be >= 0")
        self._clock = clock
        self._min_update_interval = min_update_interval
        self._fixed: dict[str, dict[str, Node]] = {kind: {} for kind in KINDS}
        for kind, fixed in nodes.items():
            check_kind(kind)
            for node in fixed:
                check_node_id(node.node_id)
                if node.kind != kind:
                    raise ValueError(
                        f"node {node.node_id!r} of kind {node.kind!r} listed as {kind}"
                    )
                if node.node_id in self._fixed[kind]:
                    raise ValueError(f"{kind} node {node.node_id!r} is listed twice")
                # Normalised to what JSON gives back, like data read from ZooKeeper.
                data = decode_data(encode_data(node.data))
                self._fixed[kind][node.node_id] = Node(kind, node.node_id, data)
        self._registered: dict[str, dict[str, Node]] = {kind: {} for kind in KINDS}
        self._registrations: dict[tuple[str, str], _StaticRegistration] = {}
        self._live_sets: dict[str, LiveSet] = {}
        self._publishing: dict[str, IDelayedCall] = {}
        self._closed = False

    def fixed(self, kind: str) -> Mapping[str, Node]:
        """The fixed nodes of ``kind`` (from the constructor)."""
        return MappingProxyType(self._fixed[check_kind(kind)])

    def start(self) -> Deferred[None]:
        if self._closed:
            return fail(DiscoveryClosed("discovery is closed"))
        return succeed(None)

    def register(
        self, kind: str, node_id: str, data: Mapping[str, Any]
    ) -> Deferred[NodeRegistration]:
        check_kind(kind)
        check_node_id(node_id)
        encoded = encode_data(data)
        if self._closed:
            return fail(DiscoveryClosed("discovery is closed"))
        if node_id in self._fixed[kind]:
            raise ValueError(f"{kind} node {node_id!r} is in the fixed list; pick another id")
        if (kind, node_id) in self._registrations:
            raise ValueError(f"{kind} node {node_id!r} is already registered by this process")
        registration = _StaticRegistration(self, kind, node_id)
        self._registrations[(kind, node_id)] = registration
        registration.begin(encoded)
        registered: Deferred[NodeRegistration] = succeed(registration)
        return registered

    def watch(self, kind: str, callback: WatchCallback) -> Deferred[Watch]:
        check_kind(kind)
        if self._closed:
            return fail(DiscoveryClosed("discovery is closed"))
        live_set = self._live_sets.get(kind)
        if live_set is None:
            live_set = self._live_sets[kind] = LiveSet(kind, self._clock)
            self._schedule_publish(kind)
        subscribed: Deferred[Any] = live_set.subscribe(callback)
        return subscribed

    def live(self, kind: str) -> Mapping[str, Node]:
        live_set = self._live_sets.get(check_kind(kind))
        return EMPTY if live_set is None else live_set.current

    def close(self) -> Deferred[None]:
        if self._closed:
            return succeed(None)
        self._closed = True
        for registration in list(self._registrations.values()):
            registration.unregister()
        for call in self._publishing.values():
            if call.active():
                call.cancel()
        self._publishing.clear()
        for live_set in self._live_sets.values():
            live_set.close()
        return succeed(None)

    # -- the registry, called by registrations ---------------------------------

    def _store(self, registration: _StaticRegistration, data: dict[str, Any]) -> None:
        if self._registrations.get((registration.kind, registration.node_id)) is not registration:
            return
        node = Node(registration.kind, registration.node_id, data)
        self._registered[registration.kind][registration.node_id] = node
        self._schedule_publish(registration.kind)

    def _remove(self, registration: _StaticRegistration) -> None:
        key = (registration.kind, registration.node_id)
        if self._registrations.get(key) is not registration:
            return
        del self._registrations[key]
        self._registered[registration.kind].pop(registration.node_id, None)
        self._schedule_publish(registration.kind)

    def _schedule_publish(self, kind: str) -> None:
        if self._closed or kind not in self._live_sets or kind in self._publishing:
            return
        self._publishing[kind] = self._clock.callLater(0, self._publish, kind)

    def _publish(self, kind: str) -> None:
        del self._publishing[kind]
        nodes = dict(self._fixed[kind])
        nodes.update(self._registered[kind])
        self._live_sets[kind].publish(nodes)
