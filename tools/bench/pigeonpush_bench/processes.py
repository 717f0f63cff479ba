"""Start, watch and stop processes: the one launcher of the benchmark, the
chaos suite and the test suite's fixtures.

Every child runs through ``pigeonpush_bench.launch``: its own session and
process group, and a SIGKILL from the kernel if its parent dies. A
``ProcessSet`` owns the children of one run on the reactor and stops them all
(SIGTERM to each group, then SIGKILL after a bound) whatever happens: its
caller's try/finally, a reactor shutdown (Ctrl-C, SIGTERM) and, as the last
resort, an atexit hook that SIGKILLs any group still registered.

Code that runs outside the reactor (session fixtures, scripts) starts a child
with ``popen`` (the same launcher, the same atexit hook), waits for it with
``wait_port`` and stops it with ``stop_popen``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import psutil
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess, IReactorTCP, IReactorTime
from twisted.internet.protocol import ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: Process groups started by any ProcessSet of this process and not yet reaped.
_LIVE_GROUPS: set[int] = set()
_ATEXIT_ARMED = False


def _kill_leftovers() -> None:
    """atexit: SIGKILL every group a run failed to stop (it never should)."""
    for pgid in list(_LIVE_GROUPS):
        _signal_group(pgid, signal.SIGKILL)
    _LIVE_GROUPS.clear()


def _arm_atexit() -> None:
    global _ATEXIT_ARMED
    if not _ATEXIT_ARMED:
        atexit.register(_kill_leftovers)
        _ATEXIT_ARMED = True


def _signal_group(pgid: int, signum: int) -> bool:
    """Signal a whole process group; False if it no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


#: Environment variable each child gets: the run's directory.
RUN_MARKER = "PIGEONPUSH_BENCH_RUN"


def marked_pids(directory: Path) -> list[int]:
    """Live processes whose environment marks them as started for ``directory``."""
    wanted = str(directory)
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(RUN_MARKER) == wanted:
                found.append(process.pid)
        except (psutil.Error, OSError):
            continue  # gone meanwhile, or not ours to read
    return found


def gather(deferreds: Sequence[defer.Deferred[Any]]) -> defer.Deferred[list[Any]]:
    """All results in order; the first failure fails the whole with its own
    exception (not wrapped in FirstError), the others' failures are consumed."""

    def unwrap(failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, defer.FirstError):
            sub: Failure = error.subFailure
            return sub
        return failure

    return defer.gatherResults(list(deferreds), consumeErrors=True).addErrback(unwrap)


class StartError(RuntimeError):
    """A process did not start or did not become ready in time."""


class Interrupted(RuntimeError):
    """The reactor was stopped (Ctrl-C, SIGTERM) during the run."""


#: Where ``free_port`` looks when the kernel's ephemeral range is unknown.
DEFAULT_EPHEMERAL = (32768, 60999)
#: The lowest port ``free_port`` hands out (above the usual services' ports).
LOWEST_PORT = 20000
#: Ports this process handed out: never handed out twice.
_handed_out: set[int] = set()


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (inclusive)."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def port_candidates(ephemeral: tuple[int, int]) -> range:
    """Where to look for a listening port: below the ephemeral range if there
    is room, else above it."""
    low, high = ephemeral
    if low - LOWEST_PORT >= 2000:
        return range(LOWEST_PORT, low)
    return range(high + 1, 65536)


def free_port(host: str = "127.0.0.1", candidates: range | None = None) -> int:
    """A TCP port that is free on ``host`` and stays free until a server binds it.

    The kernel's own choice (bind to port 0) comes from the ephemeral range,
    which every outgoing connection on the machine draws from too: with
    parallel test runs, some client's ``connect`` took such a port between
    this call and the server's bind ("Address already in use"). A random port
    outside that range is taken only by another listener, and this process
    never hands one out twice. ``candidates``: where to look instead.
    """
    if candidates is None:
        candidates = port_candidates(ephemeral_range())
    for _ in range(200):
        port = random.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise StartError(f"no free port on {host} in {candidates.start}-{candidates.stop - 1}")


def launched(argv: Sequence[str]) -> list[str]:
    """``argv`` run through the launcher: its own session, SIGKILLed when this
    process dies."""
    return [sys.executable, "-m", "pigeonpush_bench.launch", str(os.getpid()), *argv]


# --- outside the reactor ------------------------------------------------------------


def popen(
    argv: Sequence[str],
    *,
    output: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` through the launcher without a reactor; stdout and stderr
    are appended to ``output``. Its group is SIGKILLed at exit if still there."""
    _arm_atexit()
    with open(output, "ab") as log_file:
        process = subprocess.Popen(
            launched(argv),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    _LIVE_GROUPS.add(process.pid)
    return process


def forget(pid: int) -> None:
    """The group ``pid`` leads is gone: the atexit hook can leave it alone."""
    _LIVE_GROUPS.discard(pid)


def stop_popen(
    process: subprocess.Popen[bytes], timeout: float = 10.0, signum: int = signal.SIGTERM
) -> int:
    """Signal the child's group, wait up to ``timeout``, then SIGKILL; its exit
    status. Blocks: for code outside the reactor only."""
    if process.returncode is not None:
        return process.returncode  # stopped and reaped before: its pid may be reused
    code = process.poll()
    if code is None:
        if not _signal_group(process.pid, signum):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            code = process.wait(timeout)
    # Anything the leader left behind in its group goes too.
    _signal_group(process.pid, signal.SIGKILL)
    forget(process.pid)
    return code


def wait_port(
    process: subprocess.Popen[bytes],
    host: str,
    port: int,
    *,
    timeout: float,
    what: str,
    output: Path | None = None,
) -> None:
    """Block until ``host:port`` accepts a connection; StartError (quoting the
    end of ``output``) if the child exits first or ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            raise StartError(f"{what} exited with {code} before listening{_tail(output)}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StartError(f"{what} did not listen on {host}:{port} within {timeout:g}s")
        time.sleep(0.05)


def _tail(output: Path | None, lines: int = 15) -> str:
    if output is None:
        return ""
    try:
        text = output.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return f"; {output} ends with:\n" + "\n".join(text.splitlines()[-lines:])


class _ExitWatcher(ProcessProtocol):
    """Fires ``ended`` with the exit code (negative: killed by that signal)."""

    def __init__(self) -> None:
        self.ended: defer.Deferred[int] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, ProcessDone):
            code = 0
        elif isinstance(value, ProcessTerminated):
            code = -value.signal if value.signal is not None else int(value.exitCode or 0)
        else:  # pragma: no cover - Twisted only reports these two
            code = -1
        self.ended.callback(code)


@attrs.define(slots=True, eq=False)
class ManagedProcess:
    """One child: its name, command line, log file and pid (= its process group)."""

    name: str
    argv: list[str]
    log_path: Path
    pid: int
    ended: defer.Deferred[int]
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def signal(self, signum: int) -> bool:
        """Signal the process's whole group; False if it is already gone.

        A child signalled in its first milliseconds may not have made its own
        group yet (the launcher is still starting); it has forked nothing
        then, so the signal goes to the process itself.
        """
        if not self.running:
            return False
        if _signal_group(self.pid, signum):
            return True
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class ProcessSet:
    """The children of one run, stopped together.

    ``reactor`` must provide IReactorProcess, IReactorTCP and IReactorTime.
    """

    def __init__(self, reactor: Any, directory: Path) -> None:
        self._reactor = reactor
        self.directory = directory
        self.processes: list[ManagedProcess] = []
        #: The reactor began to stop while children ran (Ctrl-C, SIGTERM).
        self.interrupted = False
        self._shutdown_trigger: Any = None
        _arm_atexit()

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        protocol: ProcessProtocol | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in its own session; output goes to ``<directory>/<name>.log``.

        With ``protocol`` (a ProcessProtocol of the caller), the child's stdin
        and stdout are pipes to it (the load generators' control channel);
        otherwise stdin is /dev/null and stdout joins the log. The protocol's
        ``processEnded`` still runs; ``ended`` fires after it.
        """
        if self._shutdown_trigger is None:
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                "before", "shutdown", self._on_shutdown
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.directory / f"{name}.log"
        watcher = _ExitWatcher()
        handler: ProcessProtocol = watcher if protocol is None else _Chained(protocol, watcher)
        command = launched(argv)
        environment = dict(os.environ if env is None else env)
        # Marks every process of the run, so that one left behind can be found.
        environment[RUN_MARKER] = str(self.directory)
        with open(log_path, "ab") as log_file, open(os.devnull, "rb") as devnull:
            child_fds: dict[int, int | str]
            if protocol is None:
                child_fds = {0: devnull.fileno(), 1: log_file.fileno(), 2: log_file.fileno()}
            else:
                child_fds = {0: "w", 1: "r", 2: log_file.fileno()}
            transport = self._spawner.spawnProcess(
                handler,
                command[0],
                command,
                env=environment,
                path=str(cwd) if cwd else None,
                childFDs=child_fds,
            )
        pid = int(transport.pid)
        process = ManagedProcess(
            name=name, argv=list(argv), log_path=log_path, pid=pid, ended=watcher.ended
        )
        _LIVE_GROUPS.add(pid)

        def reaped(code: int) -> int:
            process.exit_code = code
            _LIVE_GROUPS.discard(pid)
            # Anything the leader left behind in its group goes too.
            _signal_group(pid, signal.SIGKILL)
            return code

        watcher.ended.addCallback(reaped)
        self.processes.append(process)
        log.debug("Started {name} (pid {pid})", name=name, pid=pid)
        return process

    @property
    def _spawner(self) -> IReactorProcess:
        spawner: IReactorProcess = self._reactor
        return spawner

    async def stop(
        self, process: ManagedProcess, *, timeout: float = 10.0, signum: int = signal.SIGTERM
    ) -> int:
        """Signal the group, wait up to ``timeout`` for the exit, then SIGKILL."""
        if not process.running:
            assert process.exit_code is not None
            return process.exit_code
        process.signal(signum)
        clock: IReactorTime = self._reactor
        exited = defer.Deferred[int]()
        process.ended.addBoth(_passthrough_to(exited))
        exited.addTimeout(timeout, clock)
        try:
            return await exited
        except defer.TimeoutError:
            log.warn(
                "{name} (pid {pid}) ignored signal {signum} for {timeout}s; killing it",
                name=process.name,
                pid=process.pid,
                signum=signum,
                timeout=timeout,
            )
            process.signal(signal.SIGKILL)
            final = defer.Deferred[int]()
            process.ended.addBoth(_passthrough_to(final))
            final.addTimeout(timeout, clock)
            return await final

    async def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every running child, the last started first, each bounded."""
        running = [process for process in reversed(self.processes) if process.running]
        # Load generators and clients first, then the servers they talk to,
        # then the stores; all signalled at once within each pass would let a
        # server log errors about its store vanishing.
        for process in running:
            await self.stop(process, timeout=timeout)
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None

    def _on_shutdown(self) -> defer.Deferred[None]:
        """The reactor is stopping (Ctrl-C, SIGTERM): stop every child first."""
        self._shutdown_trigger = None  # fired: nothing to remove any more
        self.interrupted = any(process.running for process in self.processes)
        return defer.ensureDeferred(self.stop_all())

    def kill_all(self) -> None:
        """SIGKILL every running child now (synchronous; for emergencies)."""
        for process in self.processes:
            if process.running:
                process.signal(signal.SIGKILL)


def _passthrough_to(target: defer.Deferred[int]) -> Callable[[Any], Any]:
    """Fire ``target`` with a Deferred's result and hand the result on unchanged."""

    def fire(result: Any) -> Any:
        if not target.called:
            if isinstance(result, Failure):
                target.errback(result)
            else:
                target.callback(result)
        return result

    return fire


class _Chained(ProcessProtocol):
    """Forwards every event to the caller's protocol, then reaping to the watcher."""

    def __init__(self, inner: ProcessProtocol, watcher: _ExitWatcher) -> None:
        self.inner = inner
        self.watcher = watcher

    def makeConnection(self, transport: Any) -> None:
        ProcessProtocol.makeConnection(self, transport)
        self.inner.makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.inner.childDataReceived(childFD, data)

    def childConnectionLost(self, childFD: int) -> None:
        self.inner.childConnectionLost(childFD)

    def processExited(self, reason: Failure) -> None:
        self.inner.processExited(reason)

    def processEnded(self, reason: Failure) -> None:
        try:
            self.inner.processEnded(reason)
        finally:
            self.watcher.processEnded(reason)


# --- readiness ------------------------------------------------------------------


async def wait_until(
    clock: IReactorTime,
    condition: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    watch: Sequence[ManagedProcess] = (),
) -> Any:
    """Poll ``condition`` until it returns something truthy, within ``timeout``.

    A process of ``watch`` that exits meanwhile ends the wait at once with its
    log's last lines, which is nearly always the reason.
    """
    deadline = clock.seconds() + timeout
    while True:
        for process in watch:
            if not process.running:
                raise StartError(
                    f"{process.name} exited with {process.exit_code} while waiting for {what}; "
                    f"its log ({process.log_path}) ends with:\n{process.log_tail()}"
                )
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if clock.seconds() > deadline:
            tails = "".join(
                f"\n{process.name} log ({process.log_path}):\n{process.log_tail()}"
                for process in watch
            )
            raise StartError(f"{what} did not happen within {timeout:g}s{tails}")
        await deferLater(clock, interval, lambda: None)


async def port_open(reactor: IReactorTCP, host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    protocol = Protocol()
    try:
        await connectProtocol(endpoint, protocol)
    except (ConnectError, defer.CancelledError):
        return False
    assert protocol.transport is not None
    protocol.transport.loseConnection()
    return True


class _Collect(Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(b"".join(self.received))


async def ask(reactor: Any, host: str, port: int, payload: bytes, timeout: float = 2.0) -> bytes:
    """Send ``payload`` and read until the peer closes (ZooKeeper's four-letter words)."""
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    protocol = _Collect(payload)
    await connectProtocol(endpoint, protocol)
    clock: IReactorTime = reactor
    protocol.done.addTimeout(timeout, clock)
    return await protocol.done
