"""``twistd -n pigeon-server`` in a subprocess: it registers in ZooKeeper, serves,
and leaves ZooKeeper on SIGTERM, or, killed, once its --zookeeper-timeout ends."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from pigeonpush.discovery.interface import SERVERS, Node
from pigeonpush.discovery.zookeeper import ZooKeeperDiscovery
from pigeonpush.options import capacity_for, open_files_limit
from support.servers import free_port
from support.waiting import wait_for

# Starts daemons or many processes: tox runs it in fewer environments.
pytestmark = pytest.mark.slow


def twistd_command() -> list[str]:
    twistd = Path(sys.executable).with_name("twistd")
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Watched(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def processEnded(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.ended.callback(None)


def _server_command(
    log: Path, redis_url: str, zookeeper_hosts: str, node_id: str, *options: str
) -> list[str]:
    return [
        *twistd_command(),
        "-n",
        "--pidfile=",
        f"--logfile={log}",
        "pigeon-server",
        f"--redis={redis_url}",
        f"--zookeeper={zookeeper_hosts}",
        f"--node-id={node_id}",
        *options,
    ]


async def _registered(
    seen: list[dict[str, Node]], watched: Watched, log: Path, node_id: str
) -> Node:
    """The server's node, once the observer sees it (its log if twistd exits first)."""

    def registered() -> Any:
        assert watched.reason is None, f"twistd exited early:\n{_read(log)}"
        return seen and seen[-1].get(node_id)

    node: Node = await wait_for(registered, timeout=30, what="the server's znode")
    return node


@pytest_twisted.ensureDeferred
async def test_twistd_registers_and_leaves_on_sigterm(
    redis_url: str, zookeeper_hosts: str, tmp_path: Path
) -> None:
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    client_port, rpc_port, metrics_port = free_port(), free_port(), free_port()
    log = tmp_path / "server.log"
    command = _server_command(
        log,
        redis_url,
        zookeeper_hosts,
        "push-under-test",
        f"--listen=tcp:{client_port}:interface=127.0.0.1",
        f"--rpc=tcp:{rpc_port}:interface=127.0.0.1",
        f"--metrics=tcp:{metrics_port}:interface=127.0.0.1",
        "--drain-period=1",
    )
    observer = ZooKeeperDiscovery(zookeeper_hosts, reactor, session_timeout=4.0)
    pool = HTTPConnectionPool(reactor, persistent=False)
    seen: list[dict[str, Node]] = []
    watched = Watched()
    process = reactor.spawnProcess(watched, command[0], command, env=None, path=str(tmp_path))
    try:
        await observer.watch(SERVERS, lambda nodes: seen.append(dict(nodes)))
        node = await _registered(seen, watched, log, "push-under-test")
        assert dict(node.data) == {
            "client": f"127.0.0.1:{client_port}",
            "rpc": f"127.0.0.1:{rpc_port}",
            "connections": 0,
            # the default: what the open-files limit allows (19000 at 20000)
            "capacity": capacity_for(open_files_limit()),
        }
        health = await HTTPClient(Agent(reactor, pool=pool)).get(
            f"http://127.0.0.1:{metrics_port}/health"
        )
        assert (health.code, (await health.json())["status"]) == (200, "serving")

        process.signalProcess("TERM")

        await wait_for(lambda: "push-under-test" not in seen[-1], timeout=15, what="znode gone")
        await wait_for(lambda: watched.reason is not None, timeout=15, what="twistd exits")
        # After a clean shutdown twistd ends itself with SIGTERM again (exit 143 in a shell).
        assert watched.reason is not None
        assert watched.reason.value.signal == signal.SIGTERM, _read(log)
        text = _read(log)
        assert "Traceback" not in text, text
        assert "Push server push-under-test stopped" in text
    finally:
        if watched.reason is None:
            process.signalProcess("KILL")
            await watched.ended
        await pool.closeCachedConnections()
        await observer.close()


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else "(no log)"


@pytest_twisted.ensureDeferred
async def test_a_killed_server_leaves_discovery_after_its_zookeeper_timeout(
    redis_url: str, zookeeper_hosts: str, tmp_path: Path
) -> None:
    """``--zookeeper-timeout 2``: a SIGKILLed server's node goes after about two
    seconds, not after kazoo's default of ten, so reglog stops routing to it."""
    from twisted.internet import reactor

    log = tmp_path / "server.log"
    command = _server_command(
        log,
        redis_url,
        zookeeper_hosts,
        "push-to-kill",
        f"--listen=tcp:{free_port()}:interface=127.0.0.1",
        f"--rpc=tcp:{free_port()}:interface=127.0.0.1",
        "--metrics=none",
        "--zookeeper-timeout=2",
    )
    observer = ZooKeeperDiscovery(zookeeper_hosts, reactor, session_timeout=4.0)
    seen: list[dict[str, Node]] = []
    watched = Watched()
    process = reactor.spawnProcess(watched, command[0], command, env=None, path=str(tmp_path))
    try:
        await observer.watch(SERVERS, lambda nodes: seen.append(dict(nodes)))
        await _registered(seen, watched, log, "push-to-kill")

        process.signalProcess("KILL")
        await watched.ended
        killed_at = reactor.seconds()
        await wait_for(lambda: "push-to-kill" not in seen[-1], timeout=15, what="znode gone")

        assert reactor.seconds() - killed_at < 8.0  # with the default 10: over 10 s
    finally:
        if watched.reason is None:
            process.signalProcess("KILL")
            await watched.ended
        await observer.close()
