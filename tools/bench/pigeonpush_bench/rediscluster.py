"""A Redis Cluster for a benchmark run, and what Redis spends per message.

``start_redis_cluster`` starts 3 masters and 3 replicas on loopback through
the run's ProcessSet (the launcher every server of a run goes through),
joins them with ``redis-cli --cluster create --cluster-replicas 1`` and
waits until every node says ``cluster_state:ok`` and every replica is in
sync. The test suite's cluster fixture starts its nodes with the same
arguments (``cluster_node_argv``).

``RedisNodes`` reads, from every redis-server of a store (one, or the
cluster's six), its role, ``total_commands_processed`` (``INFO stats``) and
its CPU time; ``RedisCost`` is what happened between two such readings,
masters and replicas apart.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer

from pigeonpush_bench.measure import ProcessGone, cpu_seconds
from pigeonpush_bench.processes import (
    LOWEST_PORT,
    ManagedProcess,
    ProcessSet,
    StartError,
    ephemeral_range,
    free_port,
    port_open,
    wait_until,
)

HOST = "127.0.0.1"
MASTERS = 3
#: The cluster bus listens on each node's port + this.
BUS_OFFSET = 10_000
START_TIMEOUT = 60.0


def cluster_port(host: str = HOST) -> int:
    """A free port whose cluster bus port (+10000) is free too, both outside
    the ephemeral range (see ``free_port``)."""
    low, high = ephemeral_range()
    below = range(LOWEST_PORT, min(low, 65536) - BUS_OFFSET)
    candidates = below if len(below) >= 1000 else range(high + 1, 65536 - BUS_OFFSET)
    for _ in range(1000):
        port = free_port(host, candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port + BUS_OFFSET))
            except OSError:
                continue
        return port
    raise StartError("no free port pair (port, port + 10000) outside the ephemeral range")


def cluster_node_argv(binary: str, port: int, directory: Path) -> list[str]:
    """One redis-server in cluster mode on loopback, no persistence, files in
    ``directory``."""
    return [
        binary,
        *("--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"),
        *("--dir", str(directory), "--logfile", str(directory / "redis.log")),
        *("--cluster-enabled", "yes"),
        *("--cluster-config-file", str(directory / "nodes.conf")),
        # A killed master's replica takes over after this (failover tests).
        *("--cluster-node-timeout", "1000"),
        *("--cluster-replica-validity-factor", "0"),
        # Replicas sync at once (the default waits 5 s for more replicas):
        # a master killed before its replica synced would lose everything.
        *("--repl-diskless-sync-delay", "0"),
    ]


def parse_info(text: str) -> dict[str, str]:
    """An INFO-style reply (``name:value`` lines, ``#`` headings) as a dict."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


@attrs.frozen(slots=True)
class RedisNode:
    process: ManagedProcess
    port: int

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


@attrs.frozen(slots=True)
class RedisCluster:
    nodes: list[RedisNode]
    masters: int = MASTERS

    @property
    def url(self) -> str:
        """``redis+cluster://`` with the first masters as seeds."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[: self.masters])

    @property
    def processes(self) -> list[ManagedProcess]:
        return [node.process for node in self.nodes]


async def query(port: int, *command: str) -> dict[str, str]:
    """``command`` (INFO, CLUSTER INFO) on the node at ``port``, its reply parsed."""
    import txredisapi

    connection = await txredisapi.Connection(HOST, port, reconnect=False, convertNumbers=False)
    try:
        text = await connection.execute_command(*command)
    finally:
        await connection.disconnect()
    return parse_info(str(text))


async def _cluster_ok(nodes: Sequence[RedisNode]) -> bool:
    """Every node serves all 16384 slots and every replica is in sync."""
    for node in nodes:
        try:
            state = await query(node.port, "CLUSTER", "INFO")
            role = await query(node.port, "INFO", "replication")
        except (ConnectionError, OSError) as e:
            raise StartError(f"redis-server on {node.address} stopped answering: {e}") from e
        if state.get("cluster_state") != "ok" or state.get("cluster_slots_ok") != "16384":
            return False
        if role.get("role") != "master" and (
            role.get("master_link_status") != "up" or role.get("master_sync_in_progress") != "0"
        ):
            return False
    return True


async def start_redis_cluster(
    processes: ProcessSet,
    reactor: Any,
    *,
    binary: str,
    cli: str,
    masters: int = MASTERS,
    name: str = "redis-cluster",
) -> RedisCluster:
    """``masters`` masters and as many replicas (one each), created and in sync."""
    nodes = []
    for index in range(2 * masters):
        port = cluster_port()
        directory = processes.directory / name / f"node-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        argv = [*cluster_node_argv(binary, port, directory), "--maxclients", "10000"]
        nodes.append(RedisNode(processes.spawn(f"{name}-{index}", argv), port))
    for node in nodes:

        async def listening(node: RedisNode = node) -> bool:
            return await port_open(reactor, HOST, node.port)

        await wait_until(
            reactor,
            listening,
            timeout=START_TIMEOUT,
            what=f"{node.process.name} listening on {node.port}",
            watch=[node.process],
        )
    addresses = [node.address for node in nodes]
    create = processes.spawn(
        f"{name}-create",
        [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
    )
    code = await _exit_code(reactor, create)
    if code != 0:
        raise StartError(
            f"redis-cli --cluster create exited with {code}; its log "
            f"({create.log_path}) ends with:\n{create.log_tail()}"
        )
    cluster = RedisCluster(nodes, masters)

    async def ok() -> bool:
        return await _cluster_ok(nodes)

    await wait_until(
        reactor,
        ok,
        timeout=START_TIMEOUT,
        what=f"the Redis Cluster ({masters} masters, {masters} replicas) in sync",
        interval=0.1,
        watch=cluster.processes,
    )
    return cluster


async def _exit_code(reactor: Any, process: ManagedProcess) -> int:
    """``process``'s exit code, once it exits (within START_TIMEOUT)."""
    ended = defer.Deferred[int]()

    def exited(code: int) -> int:
        ended.callback(code)
        return code

    process.ended.addCallback(exited)
    ended.addTimeout(START_TIMEOUT, reactor)
    try:
        return await ended
    except defer.TimeoutError:
        raise StartError(f"{process.name} did not finish within {START_TIMEOUT:g}s") from None


# --- what Redis spends --------------------------------------------------------------


@attrs.frozen(slots=True)
class NodeReading:
    """One redis-server at one moment."""

    master: bool
    commands: int
    cpu: float


@attrs.frozen(slots=True)
class RedisCost:
    """Between two readings of the same nodes: commands and CPU seconds,
    masters and replicas apart (a node counts where it was at the end)."""

    masters: int = 0
    replicas: int = 0
    master_commands: int = 0
    replica_commands: int = 0
    master_cpu: float = 0.0
    replica_cpu: float = 0.0

    @classmethod
    def between(
        cls, before: Mapping[int, NodeReading], after: Mapping[int, NodeReading]
    ) -> RedisCost:
        counts = {True: [0, 0, 0.0], False: [0, 0, 0.0]}
        for port, end in after.items():
            start = before.get(port)
            if start is None:
                continue
            tally = counts[end.master]
            tally[0] += 1
            tally[1] += max(0, end.commands - start.commands)
            tally[2] += max(0.0, end.cpu - start.cpu)
        m, r = counts[True], counts[False]
        return cls(
            masters=int(m[0]),
            replicas=int(r[0]),
            master_commands=int(m[1]),
            replica_commands=int(r[1]),
            master_cpu=float(m[2]),
            replica_cpu=float(r[2]),
        )


class RedisNodes:
    """The redis-servers of a run's store (a single Redis or a cluster's nodes)."""

    def __init__(self, nodes: Sequence[tuple[ManagedProcess, int]]) -> None:
        self.nodes = list(nodes)

    async def read(self) -> dict[int, NodeReading]:
        """port -> the node's role, commands processed so far and CPU seconds."""
        readings = {}
        for process, port in self.nodes:
            info = await query(port, "INFO", "stats", "replication")
            try:
                cpu = cpu_seconds(process.pid)
            except ProcessGone:
                cpu = 0.0
            readings[port] = NodeReading(
                master=info.get("role") == "master",
                commands=int(info.get("total_commands_processed", "0")),
                cpu=cpu,
            )
        return readings
