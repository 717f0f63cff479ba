"""Launchers for every server a benchmark measures or needs, on loopback.

Each ``start_*`` picks free ports, writes what configuration the server needs
into the run's directory, starts it through the ProcessSet and returns once it
answers (a bounded wait that fails with the server's log tail). Listening
sockets get a 4,096 backlog (the machine's maximum) so that connection bursts
are not cut at Twisted's default of 50.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectError

from pigeonpush_bench.processes import (
    ManagedProcess,
    ProcessSet,
    StartError,
    ask,
    free_port,
    port_open,
    wait_until,
)

HOST = "127.0.0.1"
BACKLOG = 4096
#: --max-connections of the benchmark's reglog and notification API: every
#: load generator keeps up to --concurrency keep-alive connections to each,
#: more than the daemons' default of 512 allows.
BENCH_HTTP_CONNECTIONS = 16000
START_TIMEOUT = 60.0

ZOOKEEPER_JARS = (
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/zookeeper-jute.jar",
    "/usr/share/java/slf4j-api.jar",
    "/usr/share/java/slf4j-simple.jar",
    "/usr/share/java/netty-handler.jar",
    "/usr/share/java/netty-transport.jar",
    "/usr/share/java/netty-common.jar",
    "/usr/share/java/netty-buffer.jar",
    "/usr/share/java/netty-resolver.jar",
    "/usr/share/java/netty-codec.jar",
    "/usr/share/java/netty-transport-native-epoll.jar",
    "/usr/share/java/netty-transport-native-unix-common.jar",
    "/usr/share/java/commons-cli.jar",
    "/usr/share/java/metrics-core.jar",
    "/usr/share/java/snappy-java.jar",
)


class MissingProgram(StartError):
    """A program the benchmark needs is not installed; the message names the package."""


def require(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise MissingProgram(f"{program!r} is not installed: run 'apt-get install -y {package}'")
    return path


def zookeeper_classpath() -> str:
    """Debian's ZooKeeper jars (spread over /usr/share/java) as a class path."""
    if not os.path.exists(ZOOKEEPER_JARS[0]):
        raise MissingProgram(f"{ZOOKEEPER_JARS[0]} is missing: run 'apt-get install -y zookeeper'")
    return ":".join(jar for jar in ZOOKEEPER_JARS if os.path.exists(jar))


def redis_argv(binary: str, port: int, directory: Path) -> list[str]:
    """A throwaway redis-server on loopback: no persistence, files in ``directory``."""
    return [
        binary,
        *("--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"),
        *("--dir", str(directory)),
    ]


def zookeeper_config(data: Path, port: int) -> str:
    """zoo.cfg of a throwaway standalone ZooKeeper on loopback."""
    return "\n".join(
        [
            "tickTime=500",
            "minSessionTimeout=1000",
            "maxSessionTimeout=30000",
            f"dataDir={data}",
            f"clientPort={port}",
            f"clientPortAddress={HOST}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,srvr,stat,mntr",
            "maxClientCnxns=0",
            "",
        ]
    )


def zookeeper_argv(java: str, classpath: str, directory: Path, config: Path) -> list[str]:
    """Debian's ZooKeeper run directly (its zkEnv.sh insists on /etc/zookeeper)."""
    return [
        java,
        *("-Xmx256m", "-XX:+UseSerialGC", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"),
        f"-Dzookeeper.log.dir={directory}",
        *("-cp", classpath, "org.apache.zookeeper.server.ZooKeeperServerMain", str(config)),
    ]


def listen_endpoint(port: int) -> str:
    return f"tcp:{port}:interface={HOST}:backlog={BACKLOG}"


@attrs.frozen(slots=True)
class Redis:
    process: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"


@attrs.frozen(slots=True)
class ZooKeeper:
    process: ManagedProcess
    port: int

    @property
    def hosts(self) -> str:
        return f"{HOST}:{self.port}"


@attrs.frozen(slots=True)
class Listener:
    """A server reached on one address (Mosquitto, a reglog, a notification API)."""

    process: ManagedProcess
    port: int

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@attrs.frozen(slots=True)
class Baseline:
    """The bare framing server: clients on ``port``, commands on ``control_port``."""

    process: ManagedProcess
    port: int
    control_port: int

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


@attrs.frozen(slots=True)
class PigeonServer:
    process: ManagedProcess
    node_id: str
    port: int
    rpc_port: int

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def rpc_address(self) -> str:
        return f"{HOST}:{self.rpc_port}"


async def _ready_port(
    reactor: Any, process: ManagedProcess, port: int, timeout: float = START_TIMEOUT
) -> None:
    async def answers() -> bool:
        return await port_open(reactor, HOST, port)

    await wait_until(
        reactor,
        answers,
        timeout=timeout,
        what=f"{process.name} listening on {port}",
        watch=[process],
    )


async def start_redis(processes: ProcessSet, reactor: Any, name: str = "redis") -> Redis:
    binary = require("redis-server", "redis-server")
    port = free_port()
    directory = processes.directory / name
    directory.mkdir(parents=True, exist_ok=True)
    process = processes.spawn(name, [*redis_argv(binary, port, directory), "--maxclients", "10000"])
    await _ready_port(reactor, process, port)
    return Redis(process, port)


async def start_zookeeper(
    processes: ProcessSet, reactor: Any, name: str = "zookeeper"
) -> ZooKeeper:
    java = require("java", "default-jre-headless")
    classpath = zookeeper_classpath()
    port = free_port()
    directory = processes.directory / name
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = directory / "zoo.cfg"
    config.write_text(zookeeper_config(data, port))
    process = processes.spawn(name, zookeeper_argv(java, classpath, directory, config))

    async def healthy() -> bool:
        try:
            return await ask(reactor, HOST, port, b"ruok") == b"imok"
        except (ConnectError, ConnectionError, defer.TimeoutError, defer.CancelledError):
            return False  # not up yet; the wait is bounded

    await wait_until(
        reactor, healthy, timeout=START_TIMEOUT, what="ZooKeeper answering ruok", watch=[process]
    )
    return ZooKeeper(process, port)


def mosquitto_config(port: int, log_path: Path, max_inflight: int) -> str:
    """Mosquitto set up like the pigeon server: loopback, no connection cap,
    TCP_NODELAY, no persistence, the same window of un-ACKed QoS 1 messages per
    client, and no per-client queue cap (its default of 1,000 would drop
    messages silently, which the benchmark would count as lost)."""
    return "\n".join(
        [
            "per_listener_settings false",
            f"listener {port} {HOST}",
            "allow_anonymous true",
            "max_connections -1",
            "set_tcp_nodelay true",
            "persistence false",
            f"log_dest file {log_path}",
            "log_type error",
            "log_type warning",
            "connection_messages false",
            f"max_inflight_messages {max_inflight}",
            "max_queued_messages 0",
            "user root",
            "",
        ]
    )


async def start_mosquitto(
    processes: ProcessSet, reactor: Any, name: str = "mosquitto", max_inflight: int = 32
) -> Listener:
    binary = require("mosquitto", "mosquitto")
    port = free_port()
    directory = processes.directory / name
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "mosquitto.conf"
    config.write_text(mosquitto_config(port, directory / "mosquitto.log", max_inflight))
    process = processes.spawn(name, [binary, "-c", str(config)])
    await _ready_port(reactor, process, port)
    return Listener(process, port)


async def start_baseline(processes: ProcessSet, reactor: Any, name: str = "baseline") -> Baseline:
    port, control = free_port(), free_port()
    process = processes.spawn(
        name,
        [
            sys.executable,
            "-m",
            "pigeonpush_bench.baseline",
            "--listen",
            listen_endpoint(port),
            "--control",
            f"tcp:{control}:interface={HOST}",
        ],
    )
    await _ready_port(reactor, process, control)
    return Baseline(process, port, control)


def twist_command(
    plugin: str, options: list[str], log_level: str, reactor: str = "default"
) -> list[str]:
    """``python -m twisted`` (the ``twist`` runner: foreground, no pid file),
    through ``pigeonpush_bench.twist`` on a reactor other than the default."""
    runner = ["twisted"] if reactor == "default" else ["pigeonpush_bench.twist", reactor]
    return [
        sys.executable,
        "-m",
        *runner,
        "--log-format=text",
        f"--log-level={log_level}",
        plugin,
        *options,
    ]


async def start_pigeon_server(
    processes: ProcessSet,
    reactor: Any,
    *,
    index: int,
    redis_url: str,
    zookeeper: str,
    heartbeat: float,
    capacity: int,
    log_level: str,
    websocket: bool = False,
    reactor_name: str = "default",
) -> PigeonServer:
    """``websocket``: with a WebSocket listener for devices too (``--websocket``)."""
    port, rpc = free_port(), free_port()
    node_id = f"bench-server-{index}"
    options = [
        "--listen",
        listen_endpoint(port),
        "--rpc",
        listen_endpoint(rpc),
        "--advertise",
        f"{HOST}:{port}",
        "--rpc-advertise",
        f"{HOST}:{rpc}",
        "--redis",
        redis_url,
        "--zookeeper",
        zookeeper,
        "--node-id",
        node_id,
        "--heartbeat",
        f"{heartbeat:g}",
        "--idle-timeout",
        f"{heartbeat * 3:g}",
        "--capacity",
        str(capacity),
        "--metrics",
        "none",
    ]
    websocket_port = free_port() if websocket else None
    if websocket_port is not None:
        options += ["--websocket", listen_endpoint(websocket_port)]
        options += ["--websocket-advertise", f"{HOST}:{websocket_port}"]
    process = processes.spawn(
        node_id, twist_command("pigeon-server", options, log_level, reactor_name)
    )
    await _ready_port(reactor, process, port)
    await _ready_port(reactor, process, rpc)
    if websocket_port is not None:
        await _ready_port(reactor, process, websocket_port)
    return PigeonServer(process, node_id, port, rpc)


async def start_reglog(
    processes: ProcessSet,
    reactor: Any,
    *,
    redis_url: str,
    zookeeper: str,
    heartbeat: float,
    log_level: str,
    reactor_name: str = "default",
    name: str = "reglog",
) -> Listener:
    port = free_port()
    options = [
        "--listen",
        listen_endpoint(port),
        "--redis",
        redis_url,
        "--zookeeper",
        zookeeper,
        "--heartbeat",
        f"{heartbeat:g}",
        "--max-connections",
        str(BENCH_HTTP_CONNECTIONS),
    ]
    process = processes.spawn(
        name, twist_command("pigeon-reglog", options, log_level, reactor_name)
    )
    await _ready_port(reactor, process, port)
    return Listener(process, port)


async def start_notification(
    processes: ProcessSet,
    reactor: Any,
    *,
    redis_url: str,
    api_key: str,
    log_level: str,
    reactor_name: str = "default",
    name: str = "notification",
) -> Listener:
    port = free_port()
    options = ["--listen", listen_endpoint(port), "--redis", redis_url, "--api-key", api_key]
    options += ["--max-connections", str(BENCH_HTTP_CONNECTIONS)]
    process = processes.spawn(
        name, twist_command("pigeon-notification", options, log_level, reactor_name)
    )
    await _ready_port(reactor, process, port)
    return Listener(process, port)


async def start_delivery(
    processes: ProcessSet,
    reactor: Any,
    *,
    redis_url: str,
    zookeeper: str,
    log_level: str,
    reactor_name: str = "default",
    name: str = "delivery",
) -> Listener:
    rpc = free_port()
    options = [
        "--rpc",
        listen_endpoint(rpc),
        "--rpc-advertise",
        f"{HOST}:{rpc}",
        "--redis",
        redis_url,
        "--zookeeper",
        zookeeper,
        "--node-id",
        f"bench-{name}",
        "--metrics",
        "none",
    ]
    process = processes.spawn(
        name, twist_command("pigeon-delivery", options, log_level, reactor_name)
    )
    await _ready_port(reactor, process, rpc)
    return Listener(process, rpc)
