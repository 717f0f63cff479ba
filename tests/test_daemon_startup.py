"""``twistd -n <plugin>`` in subprocesses: a start-up error is one line on
stderr and exit status 1; ``--log-format json`` writes one JSON object a line."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from support.cluster import twistd_command
from support.servers import free_port
from support.waiting import wait_for

#: Real daemons or processes: run where slow tests run (docs/development.rst).
pytestmark = pytest.mark.slow

KEY = "startup-key-0123456789"
#: Seconds a refused start may take (Python and Twisted's imports, two busy cores).
EXIT_TIMEOUT = 60.0


class Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.ended.callback(None)

    @property
    def exit_code(self) -> Any:
        assert self.reason is not None
        return self.reason.value.exitCode


def spawn(
    directory: Path, plugin: str, *arguments: str, log: str | None = None
) -> tuple[Any, Collect]:
    from twisted.internet import reactor

    command = [*twistd_command(), "-n", "--pidfile=", plugin, *arguments]
    if log is not None:
        command[len(twistd_command()) + 2 : len(twistd_command()) + 2] = [f"--logfile={log}"]
    collect = Collect()
    process = reactor.spawnProcess(collect, command[0], command, env=None, path=str(directory))
    return process, collect


async def refused(directory: Path, plugin: str, *arguments: str) -> str:
    """The one line a refused start writes on stderr (it must exit 1)."""
    from twisted.internet import reactor

    process, collect = spawn(directory, plugin, *arguments)
    try:
        await collect.ended.addTimeout(EXIT_TIMEOUT, reactor)
    finally:
        if collect.reason is None:
            process.signalProcess("KILL")
    lines = collect.err.decode().splitlines()
    assert collect.exit_code == 1, (collect.out.decode(), collect.err.decode())
    assert len(lines) == 1, collect.err.decode()
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port held listening on loopback for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def loopback(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_a_bad_option_is_one_line(tmp_path: Path) -> None:
    line = await refused(tmp_path, "pigeon-server", "--no-such-option")
    assert line == "pigeon-server: option --no-such-option not recognized"


@pytest_twisted.ensureDeferred
async def test_a_short_api_key_is_one_line(tmp_path: Path) -> None:
    line = await refused(tmp_path, "pigeon-notification", "--api-key", "short")
    assert line == "pigeon-notification: --api-key: an API key must have at least 16 characters"


@pytest_twisted.ensureDeferred
async def test_a_capacity_over_the_open_files_limit_is_one_line(tmp_path: Path) -> None:
    line = await refused(tmp_path, "pigeon-server", "--capacity", "100000000")
    assert line.startswith("pigeon-server: --capacity 100000000 is over what the open-files")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("plugin", "arguments"),
    [
        ("pigeon-reglog", ["--redis=memory:", "--zookeeper=static:", "--listen={busy}"]),
        ("pigeon-notification", ["--redis=memory:", f"--api-key={KEY}", "--listen={busy}"]),
        (
            "pigeon-server",
            ["--redis=memory:", "--zookeeper=static:", "--metrics=none", "--rpc={free}",
             "--listen={busy}"],
        ),
        ("pigeon-delivery", ["--redis=memory:", "--zookeeper=static:", "--rpc={busy}",
                             "--metrics=none"]),
        ("pigeon-delivery", ["--redis=memory:", "--zookeeper=static:", "--rpc={free}",
                             "--metrics={busy}"]),
        (
            "pigeon-server",
            ["--redis=memory:", "--zookeeper=static:", "--metrics={busy}", "--rpc={free}",
             "--listen={free}"],
        ),
        (
            "pigeon-standalone",
            ["--listen={free}", "--rpc={free}", "--reglog={free}", "--api={busy}"],
        ),
    ],
)  # fmt: skip
async def test_a_busy_port_is_one_line(
    tmp_path: Path, busy_port: int, plugin: str, arguments: list[str]
) -> None:
    filled = [
        argument.replace("{busy}", loopback(busy_port)).replace("{free}", loopback(free_port()))
        for argument in arguments
    ]
    line = await refused(tmp_path, plugin, *filled)
    assert line == (
        f"{plugin}: Couldn't listen on 127.0.0.1:{busy_port}: [Errno 98] Address already in use."
    )


@pytest_twisted.ensureDeferred
async def test_json_log_format_writes_one_object_a_line(tmp_path: Path) -> None:
    from twisted.internet import reactor

    log = tmp_path / "standalone.log"
    ports = {name: loopback(free_port()) for name in ("listen", "rpc", "reglog", "api")}
    arguments = [f"--{name}={endpoint}" for name, endpoint in ports.items()]
    process, collect = spawn(
        tmp_path, "pigeon-standalone", *arguments, "--log-format=json", log=str(log)
    )
    try:

        def announced() -> bool:
            assert collect.reason is None, collect.err.decode()
            return log.exists() and "PigeonPush standalone" in log.read_text()

        await wait_for(announced, timeout=EXIT_TIMEOUT, what="standalone to start")
        process.signalProcess("TERM")
        await collect.ended.addTimeout(30, reactor)
    finally:
        if collect.reason is None:
            process.signalProcess("KILL")
            await collect.ended
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(
        set(record) >= {"time", "level", "namespace", "text", "fields"} for record in records
    )
    (announcement,) = [r for r in records if r["text"].startswith("PigeonPush standalone")]
    assert announcement["level"] == "info"
    assert announcement["namespace"] == "pigeonpush.standalone.tap"
    assert announcement["fields"]["store"] == "memory"
    assert collect.err == b""
