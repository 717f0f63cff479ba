"""Throwaway Redis and ZooKeeper servers for the test suite.

The processes are run by mirakuru, which starts each one in its own process
group, waits until its port answers and stops it by pid (SIGTERM, then SIGKILL)
whatever the test outcome. kazoo's own testing harness is not used: it expects
ZooKeeper's release tarball layout (Debian spreads the jars over
/usr/share/java) and is built around unittest classes and fixed sleeps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
from mirakuru import TCPExecutor

from pigeonpush_bench import services as launch

REDIS_BINARY = "redis-server"
JAVA_BINARY = "java"
#: Debian's jars, as the benchmark runs ZooKeeper too (replaceable in tests).
ZOOKEEPER_JARS = launch.ZOOKEEPER_JARS
START_TIMEOUT = 60.0


class MissingServerBinary(RuntimeError):
    """A server the tests need is not installed; the message names the package."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for every purpose here.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
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
    executor = TCPExecutor(
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
        host="127.0.0.1",
        port=port,
        timeout=START_TIMEOUT,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    executor.start()
    try:
        yield port
    finally:
        executor.stop()


@attrs.define(slots=True)
class RedisServer:
    """A redis-server in a temp dir, on a free loopback port."""

    directory: Path
    host: str = "127.0.0.1"
    port: int = attrs.field(factory=free_port)
    _executor: TCPExecutor | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._executor is not None and self._executor.process is not None
        return int(self._executor.process.pid)

    def start(self) -> None:
        binary = _require(REDIS_BINARY, "redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            *launch.redis_argv(binary, self.port, self.directory),
            *("--logfile", str(self.directory / "redis.log")),
        ]
        self._executor = TCPExecutor(
            command,
            host=self.host,
            port=self.port,
            timeout=START_TIMEOUT,
            stdout=subprocess.DEVNULL,
        )
        self._executor.start()

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.stop()

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
    _executor: TCPExecutor | None = None

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self._executor is not None and self._executor.process is not None
        return int(self._executor.process.pid)

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
        self._executor = TCPExecutor(
            command,
            host=self.host,
            port=self.port,
            timeout=START_TIMEOUT,
            stdout=open(self.directory / "zookeeper.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            # The JVM exits 128 + SIGTERM when stopped.
            expected_returncode=143,
        )
        self._executor.start()
        self._wait_ready()

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
        if self._executor is not None:
            self._executor.stop()
