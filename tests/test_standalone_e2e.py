"""``twistd -n pigeon-standalone`` as a real process, driven from outside.

The walk-through of docs/standalone.rst exactly as a newcomer types it
(``pigeonpush listen``, ``send`` and ``status`` as processes, the key read from
the standalone's log); a few dozen SDK ``PushClient``s in the test's reactor
receiving a batch, and an offline client getting its messages on connect; a
graceful SIGTERM; and the same on Redis, where a message accepted for an
offline client survives a restart.

Each standalone runs on free loopback ports in its own process group and logs
to a file in the test's directory; waits are bounded conditions; teardown
stops it (SIGTERM, then SIGKILL) and checks that its process is gone.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from pigeonpush.sdk import ClientEvent, Disconnected, GaveUp, Message, PushClient, full_jitter
from pigeonpush.wire.frames import KickReason
from support.cluster import STOP_TIMEOUT, Daemon
from support.openapi import CheckedClient, OpenAPIDocument
from support.servers import free_port, pid_alive
from support.waiting import wait_for

# Starts daemons or many processes: tox runs it in fewer environments.
pytestmark = pytest.mark.slow

DOCS = Path(__file__).parent.parent / "docs"
NOTIFICATION_API = OpenAPIDocument.load(DOCS / "openapi/notification.json")
#: Seconds a standalone has to start serving (two cores shared with other runs).
START_TIMEOUT = 30.0
DRAIN_PERIOD = 1.0
#: How much longer than its drain period a stopping standalone may take to exit.
EXIT_MARGIN = 8.0
#: How the generated key appears in the log, and the start-up line.
KEY_LINE = re.compile(r"use this generated one: Authorization: Bearer (\S+)")
STARTED_LINE = "PigeonPush standalone: devices connect to"
FLEET_SIZE = 40
BACKOFF = full_jitter(initial=0.2, maximum=2.0)


def pigeonpush_command() -> list[str]:
    """The ``pigeonpush`` console script installed beside the test's interpreter."""
    script = Path(sys.executable).with_name("pigeonpush")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pigeonpush.cli"]


# --- the standalone process ------------------------------------------------------------


class Probe:
    """GETs that tell whether something answers yet: a fresh connection each."""

    def __init__(self, reactor: Any) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._http = HTTPClient(Agent(reactor, connectTimeout=5, pool=self._pool))

    async def get_json(self, url: str) -> tuple[int, Any] | None:
        """``(status, JSON body)``, or None when nothing answers."""
        from twisted.internet.error import ConnectError, ConnectionClosed
        from twisted.web.client import ResponseFailed

        try:
            response = await self._http.get(url)
            body = await response.content()
        except (ConnectError, ConnectionClosed, ResponseFailed):
            return None
        return int(response.code), json.loads(body)

    async def close(self) -> None:
        await self._pool.closeCachedConnections()


@attrs.define(eq=False)
class Standalone:
    """One ``twistd -n pigeon-standalone`` process, and the API client talking to it."""

    daemon: Daemon
    api: CheckedClient
    probe: Probe

    @property
    def reglog_url(self) -> str:
        return self.daemon.url("reglog")

    @property
    def api_url(self) -> str:
        return self.daemon.url("api")

    def generated_key(self) -> str | None:
        """The key the start-up log tells the user to use (None if none was generated)."""
        found = KEY_LINE.findall(self.daemon.log())
        assert len(found) <= 1, "the key was announced more than once"
        return found[0] if found else None

    async def wait_ready(self) -> None:
        """Until it announced itself, its API answers /health and reglog routes to its server."""

        async def ready() -> bool:
            self.daemon.check_running()
            if STARTED_LINE not in self.daemon.log():
                return False
            api = await self.probe.get_json(self.api_url + "/health")
            reglog = await self.probe.get_json(self.reglog_url + "/health")
            return (
                api is not None
                and api[0] == 200
                and reglog is not None
                and reglog[1].get("servers") == 1
            )

        await wait_for(ready, timeout=START_TIMEOUT, interval=0.1, what="the standalone to serve")

    def check_clean_log(self) -> None:
        text = self.daemon.log()
        assert "Traceback" not in text, self.daemon.report()
        assert "Unhandled" not in text, self.daemon.report()


class Spawner:
    """Starts standalones for one test; ``close`` stops them and checks they are gone."""

    def __init__(self, reactor: Any, directory: Path) -> None:
        self._reactor = reactor
        self._directory = directory
        self.started: list[Standalone] = []

    def ports(self) -> dict[str, int]:
        return {name: free_port() for name in ("listen", "rpc", "reglog", "api")}

    async def start(
        self, *options: str, ports: dict[str, int] | None = None, name: str = "standalone"
    ) -> Standalone:
        ports = ports or self.ports()
        arguments = [f"--{part}=tcp:{port}:interface=127.0.0.1" for part, port in ports.items()]
        arguments += [f"--drain-period={DRAIN_PERIOD:g}", *options]
        daemon = Daemon(name, "pigeon-standalone", tuple(arguments), self._directory, ports)
        daemon.start()
        standalone = Standalone(
            daemon,
            CheckedClient(self._reactor, daemon.url("api"), NOTIFICATION_API),
            Probe(self._reactor),
        )
        self.started.append(standalone)
        try:
            await standalone.wait_ready()
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{daemon.report()}") from None
        return standalone

    async def close(self) -> None:
        for standalone in self.started:
            await standalone.api.close()
            await standalone.probe.close()
            await standalone.daemon.stop(STOP_TIMEOUT)
        for standalone in self.started:
            daemon = standalone.daemon
            await wait_for(daemon.gone, timeout=10, what=f"{daemon.name}'s process to be gone")
            assert not pid_alive(daemon.pid)


@pytest_twisted.async_yield_fixture
async def spawner(tmp_path: Path) -> AsyncIterator[Spawner]:
    from twisted.internet import reactor

    spawner = Spawner(reactor, tmp_path)
    try:
        yield spawner
    finally:
        await spawner.close()


# --- the application server's side -----------------------------------------------------


async def send_batch(standalone: Standalone, key: str, to: list[str], count: int) -> list[str]:
    """``count`` notifications to ``to`` in one batch request; their messageIds."""
    body = {
        "notifications": [
            {"to": to, "title": f"batch {n}", "text": f"message {n} of {count}"}
            for n in range(count)
        ]
    }
    answer = await standalone.api.post(
        "/v1/notifications/batch", body, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status == 200, answer.json
    results = answer.json["results"]
    assert [r.get("recipients") for r in results] == [len(to)] * count, results
    return [str(r["messageId"]) for r in results]


async def receipt(standalone: Standalone, key: str, message_id: str) -> Any:
    answer = await standalone.api.get(
        f"/v1/notifications/{message_id}", headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status == 200, answer.json
    return answer.json


async def wait_acked(
    standalone: Standalone, key: str, message_ids: Sequence[str], recipients: int
) -> None:
    """Until every receipt says all ``recipients`` ACKed and none pending."""
    left = set(message_ids)

    async def all_acked() -> bool:
        for message_id in sorted(left):
            answer = await receipt(standalone, key, message_id)
            assert answer["recipients"] == recipients, answer
            if answer["acked"] == recipients and answer["pending"] == []:
                left.discard(message_id)
        return not left

    await wait_for(all_acked, timeout=15, interval=0.1, what="every receipt to say acked")


# --- devices ---------------------------------------------------------------------------


@attrs.define(eq=False)
class Device:
    """An SDK client in the test's reactor, and every callback call and event it saw."""

    client: PushClient
    received: list[Message] = attrs.Factory(list)
    events: list[ClientEvent] = attrs.Factory(list)

    @classmethod
    def create(cls, reactor: Any, reglog_url: str, client_id: str) -> Device:
        holder: list[Device] = []
        client = PushClient(
            reactor,
            reglog_url,
            lambda message: holder[0].received.append(message),
            client_id=client_id,
            backoff=BACKOFF,
        )
        device = cls(client)
        holder.append(device)
        client.on_event(device.events.append)
        return device

    @property
    def ids(self) -> list[str]:
        return [message.message_id for message in self.received]

    def kicked_for_shutdown(self) -> bool:
        return any(
            isinstance(e, Disconnected) and KickReason.SHUTTING_DOWN.name in e.reason
            for e in self.events
        )


async def online(reactor: Any, devices: Sequence[Device]) -> None:
    for device in devices:
        device.client.start()
    authenticated = gatherResults([d.client.when_authenticated() for d in devices])
    authenticated.addTimeout(30, reactor)
    await authenticated


async def stop_all(reactor: Any, devices: Sequence[Device]) -> None:
    stopping = gatherResults([device.client.stop() for device in devices])
    stopping.addTimeout(20, reactor)
    await stopping


def missing(devices: Sequence[Device], message_ids: Sequence[str]) -> int:
    return sum(len(set(message_ids) - set(d.ids)) for d in devices)


async def wait_received(devices: Sequence[Device], message_ids: Sequence[str]) -> None:
    await wait_for(
        lambda: missing(devices, message_ids) == 0,
        timeout=20,
        interval=0.05,
        what=f"every message at every device ({missing(devices, message_ids)} missing)",
    )


def check_no_duplicates(devices: Sequence[Device]) -> None:
    repeated = {
        d.client.client_id: [i for i, n in Counter(d.ids).items() if n > 1]
        for d in devices
        if len(set(d.ids)) != len(d.ids)
    }
    assert not repeated, f"messages that reached a callback twice: {repeated}"


# --- the command line as a user runs it ------------------------------------------------


class Listening(ProcessProtocol):
    """``pigeonpush listen`` running: its stdout lines and stderr lines as they come."""

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def outReceived(self, data: bytes) -> None:
        self.stdout += data

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.ended.callback(None)

    def lines(self) -> list[str]:
        return self.stdout.decode().splitlines()

    def status_lines(self) -> list[str]:
        return self.stderr.decode().splitlines()


async def pigeonpush(reactor: Any, *arguments: str) -> tuple[str, str, int]:
    """Run ``pigeonpush ARGUMENTS`` to its end: (stdout, stderr, exit code)."""
    from twisted.internet.utils import getProcessOutputAndValue

    command = pigeonpush_command()
    running = getProcessOutputAndValue(
        command[0], [*command[1:], *arguments], env=dict(os.environ), reactor=reactor
    )
    running.addTimeout(30, reactor)
    out, err, code = await running
    return out.decode(), err.decode(), code


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_the_walk_through_puts_a_message_on_screen(spawner: Spawner) -> None:
    """Terminal 1 runs the standalone; terminal 2 ``pigeonpush listen``; terminal
    3 ``pigeonpush send`` with the key from terminal 1, then ``pigeonpush status``."""
    from twisted.internet import reactor

    standalone = await spawner.start()
    key = standalone.generated_key()
    assert key is not None, standalone.daemon.report()

    listening = Listening()
    command = pigeonpush_command()
    listen = reactor.spawnProcess(
        listening,
        command[0],
        [*command, "listen", "--reglog", standalone.reglog_url, "--client-id", "demo"],
        env=dict(os.environ),
    )
    try:
        await wait_for(
            lambda: any("authenticated on" in line for line in listening.status_lines()),
            timeout=20,
            what=f"listen to authenticate (stderr: {listening.stderr!r})",
        )
        assert listening.status_lines()[-1] == (
            f"pigeonpush listen: authenticated on {standalone.daemon.address('listen')} "
            "(heartbeat 30s)"
        )

        out, err, code = await pigeonpush(
            reactor,
            "send",
            "--api", standalone.api_url,
            "--key", key,
            "--to", "demo",
            "--title", "Hello",
            "--text", "It works",
        )  # fmt: skip
        assert (code, err) == (0, ""), (out, err)
        message_id = out.strip()
        assert re.fullmatch(r"[0-9A-Z]{26}", message_id), out

        await wait_for(lambda: listening.lines(), timeout=10, what="a line on listen's stdout")
        [line] = listening.lines()
        shown = json.loads(line)
        assert {k: shown[k] for k in ("messageId", "title", "text", "extras")} == {
            "messageId": message_id,
            "title": "Hello",
            "text": "It works",
            "extras": {},
        }

        async def status() -> Any:
            out, err, code = await pigeonpush(
                reactor, "status", "--api", standalone.api_url, "--key", key, message_id
            )
            assert (code, err) == (0, ""), (out, err)
            answer = json.loads(out)
            return answer if answer["acked"] == 1 else None

        answer = await wait_for(status, timeout=20, interval=0.2, what="status to say acked 1")
        assert (answer["messageId"], answer["recipients"], answer["pending"]) == (
            message_id,
            1,
            [],
        )

        # Ctrl-C in terminal 2: listen closes its connection and exits 0.
        listen.signalProcess("INT")
        listening.ended.addTimeout(10, reactor)
        await listening.ended
        assert listening.reason is not None
        assert listening.reason.value.exitCode == 0, listening.stderr
        standalone.check_clean_log()
    finally:
        if listening.reason is None:
            listen.signalProcess("KILL")
            await listening.ended


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_a_fleet_gets_a_batch_once_and_is_kicked_on_sigterm(spawner: Spawner) -> None:
    from twisted.internet import reactor

    standalone = await spawner.start()
    key = standalone.generated_key()
    assert key is not None
    fleet = [
        Device.create(reactor, standalone.reglog_url, f"device-{n:02d}") for n in range(FLEET_SIZE)
    ]
    offline = Device.create(reactor, standalone.reglog_url, "offline-device")
    everyone = [*fleet, offline]
    try:
        await online(reactor, fleet)
        to = [d.client.client_id for d in everyone]
        batch = await send_batch(standalone, key, to, 5)
        await wait_received(fleet, batch)
        check_no_duplicates(fleet)
        # ACKed by every connected device; still pending for the offline one.

        async def only_offline_pending() -> bool:
            for message_id in batch:
                answer = await receipt(standalone, key, message_id)
                if (answer["acked"], answer["pending"]) != (FLEET_SIZE, ["offline-device"]):
                    return False
            return True

        await wait_for(only_offline_pending, timeout=15, interval=0.1, what="fleet ACKs")

        # The offline device connects: its messages come, oldest first.
        await online(reactor, [offline])
        await wait_received([offline], batch)
        assert offline.ids == batch
        await wait_acked(standalone, key, batch, FLEET_SIZE + 1)
        check_no_duplicates(everyone)

        # SIGTERM: every device is KICKed (shutting down), the process exits in time.
        terminated_at = reactor.seconds()
        standalone.daemon.terminate()
        await wait_for(
            lambda: all(d.kicked_for_shutdown() for d in everyone),
            timeout=DRAIN_PERIOD + EXIT_MARGIN,
            what="every device to be KICKed for shutdown",
        )
        code = await standalone.daemon.wait_exit(DRAIN_PERIOD + EXIT_MARGIN)
        assert code in (0, 143, -15), standalone.daemon.report()
        assert reactor.seconds() - terminated_at <= DRAIN_PERIOD + EXIT_MARGIN
        log = standalone.daemon.log()
        assert "Received SIGTERM" in log
        assert f"Draining {FLEET_SIZE + 1} clients over" in log
        standalone.check_clean_log()
        check_no_duplicates(everyone)
        gave_up = [e for d in everyone for e in d.events if isinstance(e, GaveUp)]
        assert not gave_up, gave_up[:3]
    finally:
        await stop_all(reactor, everyone)


async def send_one(standalone: Standalone, key: str, **body: Any) -> str:
    body.setdefault("title", "t")
    body.setdefault("text", "x")
    answer = await standalone.api.post(
        "/v1/notifications", body, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status == 202, answer.json
    return str(answer.json["messageId"])


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_scheduled_cancelled_and_collapsed_on_the_memory_store(spawner: Spawner) -> None:
    from twisted.internet import reactor

    standalone = await spawner.start()
    key = standalone.generated_key()
    assert key is not None
    live = Device.create(reactor, standalone.reglog_url, "live-device")
    late = Device.create(reactor, standalone.reglog_url, "late-device")
    try:
        await online(reactor, [live])
        cancelled = await send_one(standalone, key, to=["live-device"], delay=1)
        answer = await standalone.api.request(
            "DELETE", f"/v1/notifications/{cancelled}", headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status == 200, answer.json
        before = reactor.seconds()
        scheduled = await send_one(standalone, key, to=["live-device"], delay=2)
        after = reactor.seconds()
        stale = await send_one(standalone, key, to=["late-device"], collapseKey="score")
        newest = await send_one(standalone, key, to=["late-device"], collapseKey="score")
        await wait_received([live], [scheduled])
        # Not before its time, and within a second of it.
        assert before + 2 <= reactor.seconds() <= after + 2 + 1.0
        assert live.ids == [scheduled]
        await online(reactor, [late])
        await wait_received([late], [newest])
        await wait_acked(standalone, key, [newest], 1)
        assert late.ids == [newest]
        assert (await receipt(standalone, key, stale))["replaced"] == ["late-device"]
        assert (await receipt(standalone, key, cancelled))["cancelled"] == ["live-device"]
        assert cancelled not in live.ids
    finally:
        await stop_all(reactor, [live, late])


# --- on Redis ----------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    """A plain txredisapi connection to look at what the standalone wrote."""
    import txredisapi

    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    connection = await txredisapi.Connection(host, int(port), reconnect=False, convertNumbers=False)
    yield connection
    await connection.disconnect()


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_on_redis_a_pending_message_survives_a_restart(
    spawner: Spawner, redis_url: str, redis: Any
) -> None:
    from twisted.internet import reactor

    key = "standalone-e2e-key-0123456789"
    ports = spawner.ports()
    options = (f"--redis={redis_url}", f"--api-key={key}")
    first = await spawner.start(*options, ports=ports, name="first")
    assert first.generated_key() is None  # a given key is neither replaced nor logged
    assert key not in first.daemon.log()
    assert "on a Redis store" in first.daemon.log()

    devices = [Device.create(reactor, first.reglog_url, f"redis-{n}") for n in range(5)]
    late = Device.create(reactor, first.reglog_url, "late-device")
    try:
        await online(reactor, devices)
        route = await redis.get("PIGEON:ROUTE:{redis-0}")
        assert route == first.daemon.address("rpc")
        batch = await send_batch(first, key, [d.client.client_id for d in devices], 3)
        await wait_received(devices, batch)
        await wait_acked(first, key, batch, len(devices))
        check_no_duplicates(devices)
        for message_id in batch:
            body = await redis.hgetall(f"PIGEON:MSG_BODY:{{{message_id}}}")
            assert body["title"].startswith("batch "), body
        for device in devices:
            assert not await redis.exists(f"PIGEON:WAIT_ACK:{{{device.client.client_id}}}")

        [for_late] = await send_batch(first, key, ["late-device"], 1)
        assert await redis.smembers("PIGEON:WAIT_ACK:{late-device}") == {for_late}
        await stop_all(reactor, devices)

        # Restart on the same Redis: what was accepted is still there.
        first.daemon.terminate()
        assert await first.daemon.wait_exit(DRAIN_PERIOD + EXIT_MARGIN) in (0, 143, -15)
        first.check_clean_log()
        second = await spawner.start(*options, ports=ports, name="second")
        assert "PIGEON:QUEUE:{0}" in await redis.keys("PIGEON:*")
        await online(reactor, [late])
        await wait_received([late], [for_late])
        assert late.ids == [for_late]
        assert late.received[0].title == "batch 0"
        await wait_acked(second, key, [for_late], 1)
        assert not await redis.exists("PIGEON:WAIT_ACK:{late-device}")
        second.check_clean_log()
    finally:
        await stop_all(reactor, [*devices, late])


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_a_taken_port_ends_the_start(tmp_path: Path) -> None:
    """Rather than running without its route API, the process exits 1 and says why."""
    import socket

    ports = {name: free_port() for name in ("listen", "rpc", "reglog", "api")}
    arguments = [f"--{part}=tcp:{port}:interface=127.0.0.1" for part, port in ports.items()]
    daemon = Daemon("busy", "pigeon-standalone", tuple(arguments), tmp_path, ports)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["reglog"]))
        taken.listen()
        daemon.start()
        try:
            code = await daemon.wait_exit(START_TIMEOUT)
        finally:
            await daemon.stop(STOP_TIMEOUT)
    assert code == 1, daemon.report()
    assert f"Couldn't listen on 127.0.0.1:{ports['reglog']}" in daemon.log(), daemon.report()
    assert STARTED_LINE not in daemon.log()
    await wait_for(daemon.gone, timeout=10, what="the process to be gone")
