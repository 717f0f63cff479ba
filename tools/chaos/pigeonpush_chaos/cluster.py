"""The system under fault: Redis (append-only), ZooKeeper, 2 pigeon-server
(each with a TCP and a WebSocket listener for devices), 2 pigeon-delivery,
reglog and the notification API, on loopback.

Process management, the launcher, ZooKeeper's command line and the readiness
helpers come from the benchmark (``pigeonpush_bench``). What differs is that
each daemon keeps its ports for life, so that it can be killed and started
again where its clients and peers look for it: a push server comes back on
the address its clients' routes name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed

from pigeonpush.tokens import url_safe_token
from pigeonpush_bench import services
from pigeonpush_bench.processes import (
    ManagedProcess,
    ProcessSet,
    ask,
    free_port,
    gather,
    port_open,
    wait_until,
)

HOST = services.HOST
START_TIMEOUT = 60.0
#: Persistent HTTP connections per daemon (the sender's batches in flight).
HTTP_CONNECTIONS = 8


@attrs.define(slots=True, eq=False)
class Daemon:
    """One daemon of the cluster: fixed ports, restartable."""

    name: str
    argv: list[str]
    ports: dict[str, int]
    process: ManagedProcess

    def address(self, port: str) -> str:
        return f"{HOST}:{self.ports[port]}"

    def url(self, port: str) -> str:
        return f"http://{HOST}:{self.ports[port]}"


@attrs.define(slots=True)
class Settings:
    heartbeat: float = 5.0
    zookeeper_timeout: float = 3.0
    drain_period: float = 5.0
    log_level: str = "warn"
    direct_streams: bool = False


class Cluster:
    """Starts, restarts and asks the daemons of one run."""

    def __init__(self, reactor: Any, processes: ProcessSet, settings: Settings) -> None:
        self.reactor = reactor
        self.processes = processes
        self.settings = settings
        self.directory = processes.directory
        self.api_key = url_safe_token(24)
        self.redis: Daemon
        self.zookeeper: Daemon
        self.servers: list[Daemon] = []
        self.deliveries: list[Daemon] = []
        self.reglog: Daemon
        self.notification: Daemon
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = HTTP_CONNECTIONS
        self._pool.retryAutomatically = False
        #: For health checks and the sender (its concurrency fits the pool).
        self.http = HTTPClient(Agent(reactor, pool=self._pool))

    # --- the daemons ------------------------------------------------------------------

    @property
    def daemons(self) -> list[Daemon]:
        return [
            self.redis,
            self.zookeeper,
            *self.deliveries,
            *self.servers,
            self.reglog,
            self.notification,
        ]

    @property
    def redis_url(self) -> str:
        url = f"redis://{HOST}:{self.redis.ports['redis']}/0"
        return url + "?direct_streams=1" if self.settings.direct_streams else url

    @property
    def zookeeper_hosts(self) -> str:
        return self.zookeeper.address("client")

    def _spawn(self, name: str, argv: list[str], ports: dict[str, int]) -> Daemon:
        return Daemon(name, argv, ports, self.processes.spawn(name, argv))

    def _redis_argv(self, port: int) -> list[str]:
        binary = services.require("redis-server", "redis-server")
        directory = self.directory / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        return [
            binary,
            *("--port", str(port), "--bind", HOST, "--dir", str(directory)),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"),
            *("--maxclients", "10000"),
        ]

    def _zookeeper_argv(self, port: int) -> list[str]:
        """ZooKeeper on ``port``, always on the same data directory (a fresh
        one would refuse every client that has seen a later zxid)."""
        java = services.require("java", "default-jre-headless")
        directory = self.directory / "zookeeper"
        data = directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = directory / f"zoo-{port}.cfg"
        config.write_text(services.zookeeper_config(data, port))
        classpath = services.zookeeper_classpath()
        return services.zookeeper_argv(java, classpath, directory, config)

    def _twist(self, plugin: str, options: list[str]) -> list[str]:
        return services.twist_command(plugin, options, self.settings.log_level)

    def _discovery(self) -> list[str]:
        return [
            *("--redis", self.redis_url, "--zookeeper", self.zookeeper_hosts),
            *("--zookeeper-timeout", f"{self.settings.zookeeper_timeout:g}"),
        ]

    def _server_argv(self, index: int, ports: dict[str, int]) -> list[str]:
        heartbeat = self.settings.heartbeat
        options = [
            *self._discovery(),
            *("--listen", services.listen_endpoint(ports["client"])),
            *("--rpc", services.listen_endpoint(ports["rpc"])),
            *("--metrics", f"tcp:{ports['metrics']}:interface={HOST}"),
            *("--advertise", f"{HOST}:{ports['client']}"),
            *("--websocket", services.listen_endpoint(ports["websocket"])),
            *("--websocket-advertise", f"{HOST}:{ports['websocket']}"),
            *("--rpc-advertise", f"{HOST}:{ports['rpc']}"),
            *("--node-id", f"chaos-server-{index}"),
            *("--heartbeat", f"{heartbeat:g}", "--idle-timeout", f"{3 * heartbeat:g}"),
            *("--drain-period", f"{self.settings.drain_period:g}"),
        ]
        return self._twist("pigeon-server", options)

    def _delivery_argv(self, index: int, ports: dict[str, int]) -> list[str]:
        options = [
            *self._discovery(),
            *("--rpc", services.listen_endpoint(ports["rpc"])),
            *("--rpc-advertise", f"{HOST}:{ports['rpc']}"),
            *("--metrics", f"tcp:{ports['metrics']}:interface={HOST}"),
            *("--node-id", f"chaos-delivery-{index}"),
        ]
        return self._twist("pigeon-delivery", options)

    async def start(self, servers: int = 2, deliveries: int = 2) -> None:
        """Every daemon, ready; reglog sees every push server."""
        redis_port, zookeeper_port = free_port(), free_port()
        self.redis = self._spawn("redis", self._redis_argv(redis_port), {"redis": redis_port})
        self.zookeeper = self._spawn(
            "zookeeper", self._zookeeper_argv(zookeeper_port), {"client": zookeeper_port}
        )
        await _together(self.redis_ready(), self.zookeeper_ready())
        for index in range(deliveries):
            ports = {"rpc": free_port(), "metrics": free_port()}
            self.deliveries.append(
                self._spawn(f"delivery-{index}", self._delivery_argv(index, ports), ports)
            )
        for index in range(servers):
            ports = {
                "client": free_port(),
                "websocket": free_port(),
                "rpc": free_port(),
                "metrics": free_port(),
            }
            self.servers.append(
                self._spawn(f"server-{index}", self._server_argv(index, ports), ports)
            )
        reglog_port = free_port()
        reglog_options = [
            *self._discovery(),
            *("--listen", services.listen_endpoint(reglog_port)),
            *("--heartbeat", f"{self.settings.heartbeat:g}"),
        ]
        self.reglog = self._spawn(
            "reglog", self._twist("pigeon-reglog", reglog_options), {"http": reglog_port}
        )
        api_port = free_port()
        api_options = [
            *("--redis", self.redis_url, "--api-key", self.api_key),
            *("--listen", services.listen_endpoint(api_port)),
        ]
        self.notification = self._spawn(
            "notification", self._twist("pigeon-notification", api_options), {"http": api_port}
        )
        await _together(
            *(self.ready(daemon) for daemon in self.deliveries + self.servers),
            self.ready(self.notification),
            self.reglog_sees(servers),
        )

    async def restart(self, daemon: Daemon) -> Daemon:
        """Start an ended daemon again with its ports."""
        assert not daemon.process.running, f"{daemon.name} is still running"
        daemon.process = self.processes.spawn(daemon.name, daemon.argv)
        return daemon

    # --- readiness -----------------------------------------------------------------------

    async def ready(self, daemon: Daemon, timeout: float = START_TIMEOUT) -> None:
        """Until the daemon serves (what that means depends on what it is)."""
        if daemon is self.redis:
            await self.redis_ready(timeout)
        elif daemon is self.zookeeper:
            await self.zookeeper_ready(timeout)
        elif daemon in self.servers:
            await self._wait(
                daemon, lambda: self._healthy(daemon.url("metrics")), "serving", timeout
            )
        elif daemon in self.deliveries:
            await self._wait(
                daemon,
                lambda: port_open(self.reactor, HOST, daemon.ports["rpc"]),
                "listening",
                timeout,
            )
        else:
            await self._wait(daemon, lambda: self._healthy(daemon.url("http")), "healthy", timeout)

    async def _wait(self, daemon: Daemon, condition: Any, what: str, timeout: float) -> None:
        await wait_until(
            self.reactor,
            condition,
            timeout=timeout,
            what=f"{daemon.name} {what}",
            interval=0.1,
            watch=[daemon.process],
        )

    async def redis_ready(self, timeout: float = START_TIMEOUT) -> None:
        async def pong() -> bool:
            try:
                answer = await ask(
                    self.reactor, HOST, self.redis.ports["redis"], b"PING\r\nQUIT\r\n"
                )
            except (ConnectError, ConnectionError, defer.TimeoutError, defer.CancelledError):
                return False
            return answer.startswith(b"+PONG")  # not -LOADING: the AOF is read

        await self._wait(self.redis, pong, "answering PING", timeout)

    async def zookeeper_ready(
        self,
        timeout: float = START_TIMEOUT,
        port: int | None = None,
        process: ManagedProcess | None = None,
    ) -> None:
        async def imok() -> bool:
            try:
                return await self.zookeeper_ask(b"ruok", port) == b"imok"
            except (ConnectError, ConnectionError, defer.TimeoutError, defer.CancelledError):
                return False

        await wait_until(
            self.reactor,
            imok,
            timeout=timeout,
            what="ZooKeeper answering ruok",
            interval=0.1,
            watch=[self.zookeeper.process if process is None else process],
        )

    async def expire_zookeeper_sessions(self, timeout: float = START_TIMEOUT) -> None:
        """With ZooKeeper stopped: run it on its data on a port nobody knows
        until every session it restored has expired (its ephemeral nodes are
        gone), then stop it. Clients that come back then learn that their
        session expired, as after a long partition."""
        assert not self.zookeeper.process.running, "stop ZooKeeper first"
        side = free_port()
        process = self.processes.spawn("zookeeper", self._zookeeper_argv(side))
        try:
            await self.zookeeper_ready(timeout, side, process)

            async def expired() -> bool:
                return await self.ephemerals(side) == 0

            await wait_until(
                self.reactor,
                expired,
                timeout=timeout,
                what="ZooKeeper expiring the sessions of its clients",
                interval=0.1,
                watch=[process],
            )
        finally:
            await self.processes.stop(process, timeout=10)

    async def zookeeper_ask(self, word: bytes, port: int | None = None) -> bytes:
        port = self.zookeeper.ports["client"] if port is None else port
        return await ask(self.reactor, HOST, port, word)

    async def ephemerals(self, port: int | None = None) -> int | None:
        """ZooKeeper's count of ephemeral nodes (None: it does not answer)."""
        try:
            answer = await self.zookeeper_ask(b"mntr", port)
        except (ConnectError, ConnectionError, defer.TimeoutError, defer.CancelledError):
            return None
        for line in answer.decode("ascii", "replace").splitlines():
            name, _, value = line.partition("\t")
            if name == "zk_ephemerals_count" and value.strip().isdigit():
                return int(value)
        return None

    async def get_json(self, url: str) -> tuple[int, Any] | None:
        try:
            response = await self.http.get(url, timeout=5)
            raw = await response.content()
        except (ConnectError, ConnectionClosed, ResponseFailed, defer.CancelledError):
            return None
        try:
            return int(response.code), json.loads(raw)
        except ValueError:
            return int(response.code), None

    async def _healthy(self, url: str) -> bool:
        answer = await self.get_json(url + "/health")
        return answer is not None and answer[0] == 200

    async def reglog_servers(self) -> int | None:
        answer = await self.get_json(self.reglog.url("http") + "/health")
        if answer is None or not isinstance(answer[1], dict):
            return None
        count = answer[1].get("servers")
        return count if isinstance(count, int) else None

    async def reglog_sees(self, count: int, timeout: float = START_TIMEOUT) -> None:
        async def counted() -> bool:
            return await self.reglog_servers() == count

        await self._wait(self.reglog, counted, f"seeing {count} push server(s)", timeout)

    async def close(self) -> None:
        await self._pool.closeCachedConnections()

    def logs(self) -> list[Path]:
        return sorted(self.directory.glob("*.log"))


async def _together(*waits: Any) -> list[Any]:
    return list(await gather([defer.ensureDeferred(wait) for wait in waits]))
