"""The test infrastructure itself: real servers, their clean-up, the failure check."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from kazoo.client import KazooClient
from twisted.internet.threads import deferToThread

from support import servers
from support.servers import RedisServer, ZooKeeperServer, pid_alive

HERE = Path(__file__).parent


@pytest_twisted.ensureDeferred
async def test_redis_fixture_answers_through_txredisapi(redis_url: str) -> None:
    import txredisapi
    from twisted.internet import reactor

    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    connection = await txredisapi.Connection(host, int(port), reconnect=False, convertNumbers=False)
    try:
        await connection.set("foundation:key", "0123")
        assert await connection.get("foundation:key") == "0123"
    finally:
        await connection.disconnect()
    assert reactor.running


@pytest_twisted.ensureDeferred
async def test_zookeeper_fixture_answers_through_kazoo(zookeeper_hosts: str) -> None:
    client = KazooClient(hosts=zookeeper_hosts)
    await deferToThread(client.start, 30)
    try:
        await deferToThread(client.create, "/foundation", b"hello")
        data, _stat = await deferToThread(client.get, "/foundation")
        assert data == b"hello"
    finally:
        await deferToThread(client.stop)
        client.close()


def test_redis_url_fixture_starts_empty(redis_server: RedisServer, redis_url: str) -> None:
    redis_server.command("SET", "leftover", "1")
    redis_server.flush()
    assert redis_server.command("DBSIZE") == b":0\r\n"


def test_missing_redis_binary_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servers, "REDIS_BINARY", "redis-server-that-is-not-there")
    with pytest.raises(servers.MissingServerBinary, match="apt-get install -y redis-server"):
        RedisServer(tmp_path).start()


def test_missing_zookeeper_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servers, "ZOOKEEPER_JARS", ("/nonexistent/zookeeper.jar",))
    with pytest.raises(servers.MissingServerBinary, match="apt-get install -y zookeeper"):
        ZooKeeperServer(tmp_path).start()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_servers_are_gone_after_a_failing_session(tmp_path: Path) -> None:
    """A child pytest session whose tests fail still stops both servers by pid."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "inner"),
            str(HERE / "selfcheck" / "inner_servers.py"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=HERE.parent,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed, 1 passed, 1 error" in output, output
    # The unhandled Deferred error was reported by the failure check.
    assert "nobody handled me" in output, output
    match = re.search(r"SERVERS redis=(\d+):(\d+) zookeeper=(\d+):(\d+)", output)
    assert match is not None, output
    redis_pid, redis_port, zk_pid, zk_port = map(int, match.groups())
    assert not pid_alive(redis_pid)
    assert not pid_alive(zk_pid)
    assert not _port_open(redis_port)
    assert not _port_open(zk_port)


def test_cli_prints_version_and_help() -> None:
    from pigeonpush import __version__

    version = subprocess.run(
        [sys.executable, "-m", "pigeonpush.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert version.stdout.strip() == f"pigeonpush {__version__}"
    usage = subprocess.run(
        [sys.executable, "-m", "pigeonpush.cli"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "usage: pigeonpush" in usage.stdout


def test_cli_bench_says_where_the_benchmark_went(capsys: pytest.CaptureFixture[str]) -> None:
    from pigeonpush.cli import main

    assert main(["bench", "connections", "--n", "500"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("pigeonpush bench: ") and err.rstrip().endswith("run pigeonpush-bench")
