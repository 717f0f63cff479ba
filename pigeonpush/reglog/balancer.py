"""Which push server a client goes to: the live server table and the choice.

Each push server publishes ``{"client": "[tls:]host:port", "rpc":
"[tls:]host:port", "connections": int, "capacity": int}`` in discovery (the
client address's ``tls:`` becomes the route answer's ``transport``). Its
*free capacity* is ``capacity - connections - pending``, where ``pending`` counts the clients this
reglog sent it since that server last published: a published count does not
yet include the clients on their way, so without this local accounting a burst
of requests between two updates would all look at the same numbers.

A client goes to a server drawn at random with probability proportional to its
free capacity, and a server with no free capacity is never drawn. A burst of N
requests therefore spreads over the servers in proportion to their free
capacity (N draws without replacement from the free slots), the least loaded
servers get the most clients, and several reglog instances working from the
same published numbers do not all pile onto the same "least loaded" server, as
a strict least-loaded or two-choices rule would until the next update.

A client may name servers it failed to reach (``avoid``: their client
addresses): they are left out of the draw unless no other server has room, so
a server that died but still shows in discovery (its ZooKeeper session has not
expired yet) does not get the same client back again and again, while a
client whose only choices are all "avoided" still gets one (its view may be
wrong, or the server may be back).

A pending count is dropped when its server publishes new data (the new count
includes whoever connected) and otherwise expires after ``pending_ttl``
seconds (a client that was sent but never connected).

Nothing here does I/O: time and randomness are injected, so the rule is
tested with a ``Clock`` and a seeded ``random.Random``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pigeonpush.discovery.interface import Node
from pigeonpush.hostport import parse_peer_address
from pigeonpush.tls import TCP, TLS

log = Logger()

#: How long a client sent to a server counts against it without an update.
DEFAULT_PENDING_TTL = 10.0


@attrs.frozen(slots=True)
class PushServer:
    """A live push server as reglog sees it."""

    node_id: str
    client: str  #: ``host:port`` that devices connect to
    connections: int
    capacity: int
    transport: str = TCP  #: what devices speak there: ``tcp`` or ``tls``
    #: ``host:port`` of its WebSocket listener (None: it has none)
    websocket: str | None = None
    #: ``ws`` or ``wss`` (what browsers open there)
    websocket_transport: str = "ws"

    def address(self, websocket: bool) -> str:
        """The ``host:port`` a client of that transport connects to (``avoid`` names it)."""
        if websocket:
            assert self.websocket is not None
            return self.websocket
        return self.client


def _count(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name!r} must be an integer >= 0")
    return value


def push_server_from_node(node: Node) -> PushServer:
    """The server a discovery node describes; ValueError says what is wrong with its data."""
    data = node.data
    client = data.get("client")
    if not isinstance(client, str):
        raise ValueError("'client' must be a 'host:port' string")
    try:
        address = parse_peer_address(client)
    except ValueError:
        raise ValueError(
            f"'client' must be 'host:port' or 'tls:host:port', not {client!r}"
        ) from None
    websocket = data.get("websocket")
    websocket_address = None
    if websocket is not None:
        try:
            if not isinstance(websocket, str):
                raise ValueError
            websocket_address = parse_peer_address(websocket)
        except ValueError:
            raise ValueError(
                f"'websocket' must be 'host:port' or 'tls:host:port', not {websocket!r}"
            ) from None
    return PushServer(
        node.node_id,
        address.host_port,
        _count(data, "connections"),
        _count(data, "capacity"),
        address.transport,
        None if websocket_address is None else websocket_address.host_port,
        "wss" if websocket_address is not None and websocket_address.transport == TLS else "ws",
    )


class Balancer:
    """The live push servers and the choice of one for each client."""

    __slots__ = ("_clock", "_nodes", "_pending", "_pending_ttl", "_random", "_servers")

    def __init__(
        self,
        clock: IReactorTime,
        rng: random.Random | None = None,
        pending_ttl: float = DEFAULT_PENDING_TTL,
    ) -> None:
        self._clock = clock
        # The draw spreads load; it guards no secret, so it need not cost a
        # getrandom() system call per route request as SystemRandom does
        # (1.5 us against 0.24 us; Random seeds itself from the system once).
        self._random = rng if rng is not None else random.Random()
        self._pending_ttl = pending_ttl
        #: the last nodes seen, to tell a server's new data from an unchanged one
        self._nodes: dict[str, Node] = {}
        self._servers: dict[str, PushServer] = {}
        #: node id -> times this reglog sent a client there since its last update
        self._pending: dict[str, deque[float]] = {}

    # -- the table -------------------------------------------------------------

    def update(self, live: Mapping[str, Node]) -> None:
        """Take a new live set (a discovery watch callback)."""
        servers: dict[str, PushServer] = {}
        for node_id, node in live.items():
            previous = self._nodes.get(node_id)
            if previous is not None and previous.data == node.data:
                if node_id in self._servers:
                    servers[node_id] = self._servers[node_id]
                continue
            # New server or new data: what it publishes now includes the
            # clients sent so far.
            self._pending.pop(node_id, None)
            try:
                servers[node_id] = push_server_from_node(node)
            except ValueError as error:
                log.warn(
                    "Ignoring push server {node_id}: {reason}",
                    node_id=node_id,
                    reason=str(error),
                )
        for gone in self._pending.keys() - servers.keys():
            del self._pending[gone]
        self._nodes = dict(live)
        self._servers = servers

    @property
    def servers(self) -> Mapping[str, PushServer]:
        """The live servers with valid data, by node id."""
        return self._servers

    def pending(self, node_id: str) -> int:
        """Clients sent to ``node_id`` that its published count may not include yet."""
        queue = self._pending.get(node_id)
        if not queue:
            return 0
        expired = self._clock.seconds() - self._pending_ttl
        while queue and queue[0] <= expired:
            queue.popleft()
        return len(queue)

    def free(self, node_id: str) -> int:
        """How many more clients ``node_id`` can take, as far as this reglog knows."""
        server = self._servers.get(node_id)
        if server is None:
            return 0
        return max(0, server.capacity - server.connections - self.pending(node_id))

    def free_capacity(self) -> int:
        return sum(self.free(node_id) for node_id in self._servers)

    # -- the choice -------------------------------------------------------------

    def choose(self, avoid: Collection[str] = (), *, websocket: bool = False) -> PushServer | None:
        """A server for one client (counted as pending there), or None if none has room.

        Servers whose client address (WebSocket address with ``websocket``)
        is in ``avoid`` are drawn only when no other server has room; with
        ``websocket``, only servers with a WebSocket listener are candidates.
        O(number of servers): a deployment has tens of them, not thousands.
        """
        candidates: list[tuple[PushServer, int]] = []
        avoided: list[tuple[PushServer, int]] = []
        for node_id, server in self._servers.items():
            if websocket and server.websocket is None:
                continue
            free = self.free(node_id)
            if free > 0:
                avoided_here = server.address(websocket) in avoid
                (avoided if avoided_here else candidates).append((server, free))
        if not candidates:
            candidates = avoided
        total = sum(free for _, free in candidates)
        if total == 0:
            return None
        pick = self._random.randrange(total)
        chosen = candidates[-1][0]
        for server, free in candidates:
            if pick < free:
                chosen = server
                break
            pick -= free
        self._pending.setdefault(chosen.node_id, deque()).append(self._clock.seconds())
        return chosen

    def release(self, server: PushServer) -> None:
        """Undo one ``choose`` of ``server`` (the client was not sent there after all)."""
        queue = self._pending.get(server.node_id)
        if queue:
            queue.pop()
