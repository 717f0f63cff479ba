"""``twistd pigeon-reglog``: options, the service tree, and a real twistd process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.application.service import IServiceCollection
from twisted.internet.error import ConnectError
from twisted.python import usage

from pigeonpush.discovery import DiscoveryService
from pigeonpush.discovery.interface import SERVERS
from pigeonpush.reglog.routing import AuthMode
from pigeonpush.reglog.service import ServerWatchService
from pigeonpush.reglog.tap import Options, makeService
from pigeonpush.services import Listener
from support.openapi import CheckedClient, OpenAPIDocument
from support.reactors import MemoryReactorClock
from support.servers import free_port, pid_alive
from support.waiting import wait_for

DOCUMENT = OpenAPIDocument.load(Path(__file__).parent.parent / "docs" / "openapi" / "reglog.json")
TWISTD = Path(sys.executable).parent / "twistd"


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults() -> None:
    options = parse()
    assert options["listen"] == "tcp:8100"
    assert options["redis"] == "redis://127.0.0.1:6379/0"
    assert options["zookeeper"] == "127.0.0.1:2181"
    assert options["token-ttl"] == 300.0
    assert options["heartbeat"] == 30.0
    assert options["auth-mode"] is AuthMode.OPEN
    assert options["admin-key"] is None
    assert options["max-body"] == 4096
    assert options["pending-ttl"] == 10.0
    assert options["access-log"] is None


def test_values_are_parsed() -> None:
    options = parse(
        "--listen",
        "tcp:9000:interface=127.0.0.1",
        "--redis",
        "memory:",
        "--zookeeper",
        "static:",
        "--token-ttl",
        "60",
        "--heartbeat",
        "12.5",
        "--auth-mode",
        "registered",
        "--admin-key",
        "k",
        "--max-body",
        "1024",
        "--pending-ttl",
        "3",
    )
    assert options["token-ttl"] == 60.0
    assert options["heartbeat"] == 12.5
    assert options["auth-mode"] is AuthMode.REGISTERED
    assert options["admin-key"] == "k"
    assert options["max-body"] == 1024
    assert options["pending-ttl"] == 3.0


def test_the_admin_key_can_come_from_a_file(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("  from-a-file\n")
    assert parse("--admin-key-file", str(key))["admin-key"] == "from-a-file"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token-ttl", "0"], "--token-ttl must be a positive number of seconds, not '0'"),
        (["--token-ttl", "-5"], "--token-ttl must be a positive number of seconds"),
        (["--token-ttl", "soon"], "--token-ttl must be a number of seconds, not 'soon'"),
        (["--heartbeat", "0"], "--heartbeat must be a positive number of seconds"),
        (["--max-body", "1.5"], "--max-body must be a whole number, not '1.5'"),
        (["--max-body", "0"], "--max-body must be at least 1, not 0"),
        (["--pending-ttl", "x"], "--pending-ttl must be a number"),
        (["--auth-mode", "closed"], "--auth-mode must be open or registered, not 'closed'"),
        (["--admin-key", "a", "--admin-key-file", "f"], "not both"),
        (["--admin-key-file", "/nonexistent/key"], "cannot read --admin-key-file"),
        (["--admin-key", ""], "the admin key must not be empty"),
        (["--listen", "nonsense:1"], "--listen must be a server endpoint such as tcp:7100"),
        (["--listen", "tcp:80:colour=blue"], "--listen must be a server endpoint"),
        (["--redis", "mysql://db/0"], "--redis: bad store URL"),
        (["--zookeeper", ""], "--zookeeper: discovery spec is empty"),
        (["--zookeeper", "static:servers=broken"], "--zookeeper: static servers entry"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message.replace("(", r"\(")):
        parse(*args)


def test_an_empty_admin_key_file_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("\n")
    with pytest.raises(usage.UsageError, match="must not be empty"):
        parse("--admin-key-file", str(key))


def test_the_service_tree() -> None:
    reactor = MemoryReactorClock()
    service = makeService(parse("--redis", "memory:", "--zookeeper", "static:"), reactor)
    assert IServiceCollection.providedBy(service)
    children = list(service)
    assert [child.name for child in children] == [
        "store",
        "discovery",
        "server-watch",
        "http",
        "gc",
    ]
    assert isinstance(children[1], DiscoveryService)
    assert isinstance(children[2], ServerWatchService)
    http = children[3]
    assert isinstance(http, Listener)
    http.startService()
    ((port, site, _backlog, interface),) = reactor.tcpServers
    assert (port, interface) == (8100, "")
    assert site.max_body == 4096
    http.stopService()


def test_the_body_limit_reaches_the_site() -> None:
    reactor = MemoryReactorClock()
    service = makeService(
        parse("--redis", "memory:", "--zookeeper", "static:", "--max-body", "100"), reactor
    )
    service.getServiceNamed("http").startService()
    ((_, site, _, _),) = reactor.tcpServers
    assert site.max_body == 100


def test_the_demo_page_is_served_only_when_asked() -> None:
    from pigeonpush.demo import HERE

    for flag, served in (([], False), (["--demo"], True)):
        reactor = MemoryReactorClock()
        service = makeService(parse("--redis", "memory:", "--zookeeper", "static:", *flag), reactor)
        service.getServiceNamed("http").startService()
        ((_, site, _, _),) = reactor.tcpServers
        assert (b"demo" in site.resource.children) is served
    # the page and the client it loads are there (a link to clients/js in the tree)
    assert (HERE / "index.html").is_file()
    assert (HERE / "client" / "pigeonpush.js").is_file()
    assert (HERE / "client" / "src" / "client.js").is_file()


# -- a real twistd ------------------------------------------------------------------------


async def redis_get(redis_url: str, key: str) -> Any:
    import txredisapi

    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    connection = await txredisapi.Connection(host, int(port), reconnect=False, convertNumbers=False)
    try:
        return await connection.get(key)
    finally:
        await connection.disconnect()


@attrs.frozen
class Twistd:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def twistd_reglog(tmp_path: Path, redis_url: str, zookeeper_hosts: str) -> Iterator[Twistd]:
    """``twistd -n pigeon-reglog`` on the test's Redis and ZooKeeper; killed if left running."""
    port = free_port()
    log_path = tmp_path / "twistd.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                str(TWISTD),
                "-n",
                "--pidfile=",
                "pigeon-reglog",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--redis",
                redis_url,
                "--zookeeper",
                zookeeper_hosts,
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Twistd(process, port, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_twistd_pigeon_reglog_answers_and_stops_on_sigterm(
    twistd_reglog: Twistd, redis_url: str, zookeeper_hosts: str
) -> None:
    from twisted.internet import reactor

    from pigeonpush.discovery.zookeeper import ZooKeeperDiscovery

    process = twistd_reglog.process
    discovery = ZooKeeperDiscovery(zookeeper_hosts, reactor)
    client = CheckedClient(reactor, f"http://127.0.0.1:{twistd_reglog.port}", DOCUMENT)
    try:
        await discovery.register(
            SERVERS,
            "s1",
            {"client": "127.0.0.1:7100", "rpc": "127.0.0.1:7101", "connections": 0, "capacity": 10},
        )

        async def routing() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"twistd exited early:\n{twistd_reglog.log()}")
            try:
                return (await client.get("/health")).status == 200
            except ConnectError:  # not listening yet
                return False

        await wait_for(routing, timeout=60, interval=0.2, what="twistd pigeon-reglog to route")
        answer = await client.post("/v1/route", {"clientId": "subprocess-client"})
        assert answer.status == 200
        assert answer.json["server"] == "127.0.0.1:7100"
        assert await redis_get(redis_url, "PIGEON:AUTH:{subprocess-client}") == answer.json["token"]
    finally:
        await client.close()
        await discovery.close()
        process.send_signal(signal.SIGTERM)

    await wait_for(lambda: process.poll() is not None, timeout=30, what="twistd to stop on SIGTERM")
    assert not pid_alive(process.pid)
    log = twistd_reglog.log()
    # After a clean shutdown twistd ends itself with the signal it got (a shell
    # shows 143); the log lines below show the shutdown was clean.
    assert process.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), log
    assert "Traceback" not in log, log
    assert "Main loop terminated." in log, log


def test_a_busy_port_fails_the_start(capfd: pytest.CaptureFixture[str]) -> None:
    """twistd then exits 1 with one line on stderr, instead of running on
    without the route API."""
    from twisted.internet.error import CannotListenError

    from support.reactors import MemoryReactorClock

    class BusyReactor(MemoryReactorClock):
        def listenTCP(self, port: int, *args: object, **kwargs: object) -> object:
            raise CannotListenError("127.0.0.1", port, OSError("in use"))

    service = makeService(
        parse("--listen=tcp:8100", "--redis=memory:", "--zookeeper=static:"), BusyReactor()
    )
    with pytest.raises(SystemExit) as exited:
        service.privilegedStartService()
    assert exited.value.code == 1
    err = capfd.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("pigeon-")] == [
        f"pigeon-reglog: {CannotListenError('127.0.0.1', 8100, OSError('in use'))}"
    ]
