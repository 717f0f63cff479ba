"""Throwaway Redis and ZooKeeper servers for the test suite.

The processes are started by the benchmark's launcher
(``pigeonpush_bench.processes``, shared with the chaos suite and
``support.cluster``): each in its own session, SIGKILLed by the kernel if the
test process dies, waited for until its port answers and stopped by pid
(SIGTERM to its group, then SIGKILL) whatever the test outcome. kazoo's own
testing harness is not used: it expects ZooKeeper's release tarball layout
(Debian spreads the jars over /usr/share/java) and is built around unittest
classes and fixed sleeps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import psutil

from pigeonpush_bench import processes, rediscluster
from pigeonpush_bench import services as launch

REDIS_BINARY = "redis-server"
JAVA_BINARY = "java"
#: Debian's jars, as the benchmark runs ZooKeeper too (replaceable in tests).
ZOOKEEPER_JARS = launch.ZOOKEEPER_JARS
START_TIMEOUT = 60.0
#: The one port finder of the tests and the benchmark (outside the ephemeral range).
free_port = processes.free_port


class MissingServerBinary(RuntimeError):
    """A server the tests need is not installed; the message names the package."""


def pid_alive(pid: int) -> bool:
    # A zombie still has a pid; it is gone for every purpose here.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def send_line(host: str, port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send ``payload`` and read one reply (used only outside the reactor)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise MissingServerBinary(
            f"{binary!r} is not installed: run 'apt-get install -y {package}' "
            "(or the project's test command, scripts/test, which installs it)"
        )
    return path


@contextlib.contextmanager
def tls_redis_server(
    directory: Path, cert_file: Path, key_file: Path, ca_file: Path
) -> Iterator[int]:
    """A redis-server that speaks only TLS (``--tls-port``), serving
    ``cert_file``; clients are not asked for certificates. Yields its port."""
    port = free_port()
    output = directory / "redis-tls.out"
    process = processes.popen(
        [
            _require(REDIS_BINARY, "redis-server"),
            "--port", "0",
            "--tls-port", str(port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert_file),
            "--tls-key-file", str(key_file),
            "--tls-ca-cert-file", str(ca_file),
            "--tls-auth-clients", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--logfile", str(directory / "redis-tls.log"),
        ],
        output=output,
    )  # fmt: skip
    try:
        processes.wait_port(
            process, "127.0.0.1", port, timeout=START_TIMEOUT, what="redis-server (TLS)",
            output=directory / "redis-tls.log",
        )  # fmt: skip
        yield port
    finally:
        processes.stop_popen(process)


@attrs.define(slots=True)
class RedisServer:
    """A redis-server in a temp dir, on a free loopback port."""

    directory: Path
    host: str = "127.0.0.1"
    port: int = attrs.field(factory=free_port)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    def start(self) -> None:
        binary = _require(REDIS_BINARY, "redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            *launch.redis_argv(binary, self.port, self.directory),
            *("--logfile", str(self.directory / "redis.log")),
        ]
        self._process = processes.popen(command, output=self.directory / "redis.out")
        try:
            processes.wait_port(
                self._process,
                self.host,
                self.port,
                timeout=START_TIMEOUT,
                what="redis-server",
                output=self.directory / "redis.log",
            )
        except processes.StartError:
            self.stop()
            raise

    def stop(self) -> None:
        if self._process is not None:
            processes.stop_popen(self._process)

    def restart(self) -> None:
        """Stop and start again on the same port (for reconnect tests)."""
        self.stop()
        self.start()

    def command(self, *words: str) -> bytes:
        """Run one command over a plain socket (fixture set-up, not tests)."""
        payload = f"*{len(words)}\r\n".encode()
        for word in words:
            raw = word.encode()
            payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
        return send_line(self.host, self.port, payload)

    def flush(self) -> None:
        reply = self.command("FLUSHALL")
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")


@attrs.define(slots=True)
class ZooKeeperServer:
    """A standalone ZooKeeper in a temp dir, on a free loopback port."""

    directory: Path
    host: str = "127.0.0.1"
    port: int = attrs.field(factory=free_port)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    def start(self) -> None:
        java = _require(JAVA_BINARY, "default-jre-headless")
        if not os.path.exists(ZOOKEEPER_JARS[0]):
            raise MissingServerBinary(
                f"{ZOOKEEPER_JARS[0]} is missing: run 'apt-get install -y zookeeper' "
                "(or the project's test command, scripts/test, which installs it)"
            )
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.directory / "zoo.cfg"
        config.write_text(launch.zookeeper_config(data, self.port))
        classpath = ":".join(jar for jar in ZOOKEEPER_JARS if os.path.exists(jar))
        command = launch.zookeeper_argv(java, classpath, self.directory, config)
        log = self.directory / "zookeeper.log"
        self._process = processes.popen(command, output=log)
        try:
            processes.wait_port(
                self._process,
                self.host,
                self.port,
                timeout=START_TIMEOUT,
                what="ZooKeeper",
                output=log,
            )
            self._wait_ready()
        except (processes.StartError, RuntimeError):
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if send_line(self.host, self.port, b"ruok") == b"imok":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ZooKeeper on {self.hosts} never answered ruok")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            processes.stop_popen(self._process)


def cluster_port(host: str = "127.0.0.1") -> int:
    """A free port below 55536 whose cluster bus port (+10000) is free too."""
    return rediscluster.cluster_port(host)


def _resp(*words: str) -> bytes:
    payload = f"*{len(words)}\r\n".encode()
    for word in words:
        raw = word.encode()
        payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
    return payload


@attrs.define(slots=True)
class ClusterNode:
    """One redis-server of a RedisCluster (cluster mode, no persistence)."""

    directory: Path
    host: str = "127.0.0.1"
    port: int = attrs.field(factory=cluster_port)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        binary = _require(REDIS_BINARY, "redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        # The benchmark's cluster nodes: failover within a second, replicas
        # in sync at once.
        command = rediscluster.cluster_node_argv(binary, self.port, self.directory)
        output = self.directory / "stdout.log"
        self._process = processes.popen(command, output=output)
        try:
            processes.wait_port(
                self._process,
                self.host,
                self.port,
                timeout=START_TIMEOUT,
                what="redis-server (cluster node)",
                output=self.directory / "redis.log",
            )
        except processes.StartError:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL (a crash): no chance to hand anything over."""
        if self.running:
            assert self._process is not None
            processes.stop_popen(self._process, signum=signal.SIGKILL)

    def stop(self) -> None:
        if self._process is not None:
            processes.stop_popen(self._process)

    def command(self, *words: str) -> bytes:
        """Run one command over a plain socket (fixture set-up, not tests)."""
        return send_line(self.host, self.port, _resp(*words))

    def fields(self, *command: str) -> dict[str, str]:
        """An INFO-style reply (``name:value`` lines) as a dict."""
        fields: dict[str, str] = {}
        for line in self.command(*command).decode(errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip()] = value.strip()
        return fields

    @property
    def is_master(self) -> bool:
        return self.fields("INFO", "replication").get("role") == "master"


@attrs.define(slots=True)
class RedisCluster:
    """A Redis Cluster on loopback: 3 masters and 3 replicas (one each),
    created with ``redis-cli --cluster create``; ready once every node says
    ``cluster_state:ok``."""

    directory: Path
    masters: int = 3
    nodes: list[ClusterNode] = attrs.field(factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[: self.masters])

    def start(self) -> None:
        cli = _require("redis-cli", "redis-tools")
        self.nodes = [
            ClusterNode(self.directory / f"node-{index}") for index in range(2 * self.masters)
        ]
        try:
            for node in self.nodes:
                node.start()
            created = subprocess.run(
                [cli, "--cluster", "create", *(node.address for node in self.nodes),
                 "--cluster-replicas", "1"],
                input=b"yes\n", capture_output=True, timeout=START_TIMEOUT, check=False,
            )  # fmt: skip
            if created.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed: {created.stdout[-2000:]!r} "
                    f"{created.stderr[-2000:]!r}"
                )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def running_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running]

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Until every running node says ``cluster_state:ok`` with all 16384
        slots served, and every running replica is in sync with its master
        (a bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                running = self.running_nodes()
                states = [node.fields("CLUSTER", "INFO") for node in running]
                replication = [node.fields("INFO", "replication") for node in running]
                if all(
                    state.get("cluster_state") == "ok" and state.get("cluster_slots_ok") == "16384"
                    for state in states
                ) and all(
                    role.get("role") == "master"
                    or (
                        role.get("master_link_status") == "up"
                        and role.get("master_sync_in_progress") == "0"
                    )
                    for role in replication
                ):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster in {self.directory} is not ok")
            time.sleep(0.05)

    def master_nodes(self) -> list[ClusterNode]:
        """The running nodes that are masters now."""
        return [node for node in self.running_nodes() if node.is_master]

    def node_id(self, node: ClusterNode) -> str:
        return node.command("CLUSTER", "MYID").split(b"\r\n")[1].decode()

    def master_of(self, key: str) -> ClusterNode:
        """The master that serves ``key`` now (the others answer MOVED)."""
        for node in self.master_nodes():
            if not node.command("EXISTS", key).startswith(b"-MOVED"):
                return node
        raise RuntimeError(f"no master serves {key!r}")

    def crash_master(self, node: ClusterNode, timeout: float = START_TIMEOUT) -> None:
        """SIGKILL ``node`` (a master); once its replica took over, start it
        again (it rejoins as a replica, empty, and syncs)."""
        node.kill()
        deadline = time.monotonic() + timeout
        while node in self.master_nodes() or len(self.master_nodes()) < self.masters:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over from {node.address}")
            time.sleep(0.05)
        self.wait_ok(timeout)

    def restart(self, node: ClusterNode, timeout: float = START_TIMEOUT) -> None:
        """Start a stopped node again on its port and config (a replica now)."""
        node.start()
        self.wait_ok(timeout)

    def flush(self) -> None:
        for node in self.master_nodes():
            reply = node.command("FLUSHALL")
            if not reply.startswith(b"+OK"):
                raise RuntimeError(f"FLUSHALL on {node.address} failed: {reply!r}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
