"""The pigeon daemons as real subprocesses, for end-to-end tests.

Each daemon is ``twistd -n <plugin>`` (the twistd beside ``sys.executable``)
on free loopback ports, in its own session and process group, logging to
``<name>.log`` in the test's directory (anything printed before logging starts
goes to ``<name>.out``). Readiness is a bounded condition on what the daemon
serves: its ``/health`` answer, the servers reglog counts, a line of its log.
Stopping is SIGTERM, a bounded wait, then SIGKILL of the whole group.

Nothing is left running: a ``Cluster`` stops every daemon it started whatever
the test outcome and checks that no process of theirs remains; the daemons
are started by the benchmark's launcher (``pigeonpush_bench.processes``,
shared with the chaos suite and ``support.servers``), whose atexit hook
SIGKILLs any group still alive if the test process exits first, and which asks
the kernel to SIGKILL the daemon if the test process dies without a chance to
do either.

Exits are polled on the reactor's clock: nothing here blocks the reactor.

    cluster = Cluster(reactor, tmp_path, redis_url, zookeeper_hosts)
    delivery = cluster.delivery()
    server = cluster.server("push-a")
    await cluster.wait_server_ready(server, delivery)
    ...
    await cluster.close()  # SIGTERM all, SIGKILL stragglers, check they are gone
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import psutil
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import ResponseFailed

from pigeonpush_bench import processes
from support.certs import ServerCertificate
from support.servers import free_port, pid_alive
from support.waiting import wait_for

#: Lines of each log quoted when something fails.
TAIL_LINES = 40
#: Seconds a daemon has to start serving (two cores shared with other runs).
START_TIMEOUT = 45.0
#: Seconds a SIGTERMed daemon has to exit before it is SIGKILLed.
STOP_TIMEOUT = 20.0
#: Exit statuses of a clean stop: twistd ends itself with the SIGTERM it got
#: (-15 from Popen, 143 in a shell) once its services have stopped.
CLEAN_EXITS = (0, 143, -signal.SIGTERM)
#: The API key of the notification daemons a Cluster starts.
API_KEY = "cluster-key-0123456789abcdef"
#: The endpoint option shared by every listener: loopback only.
LOOPBACK = "interface=127.0.0.1"


def _endpoint(port: int, certificate: ServerCertificate | None) -> str:
    """A loopback listening endpoint: ``ssl:`` serving ``certificate`` if given."""
    if certificate is not None:
        return certificate.endpoint(port)
    return f"tcp:{port}:{LOOPBACK}"


def twistd_command() -> list[str]:
    """How to run twistd with the test's own interpreter."""
    twistd = Path(sys.executable).with_name("twistd")
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def group_alive(group: int) -> bool:
    """Whether any process of the process group ``group`` is left (zombies aside)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    # kill(0) also reaches zombies; a zombie leader whose group holds nothing
    # else is gone for every purpose here.
    return pid_alive(group) or _other_members(group)


def _other_members(group: int) -> bool:
    for process in psutil.process_iter():
        if process.pid == group:
            continue
        try:
            if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (psutil.Error, ProcessLookupError):
            continue
    return False


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.exists():
        return "(no file)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty)"


class DaemonExited(AssertionError):
    """A daemon ended while the test needed it; the message quotes its logs."""


@attrs.define(eq=False)
class Daemon:
    """One ``twistd -n <plugin>`` child. ``ports`` names the ports it listens on."""

    name: str
    plugin: str
    arguments: tuple[str, ...]
    directory: Path
    ports: Mapping[str, int]
    process: subprocess.Popen[bytes] | None = None
    #: names of the ports that speak TLS
    tls_ports: frozenset[str] = frozenset()

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def output_path(self) -> Path:
        return self.directory / f"{self.name}.out"

    @property
    def command(self) -> list[str]:
        """twistd's command line (the launcher runs it)."""
        return [
            *twistd_command(),
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            self.plugin,
            *self.arguments,
        ]

    def address(self, port: str) -> str:
        """``127.0.0.1:<port>`` of the named port."""
        return f"127.0.0.1:{self.ports[port]}"

    def advertised(self, port: str) -> str:
        """The named port's address as published: ``tls:`` first when it speaks TLS."""
        return ("tls:" if port in self.tls_ports else "") + self.address(port)

    def url(self, port: str) -> str:
        scheme = "https" if port in self.tls_ports else "http"
        return f"{scheme}://{self.address(port)}"

    def start(self) -> None:
        """Spawn it in a new session (its own process group); returns at once."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name} is running already")
        self.process = processes.popen(self.command, output=self.output_path, cwd=self.directory)

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """None while running; a negative number is the signal that ended it."""
        return None if self.process is None else self.process.poll()

    def signal(self, signum: int) -> bool:
        """Send ``signum`` to the daemon's process group; False if it is gone."""
        if self.process is None:
            return False
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            # In its first milliseconds the launcher may not have made its own
            # group yet; it has forked nothing then.
            if self.process.poll() is not None:
                return False
            try:
                os.kill(self.process.pid, signum)
            except ProcessLookupError:
                return False
        return True

    def kill(self) -> None:
        """SIGKILL, at once: a crash as far as everyone else can tell."""
        self.signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: twistd's graceful stop."""
        self.signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        """The exit status, once the process ended (TimeoutError after ``timeout``)."""
        await wait_for(
            lambda: not self.running,
            timeout=timeout,
            interval=0.05,
            what=f"{self.name} (pid {self.pid}) to exit",
        )
        code = self.returncode
        assert code is not None
        return code

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit status."""
        if self.process is None:
            return None
        if self.running:
            self.terminate()
            try:
                await self.wait_exit(timeout)
            except TimeoutError:
                self.kill()
                await self.wait_exit(10.0)
        return self.returncode

    def gone(self) -> bool:
        """True once neither the daemon nor anything of its group is left."""
        if self.process is None:
            return True
        if self.process.poll() is None or group_alive(self.process.pid):
            return False
        processes.forget(self.process.pid)
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def report(self, lines: int = TAIL_LINES) -> str:
        state = "running" if self.running else f"exited with {self.returncode}"
        return (
            f"--- {self.name} ({self.plugin}, {state}) {self.log_path.name}, last {lines} "
            f"lines:\n{tail(self.log_path, lines)}\n"
            f"--- {self.name} {self.output_path.name}:\n{tail(self.output_path, lines)}"
        )

    def check_running(self) -> None:
        if not self.running:
            raise DaemonExited(f"{self.name} exited with {self.returncode}\n{self.report()}")


@attrs.define(eq=False)
class Cluster:
    """The daemons of one test, on one Redis and one ZooKeeper (chroot)."""

    reactor: Any
    directory: Path
    redis_url: str
    zookeeper: str
    api_key: str = API_KEY
    #: the authorities the probes trust for https:// (default: the system's)
    ca_file: Path | None = None
    #: the latest daemon of each name
    daemons: dict[str, Daemon] = attrs.Factory(dict)
    #: every daemon ever started, restarted ones included (all checked gone at the end)
    started: list[Daemon] = attrs.Factory(list)
    _pool: Any = None
    _http: Any = None

    def __attrs_post_init__(self) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        from pigeonpush.tls import ClientTLS

        # Probes open a fresh connection each: no idle keep-alive connection
        # outlives a daemon it talked to.
        self._pool = HTTPConnectionPool(self.reactor, persistent=False)
        tls = ClientTLS.from_options(None if self.ca_file is None else str(self.ca_file))
        self._http = HTTPClient(
            Agent(
                self.reactor,
                contextFactory=tls.https_policy(),
                connectTimeout=5,
                pool=self._pool,
            )
        )

    # --- starting -------------------------------------------------------------------

    def spawn(
        self,
        name: str,
        plugin: str,
        arguments: Sequence[str],
        ports: Mapping[str, int],
        tls_ports: frozenset[str] = frozenset(),
    ) -> Daemon:
        """Start ``twistd -n <plugin> <arguments>`` as ``name`` (unique per cluster)."""
        if name in self.daemons and self.daemons[name].running:
            raise ValueError(f"a daemon named {name!r} is running already")
        daemon = Daemon(
            name, plugin, tuple(arguments), self.directory, dict(ports), tls_ports=tls_ports
        )
        self.daemons[name] = daemon
        self.started.append(daemon)
        daemon.start()
        return daemon

    def restart(self, daemon: Daemon, name: str) -> Daemon:
        """Start ``daemon`` again (it must have ended) with the same arguments
        and ports, as ``name`` (its own log files)."""
        if daemon.running:
            raise ValueError(f"{daemon.name} is still running")
        return self.spawn(name, daemon.plugin, daemon.arguments, daemon.ports, daemon.tls_ports)

    def _common(self) -> list[str]:
        return ["--redis", self.redis_url, "--zookeeper", self.zookeeper]

    def server(
        self,
        name: str,
        *,
        node_id: str | None = None,
        drain_period: float = 2.0,
        heartbeat: float = 2.0,
        idle_timeout: float = 10.0,
        capacity: int = 1000,
        certificate: ServerCertificate | None = None,
        extra: Sequence[str] = (),
    ) -> Daemon:
        """A ``pigeon-server`` (node id: ``node_id``, default ``name``); ports
        client, rpc, metrics. With a ``certificate``, client and rpc speak TLS."""
        ports = {"client": free_port(), "rpc": free_port(), "metrics": free_port()}
        tls_ports = frozenset({"client", "rpc"} if certificate is not None else ())
        arguments = [
            *self._common(),
            "--listen", _endpoint(ports["client"], certificate),
            "--rpc", _endpoint(ports["rpc"], certificate),
            "--metrics", f"tcp:{ports['metrics']}:{LOOPBACK}",
            "--node-id", node_id or name,
            "--drain-period", f"{drain_period:g}",
            "--heartbeat", f"{heartbeat:g}",
            "--idle-timeout", f"{idle_timeout:g}",
            "--capacity", str(capacity),
            *extra,
        ]  # fmt: skip
        return self.spawn(name, "pigeon-server", arguments, ports, tls_ports)

    def reglog(
        self,
        name: str = "reglog",
        *,
        heartbeat: float = 2.0,
        certificate: ServerCertificate | None = None,
        extra: Sequence[str] = (),
    ) -> Daemon:
        """A ``pigeon-reglog``; port http (HTTPS with a ``certificate``)."""
        ports = {"http": free_port()}
        arguments = [
            *self._common(),
            "--listen", _endpoint(ports["http"], certificate),
            "--heartbeat", f"{heartbeat:g}",
            *extra,
        ]  # fmt: skip
        tls_ports = frozenset({"http"} if certificate is not None else ())
        return self.spawn(name, "pigeon-reglog", arguments, ports, tls_ports)

    def delivery(
        self,
        name: str = "delivery",
        *,
        block: float = 0.2,
        certificate: ServerCertificate | None = None,
        extra: Sequence[str] = (),
    ) -> Daemon:
        """A ``pigeon-delivery`` whose node id is ``name``; ports rpc (TLS with a
        ``certificate``), metrics."""
        ports = {"rpc": free_port(), "metrics": free_port()}
        arguments = [
            *self._common(),
            "--rpc", _endpoint(ports["rpc"], certificate),
            "--metrics", f"tcp:{ports['metrics']}:{LOOPBACK}",
            "--node-id", name,
            "--block", f"{block:g}",
            *extra,
        ]  # fmt: skip
        tls_ports = frozenset({"rpc"} if certificate is not None else ())
        return self.spawn(name, "pigeon-delivery", arguments, ports, tls_ports)

    def notification(self, name: str = "notification", *, extra: Sequence[str] = ()) -> Daemon:
        """A ``pigeon-notification`` accepting ``api_key``; port http."""
        ports = {"http": free_port()}
        arguments = [
            "--redis", self.redis_url,
            "--listen", f"tcp:{ports['http']}:{LOOPBACK}",
            "--api-key", self.api_key,
            *extra,
        ]  # fmt: skip
        return self.spawn(name, "pigeon-notification", arguments, ports)

    # --- readiness ------------------------------------------------------------------

    async def get_json(self, url: str) -> tuple[int, Any] | None:
        """``(status, JSON body)`` of a GET, or None when nothing answers."""
        try:
            response = await self._http.get(url)
            raw = await response.content()
        except (ConnectError, ConnectionClosed, ResponseFailed):
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return int(response.code), body

    async def health(self, daemon: Daemon, port: str) -> tuple[int, Any] | None:
        """The daemon's ``/health`` answer on the named port (None: no answer yet)."""
        daemon.check_running()
        return await self.get_json(daemon.url(port) + "/health")

    async def wait_healthy(
        self, daemon: Daemon, port: str = "http", timeout: float = START_TIMEOUT
    ) -> Any:
        """Until ``/health`` answers 200; its body."""

        async def healthy() -> Any:
            answer = await self.health(daemon, port)
            return answer is not None and answer[0] == 200 and (answer[1] or True)

        return await wait_for(
            healthy, timeout=timeout, interval=0.1, what=f"{daemon.name} to answer /health"
        )

    async def wait_server_ready(
        self, server: Daemon, delivery: Daemon | None = None, timeout: float = START_TIMEOUT
    ) -> None:
        """Until the push server says "serving" (it listens and is registered in
        ZooKeeper) and, when ``delivery`` is given, knows that worker for pulls
        (the first pull follows AUTH_OK at once)."""
        await self.wait_healthy(server, "metrics", timeout)
        if delivery is not None:
            line = f"Delivery nodes for pulls: {delivery.advertised('rpc')}"

            def knows_delivery() -> bool:
                server.check_running()
                return line in server.log()

            await wait_for(
                knows_delivery,
                timeout=timeout,
                interval=0.1,
                what=f"{server.name} to find {delivery.name}",
            )

    async def wait_reglog_servers(
        self, reglog: Daemon, count: int, timeout: float = START_TIMEOUT
    ) -> Any:
        """Until reglog's ``/health`` counts ``count`` live push servers; its body."""

        async def counted() -> Any:
            answer = await self.health(reglog, "http")
            return answer is not None and answer[1].get("servers") == count and answer[1]

        return await wait_for(
            counted,
            timeout=timeout,
            interval=0.1,
            what=f"{reglog.name} to see {count} push server(s)",
        )

    # --- stopping and reporting -----------------------------------------------------

    async def stop(
        self, names: Sequence[str] | None = None, timeout: float = STOP_TIMEOUT
    ) -> dict[str, int | None]:
        """SIGTERM the named daemons (default: every one started) at once,
        SIGKILL any still running after ``timeout``; their exit statuses by
        name (-15 after a clean SIGTERM stop, -9 if it had to be killed)."""
        chosen = self.started if names is None else [self.daemons[name] for name in names]
        stops: list[Deferred[Any]] = [
            Deferred.fromCoroutine(daemon.stop(timeout)) for daemon in chosen
        ]
        await DeferredList(stops, consumeErrors=True)
        for daemon in chosen:
            if not daemon.gone():
                daemon.kill()
        return {daemon.name: daemon.returncode for daemon in chosen}

    def report(self) -> str:
        """The tail of every daemon's logs."""
        return "\n".join(daemon.report() for daemon in self.started)

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """Re-raise a failure inside the block with the tail of every log appended."""
        try:
            yield
        except DaemonExited:
            raise
        except Exception as e:
            raise AssertionError(f"{type(e).__name__}: {e}\n\n{self.report()}") from e

    async def close(self) -> None:
        """Stop every daemon, close the probes' pool, and check that no process
        of any daemon is left."""
        try:
            await self.stop()
        finally:
            await self._pool.closeCachedConnections()
        await wait_for(
            lambda: all(daemon.gone() for daemon in self.started),
            timeout=10,
            interval=0.05,
            what="every daemon's process group to be gone",
        )


@attrs.define(eq=False)
class ZooKeeperReader:
    """Direct reads of ZooKeeper (a fresh answer, not a watch's cached view).

    kazoo blocks: every call runs in the reactor's thread pool.
    """

    reactor: Any
    hosts: str
    _client: Any = None

    def _in_thread(self, function: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), function, *args)

    async def start(self) -> None:
        from kazoo.client import KazooClient

        self._client = KazooClient(hosts=self.hosts, timeout=10.0)
        await self._in_thread(self._client.start, 15)

    async def exists(self, path: str) -> bool:
        assert self._client is not None, "start() first"
        return await self._in_thread(self._client.exists, path) is not None

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await self._in_thread(client.stop)
            await self._in_thread(client.close)
