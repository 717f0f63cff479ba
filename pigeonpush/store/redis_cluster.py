"""A Redis Cluster client: a slot router over ``RedisConnection`` objects.

txredisapi has no cluster support; this is the thin layer over it. The router
keeps the slot map (CLUSTER SLOTS), one connection per master, and routes
each command by its key's slot (CRC16 of the key, or of its hash tag). A batch
goes out as one pipeline per node, all nodes at once; the replies come back
in the batch's order. Redirections are followed:

- ``MOVED slot host:port``: the slot lives elsewhere for good. The map entry
  is corrected at once, a full refresh is started, and the command is sent
  again to the new owner.
- ``ASK slot host:port``: the slot is being migrated and this key already
  moved. The command is sent once to that node, preceded by ``ASKING``; the
  map is left alone.
- ``TRYAGAIN`` / ``CLUSTERDOWN``: resent after a short pause, within the
  call's time limit.

A node that cannot be reached fails the calls routed to it with StoreError
(they may or may not have run: callers retry, as with one Redis) and starts
a refresh of the map, so that the next calls find the replica promoted in
its place. Every node's connection loads the scripts when it opens, and
EVALSHA that meets NOSCRIPT is resent with the source to that node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.hostport import parse_host_port
from pigeonpush.store.address import ClusterAddress
from pigeonpush.store.interface import StoreError
from pigeonpush.store.redis_connection import (
    Command,
    RedisConnection,
    Reply,
    Script,
    is_error,
    redis_endpoint,
)

SLOTS = 16384
#: Redirections followed for one command before the call fails.
MAX_REDIRECTIONS = 5
#: Pause before a command that met TRYAGAIN or CLUSTERDOWN is sent again.
RETRY_PAUSE = 0.05

log = Logger()


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the cluster's key hash."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key``: of its hash tag (what is between the first
    ``{`` and the next ``}``, if not empty), else of the whole key."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc16(raw) % SLOTS


def command_key(command: Command) -> str | None:
    """The key that routes ``command`` (None: any node will do)."""
    name = command[0].upper()
    if name in ("EVALSHA", "EVAL"):
        return command[3] if int(command[2]) > 0 else None
    if name in ("XGROUP", "XINFO"):
        return command[2] if len(command) > 2 else None
    if name in ("XREADGROUP", "XREAD"):
        upper = [word.upper() for word in command]
        return command[upper.index("STREAMS") + 1]
    if name in ("PING", "INFO", "CLUSTER", "SCRIPT", "DBSIZE", "FLUSHALL"):
        return None
    return command[1] if len(command) > 1 else None


def redirection(reply: Reply, sender: str) -> tuple[str, int, str, int] | None:
    """(kind, slot, host, port) of a MOVED or ASK reply from the node at host
    ``sender``, else None; StoreError if the reply names no usable address."""
    if not (is_error(reply, "MOVED") or is_error(reply, "ASK")):
        return None
    kind, slot, where = str(reply).split()[:3]
    if where.startswith(":") and where.count(":") == 1:
        # cluster-preferred-endpoint-type unknown-endpoint: the sender's host
        where = sender + where
    # Redis writes ``host:port`` with an IPv6 host unbracketed.
    try:
        host, port = parse_host_port(where, bare_ipv6=True)
    except ValueError as e:
        raise StoreError(f"Redis Cluster redirected a command to no usable node: {e}") from None
    return kind, int(slot), host, port


class ClusterConnection:
    """The router; the same calls as ``RedisConnection`` (``execute``,
    ``run_scripts``, ``close``) plus ``node_for``, ``new_connection`` (for
    blocking reads, which must not hold a shared connection) and
    ``wait_replicas``. ``execute``'s ``abort_on_cancel`` is accepted and
    ignored: blocking reads go through a node's own connection."""

    def __init__(
        self,
        reactor: Any,
        address: ClusterAddress,
        *,
        reply_timeout: float,
        connect_timeout: float,
        scripts: Sequence[Script] = (),
    ) -> None:
        self._reactor = reactor
        self._address = address
        self._reply_timeout = reply_timeout
        self._connect_timeout = connect_timeout
        self._scripts = tuple(scripts)
        for seed in address.seeds:  # a bad ssl_ca_certs fails now, not on first use
            redis_endpoint(reactor, seed, connect_timeout)
        #: slot -> (host, port) of its master; empty until the first refresh
        self._slots: list[tuple[str, int] | None] = [None] * SLOTS
        self._replicas: set[tuple[str, int]] = set()
        #: master -> how many working replicas CLUSTER SLOTS listed for it
        self._replica_counts: dict[tuple[str, int], int] = {}
        self._nodes: dict[tuple[str, int], RedisConnection] = {}
        self._refresh_waiters: list[Deferred[None]] = []
        self._closed = False

    def connection(self, node: tuple[str, int]) -> RedisConnection:
        """The shared connection to ``node`` (opened on first use)."""
        connection = self._nodes.get(node)
        if connection is None:
            connection = self.new_connection(node)
            self._nodes[node] = connection
        return connection

    def new_connection(self, node: tuple[str, int], *, scripts: bool = True) -> RedisConnection:
        """A connection of its own to ``node`` (blocking reads use these)."""
        address = self._address.node(*node)
        return RedisConnection(
            self._reactor,
            address,
            redis_endpoint(self._reactor, address, self._connect_timeout),
            reply_timeout=self._reply_timeout,
            connect_timeout=self._connect_timeout,
            scripts=self._scripts if scripts else (),
        )

    async def node_for(self, key: str) -> tuple[str, int]:
        """The master that serves ``key`` now (the map is loaded if need be)."""
        if self._closed:
            raise StoreError("the store is closed")
        node = self._slots[key_slot(key)]
        if node is None:
            await self.refresh()
            node = self._slots[key_slot(key)]
            if node is None:
                raise StoreError(f"no node of {self._address} serves slot {key_slot(key)}")
        return node

    # -- the slot map --------------------------------------------------------------

    def refresh(self) -> Deferred[None]:
        """Reload the slot map (one refresh at a time; callers share it)."""
        waiter: Deferred[None] = Deferred()
        self._refresh_waiters.append(waiter)
        if len(self._refresh_waiters) == 1:
            ensureDeferred(self._refresh()).addBoth(self._refreshed)
        return waiter

    def _refreshed(self, result: Failure | None) -> None:
        waiters, self._refresh_waiters = self._refresh_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    def note_trouble(self) -> None:
        """A node failed a call: reload the map in the background."""
        if self._closed:
            return
        self.refresh().addErrback(
            lambda failure: log.warn(
                "Cannot reload the slot map of {cluster}: {error}",
                cluster=str(self._address),
                error=failure.getErrorMessage(),
            )
        )

    async def _refresh(self) -> None:
        seeds = [(seed.host, seed.port) for seed in self._address.seeds]
        masters = list(dict.fromkeys(node for node in self._slots if node is not None))
        candidates = list(dict.fromkeys([*masters, *seeds, *sorted(self._replicas)]))
        errors: list[str] = []
        for node in candidates:
            try:
                (reply,) = await self.connection(node).execute([("CLUSTER", "SLOTS")])
            except StoreError as e:
                errors.append(str(e))
                continue
            if is_error(reply) or not reply:
                errors.append(f"{node[0]}:{node[1]} answered CLUSTER SLOTS with {reply!r}")
                continue
            slots: list[tuple[str, int] | None] = [None] * SLOTS
            replicas: set[tuple[str, int]] = set()
            counts: dict[tuple[str, int], int] = {}
            for start, end, master, *others in reply:
                owner = (str(master[0]) or node[0], int(master[1]))
                for slot in range(int(start), int(end) + 1):
                    slots[slot] = owner
                replicas.update((str(other[0]) or node[0], int(other[1])) for other in others)
                counts[owner] = len(others)  # failed replicas are not listed
            self._slots = slots
            self._replicas = replicas
            self._replica_counts = counts
            return
        raise StoreError(f"no node of {self._address} answered CLUSTER SLOTS: {'; '.join(errors)}")

    # -- commands ------------------------------------------------------------------

    def execute(
        self,
        commands: Sequence[Command],
        *,
        timeout: float | None = None,
        abort_on_cancel: bool = False,
    ) -> Deferred[list[Reply]]:
        """Send ``commands``, one pipeline per node; replies in order. Error
        replies are values; an unreachable node fails the call (StoreError)."""
        return ensureDeferred(self._execute(commands, timeout))

    async def _execute(self, commands: Sequence[Command], timeout: float | None) -> list[Reply]:
        if self._closed:
            raise StoreError("the store is closed")
        if not commands:
            return []
        limit = self._reply_timeout if timeout is None else timeout
        deadline = self._reactor.seconds() + limit
        replies: list[Reply] = [None] * len(commands)
        #: index -> (node, asking): where each unanswered command goes next
        todo: dict[int, tuple[tuple[str, int], bool]] = {}
        for index, command in enumerate(commands):
            key = command_key(command)
            node = await self.node_for(key) if key is not None else await self._any_node()
            todo[index] = (node, False)
        hops = 0  # rounds of redirections in a row, without a pause between
        while True:
            answered = await self._send_round(commands, todo, deadline)
            sent, todo = todo, {}
            pause = False
            for index, reply in answered.items():
                moved = redirection(reply, sent[index][0][0])
                if moved is not None:
                    kind, slot, host, port = moved
                    if kind == "MOVED":
                        self._slots[slot] = (host, port)
                        self.note_trouble()
                    todo[index] = ((host, port), kind == "ASK")
                elif is_error(reply, "TRYAGAIN") or is_error(reply, "CLUSTERDOWN"):
                    # A multi-key call in a slot being migrated, or a cluster
                    # electing a new master: the same again, a moment later.
                    key = command_key(commands[index])
                    todo[index] = (
                        await self.node_for(key) if key is not None else await self._any_node(),
                        False,
                    )
                    pause = True
                else:
                    replies[index] = reply
            if not todo:
                return replies
            hops = 0 if pause else hops + 1
            if hops > MAX_REDIRECTIONS or self._reactor.seconds() >= deadline:
                break
            if pause:
                await deferLater(self._reactor, RETRY_PAUSE, lambda: None)
        what = commands[next(iter(todo))][0]
        raise StoreError(f"{self._address} kept redirecting {what}: the cluster is reconfiguring")

    async def _any_node(self) -> tuple[str, int]:
        for node in self._slots:
            if node is not None:
                return node
        await self.refresh()
        for node in self._slots:
            if node is not None:
                return node
        raise StoreError(f"no node of {self._address} serves any slot")

    async def _send_round(
        self,
        commands: Sequence[Command],
        todo: dict[int, tuple[tuple[str, int], bool]],
        deadline: float,
    ) -> dict[int, Reply]:
        by_node: dict[tuple[str, int], list[int]] = {}
        for index, (node, _) in todo.items():
            by_node.setdefault(node, []).append(index)
        left = max(deadline - self._reactor.seconds(), 0.001)
        sends = []
        for node, indexes in by_node.items():
            batch: list[Command] = []
            for index in indexes:
                if todo[index][1]:
                    batch.append(("ASKING",))
                batch.append(commands[index])
            sends.append(ensureDeferred(self._node_send(node, batch, left)))
        gathered = gatherResults(sends, consumeErrors=True).addErrback(_first_error)
        results: list[list[Reply]] = await gathered
        answered: dict[int, Reply] = {}
        for (_, indexes), node_replies in zip(by_node.items(), results, strict=True):
            position = 0
            for index in indexes:
                if todo[index][1]:
                    position += 1  # ASKING's +OK
                answered[index] = node_replies[position]
                position += 1
        return answered

    async def _node_send(
        self, node: tuple[str, int], batch: list[Command], left: float
    ) -> list[Reply]:
        try:
            return await self.connection(node).execute(batch, timeout=left)
        except StoreError:
            self.note_trouble()
            raise

    async def wait_replicas(self, replicas: int, timeout: float) -> list[int]:
        """``WAIT replicas ms`` on every master's shared connection: returns once
        what this process wrote there reached ``replicas`` replicas (or after
        ``timeout``), answering how many each master counted. Replication is
        asynchronous: a master that dies with a write not yet copied loses it
        on failover, so an acceptance is answered only after this."""
        masters = sorted({node for node in self._slots if node is not None})
        ms = str(max(1, round(timeout * 1000)))
        # A master without a working replica (its replica is the one that
        # took over from a dead master) is not waited on: nothing to wait for.
        waits = [
            self.connection(node).execute(
                [("WAIT", str(min(replicas, self._replica_counts.get(node, 0))), ms)],
                timeout=timeout + 1,
            )
            for node in masters
            if self._replica_counts.get(node, 0) > 0
        ]
        results = await gatherResults(waits, consumeErrors=True).addErrback(_first_error)
        return [int(reply) if isinstance(reply, int) else 0 for (reply,) in results]

    async def run_scripts(
        self, calls: Sequence[tuple[Script, Sequence[str], Sequence[str]]]
    ) -> list[Reply]:
        """Run scripts, each on the node of its first key (all of a script's
        keys must share a slot). NOSCRIPT (a node that lost its script cache,
        or a promoted replica) is answered by sending the source."""
        replies = await self.execute([script.call(keys, args) for script, keys, args in calls])
        missing = [i for i, reply in enumerate(replies) if is_error(reply, "NOSCRIPT")]
        if missing:
            retried = await self.execute(
                [calls[i][0].call_source(calls[i][1], calls[i][2]) for i in missing]
            )
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        return replies

    def close(self) -> Deferred[None]:
        self._closed = True
        connections = list(self._nodes.values())
        self._nodes.clear()
        if not connections:
            return succeed(None)
        closing = DeferredList([c.close() for c in connections], consumeErrors=True)
        return closing.addCallback(lambda _: None)


def _first_error(failure: Failure) -> Failure:
    """gatherResults wraps the first failure in a FirstError: unwrap it."""
    from twisted.internet.defer import FirstError

    if isinstance(failure.value, FirstError):
        sub: Failure = failure.value.subFailure
        return sub
    return failure
