"""The run: a daemon to attack, a legitimate client, and each attack in turn.

For each attack the runner starts the attacker as a child process, and
meanwhile sends the legitimate client (the SDK's ``PushClient``) one
notification a second through the notification API, timing each from the
request to the client's callback, and samples the daemon's RSS five times a
second. After the attack it checks that the daemon is alive and answers
``/health`` on both APIs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import psutil
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

from pigeonpush.sdk.client import PushClient
from pigeonpush.sdk.message import Message
from pigeonpush_abuse.attacks import Target, describe
from pigeonpush_abuse.report import AttackResult, Limits, judge

#: Seconds the self-started standalone has to answer /health.
START_TIMEOUT = 45.0
#: Seconds one legitimate notification may take before it counts as lost.
PROBE_TIMEOUT = 5.0
#: Seconds between legitimate notifications.
PROBE_INTERVAL = 1.0
#: Seconds an attacker may overrun its duration before it is killed.
ATTACKER_GRACE = 30.0
#: Seconds to wait after an attack before RSS "after" is read.
SETTLE = 1.0


def loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (the only allowed target)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def twistd_command() -> list[str]:
    twistd = Path(sys.executable).with_name("twistd")
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


@attrs.define(slots=True)
class Standalone:
    """A ``twistd -n pigeon-standalone`` this tool started (on loopback,
    fresh ports, the memory store unless ``store`` names a Redis),
    optionally under a lower open-files limit."""

    directory: Path
    fd_limit: int | None = None
    store: str = "memory:"
    api_key: str = attrs.Factory(lambda: secrets.token_hex(16))
    ports: dict[str, int] = attrs.Factory(
        lambda: {name: free_port() for name in ("device", "rpc", "reglog", "api")}
    )
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "standalone.log"

    @property
    def target(self) -> Target:
        return Target(
            device=("127.0.0.1", self.ports["device"]),
            reglog=f"http://127.0.0.1:{self.ports['reglog']}",
            api=f"http://127.0.0.1:{self.ports['api']}",
            api_key=self.api_key,
        )

    def _limit(self) -> None:  # runs in the child before exec
        if self.fd_limit is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.fd_limit, hard))

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        endpoint = "tcp:{}:interface=127.0.0.1".format
        command = [
            *twistd_command(),
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            "pigeon-standalone",
            *("--listen", endpoint(self.ports["device"])),
            *("--rpc", endpoint(self.ports["rpc"])),
            *("--reglog", endpoint(self.ports["reglog"])),
            *("--api", endpoint(self.ports["api"])),
            f"--api-key={self.api_key}",
            f"--redis={self.store}",
        ]
        with open(self.directory / "standalone.out", "ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._limit,
            )

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    async def stop(self, reactor: Any, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            waited = 0.0
            while self.process.poll() is None and waited < timeout:
                await deferLater(reactor, 0.1, lambda: None)
                waited += 0.1
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def rss(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.NoSuchProcess:
        return None


class _Collect(ProcessProtocol):
    """The attacker child's stdout and stderr, and its end."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-4000:]

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


@attrs.define(slots=True)
class Probe:
    """The legitimate device and the application server that writes to it."""

    reactor: Any
    target: Target
    http: Any
    client_id: str = attrs.Factory(lambda: f"abuse-legit-{secrets.token_hex(4)}")
    client: PushClient | None = None
    waiting: dict[str, Deferred[float]] = attrs.Factory(dict)
    sequence: int = 0

    def _received(self, message: Message) -> None:
        waiter = self.waiting.pop(message.text, None)
        if waiter is not None and not waiter.called:
            waiter.callback(self.reactor.seconds())

    async def start(self, timeout: float = 30.0) -> None:
        self.client = PushClient(
            self.reactor, self.target.reglog, self._received, client_id=self.client_id
        )
        self.client.start()
        online = self.client.when_authenticated()
        online.addTimeout(timeout, self.reactor)
        await online

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.stop()

    async def once(self) -> float | None:
        """Seconds from the API request to the callback; None if not within
        PROBE_TIMEOUT (or the API refused it)."""
        self.sequence += 1
        text = f"probe {self.sequence}"
        arrived: Deferred[float] = Deferred()
        self.waiting[text] = arrived
        started = self.reactor.seconds()
        try:
            response = await self.http.post(
                self.target.api.rstrip("/") + "/v1/notifications",
                json={"to": [self.client_id], "title": "probe", "text": text},
                headers={"Authorization": f"Bearer {self.target.api_key}"},
                timeout=PROBE_TIMEOUT,
            )
            await response.content()
            if response.code != 202:
                return None
            left = PROBE_TIMEOUT - (self.reactor.seconds() - started)
            arrived.addTimeout(max(left, 0.01), self.reactor)
            return await arrived - started
        except Exception:
            return None
        finally:
            self.waiting.pop(text, None)


async def healthy(reactor: Any, http: Any, target: Target, timeout: float = 10.0) -> bool:
    """Whether both APIs answer /health with 200 within ``timeout``."""
    waited = 0.0
    while True:
        answers = []
        for base in (target.reglog, target.api):
            try:
                response = await http.get(base.rstrip("/") + "/health", timeout=5)
                await response.content()
                answers.append(response.code == 200)
            except Exception:
                answers.append(False)
        if all(answers):
            return True
        if waited >= timeout:
            return False
        await deferLater(reactor, 0.5, lambda: None)
        waited += 0.5


def _log_size(path: Path | None) -> int | None:
    """Bytes of the log with its rotated files (twistd rotates at 1 MB and
    keeps ``NAME.1``, ``NAME.2``...)."""
    if path is None or not path.exists():
        return None
    total = 0
    for item in path.parent.glob(path.name + "*"):
        suffix = item.name[len(path.name) :]
        if suffix == "" or suffix[1:].isdigit():
            with contextlib.suppress(OSError):
                total += item.stat().st_size
    return total


def _file_size(path: Path | None) -> int:
    try:
        return 0 if path is None else path.stat().st_size
    except OSError:
        return 0


#: Bytes of a log that are never there verbatim in a clean log: C0 controls
#: but tab and newline, and DEL.
CONTROLS = frozenset(range(0x20)) - {0x09, 0x0A} | {0x7F}


def count_controls(data: bytes) -> int:
    return sum(1 for byte in data if byte in CONTROLS)


def _log_controls(path: Path | None, offset: int) -> int | None:
    """Control characters written to the log since ``offset`` (the whole
    current file, and the newest rotated one, when it rotated meanwhile)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as log:
            if log.seek(0, 2) >= offset:
                log.seek(offset)
                return count_controls(log.read())
            log.seek(0)
            data = log.read()
        rotated = path.with_name(path.name + ".1")
        if rotated.exists():
            data += rotated.read_bytes()
        return count_controls(data)
    except OSError:
        return None


@attrs.define(slots=True)
class Runner:
    reactor: Any
    target: Target
    pid: int | None
    duration: float
    connections: int
    seed: int
    limits: Limits
    log_path: Path | None = None
    alive: Callable[[], bool | None] = lambda: None
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)

    async def attack(self, name: str, probe: Probe, http: Any) -> AttackResult:
        result = AttackResult(name=name, description=describe(name))
        if self.pid is not None:
            result.rss_before = result.rss_peak = rss(self.pid)
        log_before = _log_size(self.log_path)
        log_offset = _file_size(self.log_path)

        def sample() -> None:
            if self.pid is not None:
                value = rss(self.pid)
                if value is not None and (result.rss_peak is None or value > result.rss_peak):
                    result.rss_peak = value

        sampler = LoopingCall(sample)
        sampler.clock = self.reactor
        sampling = sampler.start(0.2)

        child = _Collect()
        started = self.reactor.seconds()
        self.reactor.spawnProcess(
            child,
            sys.executable,
            [sys.executable, "-m", "pigeonpush_abuse", *self.attacker_arguments(name)],
            env=dict(os.environ),
        )
        killer = self.reactor.callLater(
            self.duration + ATTACKER_GRACE, lambda: child.transport.signalProcess("KILL")
        )
        while not child.ended.called:
            began = self.reactor.seconds()
            result.latencies.append(await probe.once())
            await deferLater(
                self.reactor,
                max(0.0, PROBE_INTERVAL - (self.reactor.seconds() - began)),
                lambda: None,
            )
        code = await child.ended
        if killer.active():
            killer.cancel()
        result.duration = self.reactor.seconds() - started
        sampler.stop()
        await sampling
        try:
            summary = json.loads(child.out.decode().strip().splitlines()[-1])
            result.sent = summary["sent"]
            result.observed = summary["observed"]
        except (ValueError, IndexError, KeyError):
            summary = None
        if code != 0 or summary is None:
            tail = child.err.decode(errors="replace").strip().splitlines()[-3:]
            result.attacker_error = f"exit status {code}: " + " | ".join(tail)
        await deferLater(self.reactor, SETTLE, lambda: None)
        result.alive = self.alive()
        result.healthy = result.alive is not False and await healthy(
            self.reactor, http, self.target
        )
        if self.pid is not None:
            result.rss_after = rss(self.pid)
        log_after = _log_size(self.log_path)
        if log_before is not None and log_after is not None:
            result.log_growth = log_after - log_before
            result.log_controls = _log_controls(self.log_path, log_offset)
        judge(result, self.limits)
        return result

    def attacker_arguments(self, name: str) -> list[str]:
        target = self.target
        return [
            "attack",
            name,
            "--device",
            f"{target.device[0]}:{target.device[1]}",
            *("--reglog", target.reglog, "--api", target.api),
            f"--api-key={target.api_key}",  # a given key may start with "-"
            *("--duration", f"{self.duration:g}", "--connections", str(self.connections)),
            *("--seed", str(self.seed)),
        ]

    async def run(self, names: Sequence[str]) -> list[AttackResult]:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        pool = HTTPConnectionPool(self.reactor, persistent=False)
        http = HTTPClient(Agent(self.reactor, connectTimeout=5, pool=pool))
        probe = Probe(self.reactor, self.target, http)
        results: list[AttackResult] = []
        try:
            await probe.start()
            baseline = [await probe.once() for _ in range(3)]
            self.say(f"pigeonpush-abuse: legitimate client online; baseline latencies {baseline}")
            for name in names:
                if self.alive() is False:
                    self.say(f"pigeonpush-abuse: the daemon is gone; {name} not run")
                    break
                self.say(f"pigeonpush-abuse: {name} for {self.duration:g} s ...")
                result = await self.attack(name, probe, http)
                verdict = "ok" if result.passed else "FAIL: " + "; ".join(result.problems)
                self.say(f"pigeonpush-abuse: {name}: {verdict}")
                results.append(result)
        finally:
            with contextlib.suppress(Exception):
                await probe.stop()
            await pool.closeCachedConnections()
        return results
