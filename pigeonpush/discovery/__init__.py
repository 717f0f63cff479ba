"""Discovery: who is alive, on ZooKeeper or from a static list (docs/discovery.rst).

``open_discovery(spec, reactor)`` turns the operator's one string into a
backend; ``DiscoveryService`` runs it inside a twistd plugin.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from pigeonpush.discovery.interface import (
    DELIVERY,
    KINDS,
    SERVERS,
    Discovery,
    DiscoveryClosed,
    Node,
    NodeRegistration,
    Watch,
    WatchCallback,
)
from pigeonpush.discovery.service import DiscoveryService
from pigeonpush.discovery.spec import StaticSpec, parse_spec
from pigeonpush.discovery.static import StaticDiscovery

__all__ = [
    "DELIVERY",
    "KINDS",
    "SERVERS",
    "Discovery",
    "DiscoveryClosed",
    "DiscoveryService",
    "Node",
    "NodeRegistration",
    "StaticDiscovery",
    "Watch",
    "WatchCallback",
    "open_discovery",
]


def open_discovery(
    spec: str,
    reactor: IReactorTime,
    *,
    min_update_interval: float = 1.0,
    session_timeout: float = 10.0,
) -> Discovery:
    """The backend ``spec`` names (see pigeonpush.discovery.spec); ValueError if
    ``spec`` is malformed. Nothing connects before ``start``, ``register`` or
    ``watch``. ``session_timeout`` applies to ZooKeeper only."""
    parsed = parse_spec(spec)
    if isinstance(parsed, StaticSpec):
        return StaticDiscovery(parsed.nodes, clock=reactor, min_update_interval=min_update_interval)
    # Imported here so that the static backend never loads kazoo.
    from pigeonpush.discovery.zookeeper import ZooKeeperDiscovery

    return ZooKeeperDiscovery(
        parsed.hosts,
        reactor,
        min_update_interval=min_update_interval,
        session_timeout=session_timeout,
    )
