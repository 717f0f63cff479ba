"""The SDK over real sockets: a push server and a reglog (HTTP) running in the test's reactor.

The servers are the in-test ones of ``support.wire_server`` (the real wire
protocol and the reglog HTTP API); the CLI and the embedding example run as
subprocesses against them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from pigeonpush.ids import MessageIdGenerator
from pigeonpush.sdk import Disconnected, Message, PushClient, full_jitter
from support.servers import free_port
from support.waiting import wait_for
from support.wire_server import ReglogRoute, WireServer, reglog_site

ROOT = Path(__file__).parent.parent
FAST = full_jitter(initial=0.05, maximum=0.2)


@attrs.define
class Servers:
    wire: WireServer
    reglog: ReglogRoute
    reglog_port: IListeningPort

    @property
    def reglog_url(self) -> str:
        return f"http://127.0.0.1:{self.reglog_port.getHost().port}"  # type: ignore[attr-defined]


@pytest_twisted.async_yield_fixture
async def servers() -> AsyncIterator[Servers]:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    wire = WireServer(reactor, heartbeat=30.0)
    await wire.start()
    reglog = ReglogRoute(wire)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(reglog_site(reglog))
    try:
        yield Servers(wire, reglog, port)
    finally:
        await port.stopListening()
        await wire.stop()


def new_client(servers: Servers, client_id: str, received: list[Message], **options: Any) -> Any:
    from twisted.internet import reactor

    options.setdefault("backoff", FAST)
    return PushClient(reactor, servers.reglog_url, received.append, client_id=client_id, **options)


def message_id() -> str:
    from twisted.internet import reactor

    return MessageIdGenerator(reactor)()


async def authenticated(client: PushClient) -> None:
    from twisted.internet import reactor

    await client.when_authenticated().addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_connect_receive_and_ack(servers: Servers) -> None:
    received: list[Message] = []
    client = new_client(servers, "it-1", received)
    client.start()
    try:
        await authenticated(client)
        mid = message_id()
        servers.wire.push("it-1", mid, "Hello", "World", {"badge": "2"})
        await wait_for(lambda: servers.wire.acked("it-1") == [mid], what="the ACK")
        assert [(m.message_id, m.title, m.text, dict(m.extras)) for m in received] == [
            (mid, "Hello", "World", {"badge": "2"})
        ]
        assert servers.reglog.requests == [{"clientId": "it-1"}]
    finally:
        await client.stop()
    await wait_for(lambda: "it-1" not in servers.wire.sessions, what="the server sees the close")


@pytest_twisted.ensureDeferred
async def test_survives_a_server_restart_and_reconnects_by_itself(servers: Servers) -> None:
    received: list[Message] = []
    events: list[object] = []
    client = new_client(servers, "it-2", received, reconnect_threshold=2)
    client.on_event(events.append)
    client.start()
    try:
        await authenticated(client)
        await servers.wire.stop()  # crash: connections reset, port closed
        await wait_for(
            lambda: any(isinstance(e, Disconnected) for e in events), what="the disconnect"
        )
        await servers.wire.start()  # back on the same port
        await wait_for(lambda: "it-2" in servers.wire.sessions, what="the reconnection")
        mid = message_id()
        servers.wire.push("it-2", mid)
        await wait_for(lambda: servers.wire.acked("it-2") == [mid], what="the ACK")
        assert [m.message_id for m in received] == [mid]
        assert servers.wire.logins == ["it-2", "it-2"]
    finally:
        await client.stop()


@pytest_twisted.ensureDeferred
async def test_a_silent_server_is_dropped_after_missed_pongs(servers: Servers) -> None:
    servers.wire.heartbeat = 0.1
    servers.wire.answer_pings = False
    client = new_client(servers, "it-3", [], max_missed_pongs=2)
    events: list[object] = []
    client.on_event(events.append)
    client.start()
    try:
        await wait_for(lambda: len(servers.wire.logins) >= 2, what="a reconnection")
        (first, *_) = [e for e in events if isinstance(e, Disconnected)]
        assert first.reason == "no answer to 2 PING(s) in a row"
        assert servers.wire.pings >= 2
    finally:
        await client.stop()


class Child(ProcessProtocol):
    """A subprocess whose output is collected."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value.exitCode)

    @property
    def lines(self) -> list[str]:
        return self.out.decode().splitlines()

    async def interrupt(self) -> int:
        """Ctrl-C, and the exit code."""
        from twisted.internet import reactor

        self.transport.signalProcess("INT")  # type: ignore[union-attr]
        return await self.ended.addTimeout(20, reactor)

    async def kill(self) -> None:
        if not self.ended.called:
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]
            await self.ended


def spawn(*args: str) -> Child:
    from twisted.internet import reactor

    child = Child()
    argv = [sys.executable, *args]
    reactor.spawnProcess(child, sys.executable, argv, env=dict(os.environ), path=str(ROOT))
    return child


@pytest_twisted.ensureDeferred
async def test_cli_listen_prints_json_lines_acks_and_stops_on_ctrl_c(servers: Servers) -> None:
    child = spawn(
        "-m", "pigeonpush.cli", "listen", "--reglog", servers.reglog_url, "--client-id", "cli-1"
    )
    try:
        await wait_for(lambda: "cli-1" in servers.wire.sessions, timeout=30, what="CLI login")
        first, second = message_id(), message_id()
        servers.wire.push("cli-1", first, "Hi", "there", {"k": "v"})
        servers.wire.push("cli-1", second, "Ünïcode", "✓")
        await wait_for(lambda: len(child.lines) == 2, what="two JSON lines")
        lines = [json.loads(line) for line in child.lines]
        assert [{k: v for k, v in line.items() if k != "receivedAt"} for line in lines] == [
            {"messageId": first, "title": "Hi", "text": "there", "extras": {"k": "v"}},
            {"messageId": second, "title": "Ünïcode", "text": "✓", "extras": {}},
        ]
        assert lines[0]["receivedAt"].endswith("Z")
        await wait_for(lambda: servers.wire.acked("cli-1") == [first, second], what="ACKs")
        assert await child.interrupt() == 0
        await wait_for(lambda: "cli-1" not in servers.wire.sessions, what="the close")
        status = child.err.decode()
        assert "authenticated on 127.0.0.1" in status
        assert "Traceback" not in status
    finally:
        await child.kill()


@pytest_twisted.ensureDeferred
async def test_cli_listen_exits_1_when_reglog_refuses(servers: Servers) -> None:
    servers.reglog.secret = "the-right-one"
    child = spawn(
        "-m",
        "pigeonpush.cli",
        "listen",
        "--reglog",
        servers.reglog_url,
        "--client-id",
        "cli-2",
        "--secret",
        "a-wrong-one",
    )
    try:
        from twisted.internet import reactor

        assert await child.ended.addTimeout(30, reactor) == 1
        status = child.err.decode()
        assert "was refused: HTTP 401 unauthorized" in status
        assert "a-wrong-one" not in status
        assert child.out == b""
    finally:
        await child.kill()


@pytest_twisted.ensureDeferred
async def test_cli_listen_waits_out_a_reglog_restart(servers: Servers) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    port = free_port()  # where reglog will listen once it is back
    url = f"http://127.0.0.1:{port}"
    child = spawn(
        "-m", "pigeonpush.cli", "listen", "--reglog", url,
        "--client-id", "cli-3", "--max-backoff", "0.2", "--verbose",
    )  # fmt: skip
    listening: IListeningPort | None = None
    try:
        # the former limit was 5 failed lookups in a row
        await wait_for(
            lambda: b"attempt 8 of unlimited" in child.err,
            timeout=30,
            what="eight failed lookups",
        )
        assert not child.ended.called
        listening = await serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(
            reglog_site(servers.reglog)
        )
        await wait_for(lambda: "cli-3" in servers.wire.sessions, timeout=30, what="CLI login")
        assert await child.interrupt() == 0
        assert "gave up" not in child.err.decode()
    finally:
        await child.kill()
        if listening is not None:
            await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_cli_listen_gives_up_after_max_route_failures(servers: Servers) -> None:
    from twisted.internet import reactor

    servers.reglog.script = [(503, {"error": "no_server", "message": "none alive"})] * 10
    child = spawn(
        "-m", "pigeonpush.cli", "listen", "--reglog", servers.reglog_url,
        "--client-id", "cli-4", "--max-backoff", "0.1", "--max-route-failures", "3",
    )  # fmt: skip
    try:
        assert await child.ended.addTimeout(30, reactor) == 1
        assert "failed 3 time(s) in a row" in child.err.decode()
        assert len(servers.reglog.requests) == 3
    finally:
        await child.kill()


@pytest_twisted.ensureDeferred
async def test_the_embedding_example_receives_a_message(servers: Servers) -> None:
    client_id = "example-1"
    child = spawn(
        "examples/embed_client.py", "--reglog", servers.reglog_url, "--client-id", client_id
    )
    try:
        await wait_for(lambda: client_id in servers.wire.sessions, timeout=30, what="login")
        mid = message_id()
        servers.wire.push(client_id, mid, "Hello", "from the test", {"a": "1"})
        await wait_for(lambda: child.lines, what="the printed message")
        assert child.lines == [f"[{mid}] Hello: from the test {{a=1}}"]
        await wait_for(lambda: servers.wire.acked(client_id) == [mid], what="the ACK")
        assert await child.interrupt() == 0
    finally:
        await child.kill()


@pytest_twisted.ensureDeferred
async def test_cli_listen_refuses_a_bad_client_id_with_exit_2(servers: Servers) -> None:
    from twisted.internet import reactor

    child = spawn(
        "-m", "pigeonpush.cli", "listen", "--reglog", servers.reglog_url, "--client-id", "x" * 129
    )
    try:
        assert await child.ended.addTimeout(30, reactor) == 2
        assert "clientId must be a string of 1 to 128 ASCII" in child.err.decode()
        assert servers.reglog.requests == []
    finally:
        await child.kill()
