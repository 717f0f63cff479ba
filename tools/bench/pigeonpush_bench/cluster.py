"""One benchmark run's context, the pigeon system under test, and its generators.

``Run`` carries the reactor, the ProcessSet, the progress line and the time
bound every wait is cut to. ``start_pigeon`` brings up Redis, ZooKeeper, the
push servers, delivery, reglog and the notification API on loopback and waits
until reglog sees every server. ``Generators`` drives a group of load
generator processes as one and merges what they report.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectError
from twisted.internet.task import deferLater
from twisted.web.client import ResponseFailed

from pigeonpush.store import keys
from pigeonpush.tokens import url_safe_token
from pigeonpush_bench import services
from pigeonpush_bench.control import LoadGenerator, start_loadgen
from pigeonpush_bench.histogram import LatencyHistogram
from pigeonpush_bench.loadgen import http_client
from pigeonpush_bench.measure import connections_per_process
from pigeonpush_bench.processes import ManagedProcess, ProcessSet, gather, wait_until
from pigeonpush_bench.rediscluster import RedisCluster, RedisNodes, start_redis_cluster
from pigeonpush_bench.report import Progress
from pigeonpush_bench.sources import source_address

#: What ``start_pigeon`` puts the shared state in: one Redis, or a Redis
#: Cluster of 3 masters and 3 replicas.
REDIS = "redis"
CLUSTER = "cluster"
STORES = (REDIS, CLUSTER)


class RunTimeout(RuntimeError):
    """The run's --timeout ran out."""


@attrs.define(slots=True)
class Settings:
    """Options every scenario shares."""

    timeout: float = 600.0
    heartbeat: float = 10.0
    window: float = 10.0
    log_level: str = "warn"
    concurrency: int = 200
    #: the pigeon daemons' reactor (``pigeonpush_bench.twist``)
    reactor: str = "default"
    #: Clients per load generator process: below the fd limit with room for
    #: its HTTP pool and pipes, and a spread of the client work over processes.
    per_generator: int = attrs.field(factory=lambda: min(15_000, connections_per_process()))
    settle: float = 2.0


class Run:
    def __init__(
        self, reactor: Any, processes: ProcessSet, progress: Progress, settings: Settings
    ) -> None:
        self.reactor = reactor
        self.processes = processes
        self.progress = progress
        self.settings = settings
        self.deadline = reactor.seconds() + settings.timeout
        self._generators = 0

    def left(self) -> float:
        """Seconds left before the run's bound; RunTimeout when none."""
        left: float = self.deadline - self.reactor.seconds()
        if left <= 0:
            raise RunTimeout(f"the run exceeded --timeout {self.settings.timeout:g}s")
        return left

    async def sleep(self, seconds: float) -> None:
        await deferLater(self.reactor, min(seconds, self.left()), lambda: None)

    async def wait(
        self,
        condition: Callable[[], Any],
        what: str,
        *,
        timeout: float | None = None,
        interval: float = 0.25,
        watch: Sequence[ManagedProcess] = (),
    ) -> Any:
        bound = self.left() if timeout is None else min(timeout, self.left())
        return await wait_until(
            self.reactor, condition, timeout=bound, what=what, interval=interval, watch=watch
        )

    async def generators(self, count: int, label: str) -> Generators:
        """Start ``count`` load generator processes (concurrently)."""
        first = self._generators
        self._generators += count
        members = await gather(
            [
                defer.ensureDeferred(
                    start_loadgen(self.processes, self.reactor, f"loadgen-{first + k}-{label}")
                )
                for k in range(count)
            ]
        )
        return Generators(self, list(members), first)

    async def stop(self, processes: Sequence[ManagedProcess]) -> None:
        """Stop the given processes, the last first (clients before servers before stores)."""
        for process in reversed(processes):
            await self.processes.stop(process)


def connect_jobs(
    count: int,
    members: int,
    first: int,
    targets: Sequence[Mapping[str, Any]],
    common: Mapping[str, Any],
) -> list[tuple[int, dict[str, Any]]]:
    """``(member, connect arguments)``: ``count`` clients split evenly over
    ``members`` generators and, within one, over ``targets``; generator k
    (``first`` + k in the run) connects from ``source_address(first + k)``."""
    jobs: list[tuple[int, dict[str, Any]]] = []
    for index, (start, share) in enumerate(split(count, members)):
        for (offset, part), target in zip(split(share, len(targets)), targets, strict=True):
            if part:
                args = {
                    **common,
                    "start": start + offset,
                    "count": part,
                    "source": source_address(first + index),
                    **target,
                }
                jobs.append((index, args))
    return jobs


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """``(start, count)`` of ``parts`` near-equal consecutive ranges of ``total``."""
    base, extra = divmod(total, parts)
    ranges = []
    start = 0
    for part in range(parts):
        count = base + (1 if part < extra else 0)
        ranges.append((start, count))
        start += count
    return ranges


@attrs.define(slots=True)
class Stats:
    """What a group of generators saw, merged."""

    ready: int = 0
    failed: int = 0
    received: int = 0
    unique: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    frames: int = 0
    reconnects: int = 0
    pings: int = 0
    cpu: float = 0.0
    first_receipt: float | None = None
    last_receipt: float | None = None
    last_ready: float | None = None
    errors: dict[str, int] = attrs.field(factory=dict)
    latency: LatencyHistogram = attrs.field(factory=LatencyHistogram)
    latency_send: LatencyHistogram = attrs.field(factory=LatencyHistogram)

    @classmethod
    def merge(cls, answers: Sequence[Mapping[str, Any]]) -> Stats:
        stats = cls()
        for answer in answers:
            for name in (
                "ready",
                "failed",
                "received",
                "unique",
                "duplicates",
                "out_of_order",
                "frames",
                "reconnects",
                "pings",
            ):
                setattr(stats, name, getattr(stats, name) + int(answer.get(name, 0)))
            stats.cpu += float(answer.get("cpu", 0.0))
            stats.first_receipt = _earliest(stats.first_receipt, answer.get("first_receipt"))
            stats.last_receipt = _latest(stats.last_receipt, answer.get("last_receipt"))
            stats.last_ready = _latest(stats.last_ready, answer.get("last_ready"))
            for error, count in answer.get("errors", {}).items():
                stats.errors[error] = stats.errors.get(error, 0) + int(count)
            if "latency" in answer:
                stats.latency.merge(LatencyHistogram.from_json(answer["latency"]))
            if "latency_send" in answer:
                stats.latency_send.merge(LatencyHistogram.from_json(answer["latency_send"]))
        return stats


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


class Generators:
    """A group of load generators driven as one."""

    def __init__(self, run: Run, members: list[LoadGenerator], first: int = 0) -> None:
        self.run = run
        self.members = members
        #: The run-wide number of the first member, which picks its source
        #: address (``source_address``).
        self.first = first

    @property
    def processes(self) -> list[ManagedProcess]:
        return [member.process for member in self.members if member.process is not None]

    async def call_each(
        self, command: str, arguments: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """``command`` on every member (``arguments[k]`` for member k), concurrently."""
        results = await gather(
            [
                defer.ensureDeferred(_call(member, command, args))
                for member, args in zip(self.members, arguments, strict=True)
            ]
        )
        return list(results)

    async def stats(self) -> Stats:
        return Stats.merge(await self.call_each("stats", [{} for _ in self.members]))

    async def reset(self) -> None:
        await self.call_each("reset", [{} for _ in self.members])

    async def connect(
        self,
        protocol: str,
        count: int,
        targets: Sequence[Mapping[str, Any]],
        *,
        label: str,
        reconnect: bool = False,
    ) -> tuple[float, Stats]:
        """Connect ``count`` clients, split evenly over the members and, within
        a member, over ``targets`` (each a ``server`` or ``reglog`` argument).
        The seconds it took, and the merged stats after."""
        run = self.run
        common = {
            "protocol": protocol,
            "concurrency": run.settings.concurrency,
            "heartbeat": run.settings.heartbeat,
            "reconnect": reconnect,
        }
        jobs = [
            (self.members[index], args)
            for index, args in connect_jobs(count, len(self.members), self.first, targets, common)
        ]

        def progress(generator: LoadGenerator, message: Mapping[str, Any]) -> None:
            ready = sum(int(m.last_progress.get("ready", 0)) for m in self.members)
            failed = sum(int(m.last_progress.get("failed", 0)) for m in self.members)
            run.progress.update(f"{label}: {ready:,}/{count:,} connected, {failed:,} failed")

        for member in self.members:
            member.on_progress = progress
        started = run.reactor.seconds()
        connecting = gather(
            [defer.ensureDeferred(_call(member, "connect", args)) for member, args in jobs]
        )
        connecting.addTimeout(run.left(), run.reactor)
        try:
            await connecting
        except defer.TimeoutError:
            raise RunTimeout(f"{label}: connecting {count:,} clients exceeded --timeout") from None
        finally:
            for member in self.members:
                member.on_progress = None
        seconds = run.reactor.seconds() - started
        return seconds, await self.stats()

    async def finish(self) -> None:
        """Let every member close its connections and exit; bounded by ProcessSet.stop."""
        for member in self.members:
            member.finish()
        for process in self.processes:
            await self.run.processes.stop(process, timeout=15.0)


async def _call(member: LoadGenerator, command: str, args: Mapping[str, Any]) -> dict[str, Any]:
    return await member.call(command, **args)


# --- the pigeon system -------------------------------------------------------------


@attrs.define(slots=True)
class PigeonCluster:
    #: the single Redis; None when the daemons use ``redis_cluster``
    redis: services.Redis | None
    zookeeper: services.ZooKeeper
    servers: list[services.PigeonServer]
    delivery: services.Listener
    reglog: services.Listener
    notification: services.Listener | None
    api_key: str
    redis_cluster: RedisCluster | None = None

    @property
    def redis_url(self) -> str:
        """What every daemon was given as ``--redis``."""
        if self.redis_cluster is not None:
            return self.redis_cluster.url
        assert self.redis is not None
        return self.redis.url

    @property
    def redis_nodes(self) -> RedisNodes:
        """Every redis-server of the store (one, or the cluster's nodes)."""
        if self.redis_cluster is not None:
            return RedisNodes([(node.process, node.port) for node in self.redis_cluster.nodes])
        assert self.redis is not None
        return RedisNodes([(self.redis.process, self.redis.port)])

    @property
    def server_pids(self) -> dict[str, int]:
        return {server.node_id: server.process.pid for server in self.servers}

    @property
    def system_pids(self) -> dict[str, int]:
        """Every process of the pigeon system but ZooKeeper (idle in steady state)."""
        pids = dict(self.server_pids)
        if self.redis is not None:
            pids["redis"] = self.redis.process.pid
        if self.redis_cluster is not None:
            for node in self.redis_cluster.nodes:
                pids[f"redis-{node.port}"] = node.process.pid
        pids["delivery"] = self.delivery.process.pid
        pids["reglog"] = self.reglog.process.pid
        if self.notification is not None:
            pids["notification"] = self.notification.process.pid
        return pids

    @property
    def processes(self) -> list[ManagedProcess]:
        """In start order (stores first), for Run.stop."""
        found = [] if self.redis is None else [self.redis.process]
        if self.redis_cluster is not None:
            found += self.redis_cluster.processes
        found += [self.zookeeper.process, self.delivery.process]
        found += [server.process for server in self.servers]
        found.append(self.reglog.process)
        if self.notification is not None:
            found.append(self.notification.process)
        return found


async def start_pigeon(
    run: Run,
    *,
    servers: int,
    capacity: int,
    notification: bool = True,
    store: str = REDIS,
    websocket: bool = False,
    direct_streams: bool = False,
) -> PigeonCluster:
    """The pigeon system on one Redis (``store`` REDIS) or on a Redis Cluster
    of 3 masters and 3 replicas (CLUSTER); ``websocket``: the push servers
    have WebSocket listeners too; ``direct_streams``: every daemon's store URL
    has ``?direct_streams=1`` (one Redis only)."""
    if store not in STORES:
        raise ValueError(f"store must be one of {', '.join(STORES)}, not {store!r}")
    reactor, processes, settings = run.reactor, run.processes, run.settings
    what = "Redis" if store == REDIS else "a Redis Cluster (3 masters, 3 replicas)"
    run.progress.phase(
        f"starting pigeonpush: {what}, ZooKeeper, {servers} pigeon-server, delivery, reglog"
        + (", notification" if notification else "")
    )
    first: Coroutine[Any, Any, services.Redis | RedisCluster]
    if store == REDIS:
        first = services.start_redis(processes, reactor)
    else:
        first = start_redis_cluster(
            processes,
            reactor,
            binary=services.require("redis-server", "redis-server"),
            cli=services.require("redis-cli", "redis-tools"),
        )
    stores = await _together(first, services.start_zookeeper(processes, reactor))
    found, zookeeper = stores
    assert isinstance(zookeeper, services.ZooKeeper)
    redis = found if isinstance(found, services.Redis) else None
    redis_cluster = found if isinstance(found, RedisCluster) else None
    redis_url = found.url
    if direct_streams:
        redis_url += "?direct_streams=1"
    level = settings.log_level
    on = settings.reactor
    started = await _together(
        services.start_delivery(
            processes,
            reactor,
            redis_url=redis_url,
            zookeeper=zookeeper.hosts,
            log_level=level,
            reactor_name=on,
        ),
        *(
            services.start_pigeon_server(
                processes,
                reactor,
                index=index,
                redis_url=redis_url,
                zookeeper=zookeeper.hosts,
                heartbeat=settings.heartbeat,
                capacity=capacity,
                log_level=level,
                websocket=websocket,
                reactor_name=on,
            )
            for index in range(servers)
        ),
        services.start_reglog(
            processes,
            reactor,
            redis_url=redis_url,
            zookeeper=zookeeper.hosts,
            heartbeat=settings.heartbeat,
            log_level=level,
            reactor_name=on,
        ),
    )
    delivery, *pigeon_servers, reglog = started
    api_key = url_safe_token(24)
    api = None
    if notification:
        api = await services.start_notification(
            processes,
            reactor,
            redis_url=redis_url,
            api_key=api_key,
            log_level=level,
            reactor_name=on,
        )
    cluster = PigeonCluster(
        redis_cluster=redis_cluster,
        redis=redis,
        zookeeper=zookeeper,
        servers=list(pigeon_servers),
        delivery=delivery,
        reglog=reglog,
        notification=api,
        api_key=api_key,
    )
    await wait_for_servers(run, cluster, servers)
    return cluster


async def _together(*starts: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run start coroutines concurrently; the first failure fails all (the
    ProcessSet stops whatever the others started)."""
    results = await gather([defer.ensureDeferred(start) for start in starts])
    return list(results)


async def wait_for_servers(run: Run, cluster: PigeonCluster, count: int) -> None:
    """Until reglog's /health counts ``count`` live push servers (registration
    in ZooKeeper reached reglog's watch)."""
    pool, http = http_client(run.reactor, 1)

    async def counted() -> bool:
        try:
            response = await http.get(
                f"{cluster.reglog.url}/health", reactor=run.reactor, timeout=5
            )
            body = await response.json()
        except (ConnectError, ResponseFailed, defer.CancelledError, ValueError):
            return False
        return isinstance(body, dict) and body.get("servers") == count

    try:
        await run.wait(
            counted,
            f"reglog seeing {count} push server(s)",
            timeout=60.0,
            watch=cluster.processes,
        )
    finally:
        await pool.closeCachedConnections()


# --- looking into Redis -------------------------------------------------------------

_WAIT_ACK_TOTAL = """
local total = 0
local cursor = "0"
repeat
  local reply = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    total = total + redis.call("SCARD", key)
  end
until cursor == "0"
return total
"""

_QUEUE_STATE = """
if redis.call("EXISTS", KEYS[1]) == 0 then
  return {0, 0, 0}
end
local length = redis.call("XLEN", KEYS[1])
local pending, read = 0, 0
for _, group in ipairs(redis.call("XINFO", "GROUPS", KEYS[1])) do
  for i = 1, #group, 2 do
    if group[i] == "pending" then pending = pending + group[i + 1] end
    if group[i] == "entries-read" and group[i + 1] then read = read + group[i + 1] end
  end
end
return {length, read, pending}
"""


class RedisProbe:
    """Read-only questions to the run's Redis about what is left undelivered."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    @classmethod
    async def open(cls, port: int, host: str = services.HOST) -> RedisProbe:
        import txredisapi

        connection = await txredisapi.Connection(host, port, reconnect=False, convertNumbers=False)
        return cls(connection)

    async def wait_ack_total(self) -> int:
        """Message ids still waiting for an ACK, over every client."""
        total = await self._connection.eval(_WAIT_ACK_TOTAL, [], ["PIGEON:WAIT_ACK:*"])
        return int(total)

    async def queue_state(self) -> tuple[int, int, int]:
        """(stream length, entries read by delivery, entries read and not yet handled)."""
        # One Redis: the store's default of one queue shard.
        queue = [keys.queue(0)]
        length, read, pending = await self._connection.eval(_QUEUE_STATE, queue, [])
        return int(length), int(read), int(pending)

    async def close(self) -> None:
        await self._connection.disconnect()
