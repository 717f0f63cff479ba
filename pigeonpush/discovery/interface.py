"""Discovery: nodes register themselves and watch who else is alive.

Two kinds of node are known: ``servers`` (push servers, watched by reglog) and
``delivery`` (delivery workers, watched by push servers). ZooKeeper keeps them
as ephemeral znodes ``/pigeonpush/<kind>/<node-id>`` with JSON data; the static
backend holds a fixed list. Callbacks always run on the reactor thread, from the
reactor loop (never from inside ``register``, ``update`` or ``watch``).

Bad arguments (unknown kind, bad node id, data that is not a JSON object) raise
ValueError at once; calls on a closed discovery fail with DiscoveryClosed.
See docs/discovery.rst.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred

SERVERS = "servers"
DELIVERY = "delivery"
#: Every kind of node; another kind is refused (a typo would register where nobody watches).
KINDS = (SERVERS, DELIVERY)


class DiscoveryClosed(Exception):
    """The discovery was closed before (or while) the call could complete."""


@attrs.frozen(slots=True)
class Node:
    """One live node and the data it published."""

    kind: str
    node_id: str
    data: Mapping[str, Any] = attrs.field(factory=dict, hash=False)


#: Called with the whole live set (node-id -> Node) of one kind after every change.
#: The mapping is read-only and is not changed afterwards (the next change is a new one).
WatchCallback = Callable[[Mapping[str, Node]], None]


class NodeRegistration(Protocol):
    """This process's own node; kept alive (and re-created after a lost session)
    until ``unregister``."""

    def update(self, data: Mapping[str, Any]) -> None:
        """Publish new data; writes are rate-limited, the latest data always wins.
        Ignored after ``unregister``; data that is not a JSON object raises ValueError."""

    def unregister(self) -> Deferred[None]:
        """Remove the node now (the first step of a graceful stop). Never fails: a
        node that cannot be removed goes with the session when the discovery closes."""


class Watch(Protocol):
    def cancel(self) -> None:
        """No more callbacks."""


class Discovery(Protocol):
    def start(self) -> Deferred[None]:
        """Connect (idempotent); ``register`` and ``watch`` call it themselves."""

    def register(
        self, kind: str, node_id: str, data: Mapping[str, Any]
    ) -> Deferred[NodeRegistration]:
        """Create this process's node; fires once it exists. A second registration of
        the same kind and node id in one process raises ValueError."""

    def watch(self, kind: str, callback: WatchCallback) -> Deferred[Watch]:
        """Call ``callback`` with the live set now and after every change of
        membership or data; fires once the first set was delivered."""

    def live(self, kind: str) -> Mapping[str, Node]:
        """The last live set seen by a watch of ``kind`` (empty before one)."""

    def close(self) -> Deferred[None]:
        """Remove own nodes, stop watches and the client."""
