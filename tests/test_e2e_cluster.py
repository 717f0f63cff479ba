"""The whole cluster as real processes, against real Redis and ZooKeeper.

Two ``pigeon-server``s, one ``pigeon-reglog``, one ``pigeon-delivery`` and one
``pigeon-notification`` run as ``twistd -n`` subprocesses; a few hundred SDK
``PushClient``s run in the test's reactor and record every callback call and
every event. The scenario:

1. the clients spread over both servers (reglog's balancing), and every
   notification (a batch and a few singles) reaches every client and is ACKed;
2. server A is SIGKILLed while a second wave is being sent: its clients
   reconnect through reglog to B, and every message of the wave reaches every
   client's callback exactly once;
3. B is SIGTERMed: it leaves ZooKeeper, KICKs its clients (shutting down) and
   exits within its drain period; what is sent while no server is up stays
   pending, and reaches every client once a new server C starts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from pigeonpush.discovery.interface import SERVERS
from pigeonpush.discovery.naming import node_path
from pigeonpush.sdk import (
    Authenticated,
    ClientEvent,
    ClientState,
    Disconnected,
    GaveUp,
    Message,
    PushClient,
    full_jitter,
)
from pigeonpush.wire.frames import KickReason
from support.cluster import CLEAN_EXITS, Cluster, Daemon, DaemonExited, ZooKeeperReader
from support.openapi import CheckedClient, OpenAPIDocument
from support.waiting import wait_for

# Starts daemons or many processes: tox runs it in fewer environments.
pytestmark = pytest.mark.slow

DOCUMENT = OpenAPIDocument.load(Path(__file__).parent.parent / "docs/openapi/notification.json")
CLIENTS = 300
#: Room for every client on one server, with a margin for reglog's pending counts.
CAPACITY = CLIENTS + 20
#: The servers' heartbeat: PINGs (and so idle-time pulls) every few seconds.
HEARTBEAT = 5.0
DRAIN_PERIOD = 2.0
#: How much longer than its drain period a stopping server may take to exit
#: (leaving ZooKeeper, closing connections, flushing ACKs, closing the store).
EXIT_MARGIN = 10.0
#: Short, jittered retries, so that failover takes seconds, not minutes.
BACKOFF = full_jitter(initial=0.2, maximum=3.0)


@attrs.define(eq=False)
class Device:
    """One SDK client and what it saw: callback calls in order, and events."""

    received: list[str] = attrs.Factory(list)
    events: list[ClientEvent] = attrs.Factory(list)
    client: PushClient = attrs.field(init=False)

    def on_message(self, message: Message) -> None:
        self.received.append(message.message_id)

    def duplicates(self) -> list[str]:
        return [message_id for message_id, n in Counter(self.received).items() if n > 1]

    def events_since(self, mark: int) -> list[ClientEvent]:
        return self.events[mark:]


@attrs.define(eq=False)
class Fleet:
    devices: list[Device]

    @property
    def client_ids(self) -> list[str]:
        return [device.client.client_id for device in self.devices]

    def on(self, server: Daemon) -> list[Device]:
        address = server.address("client")
        return [
            d
            for d in self.devices
            if d.client.state is ClientState.ONLINE and d.client.server == address
        ]

    def missing(self, message_ids: Sequence[str], devices: Sequence[Device] | None = None) -> int:
        """How many (device, message) pairs have not reached the callback yet."""
        wanted = set(message_ids)
        return sum(len(wanted - set(d.received)) for d in (devices or self.devices))

    async def wait_received(self, message_ids: Sequence[str], timeout: float, what: str) -> None:
        try:
            await wait_for(
                lambda: self.missing(message_ids) == 0, timeout=timeout, interval=0.1, what=what
            )
        except TimeoutError as e:
            short = {
                d.client.client_id: (d.client.state.value, len(set(message_ids) - set(d.received)))
                for d in self.devices
                if not set(message_ids) <= set(d.received)
            }
            raise TimeoutError(
                f"{e}: {self.missing(message_ids)} deliveries missing; "
                f"(state, missing) of some clients: {dict(list(short.items())[:10])}"
            ) from None

    async def wait_online(self, server: Daemon, timeout: float) -> None:
        try:
            await wait_for(
                lambda: len(self.on(server)) == len(self.devices),
                timeout=timeout,
                interval=0.1,
                what=f"every client online on {server.name}",
            )
        except TimeoutError as e:
            elsewhere = Counter((d.client.state.value, d.client.server) for d in self.devices)
            raise TimeoutError(f"{e}: (state, server) of the clients: {elsewhere}") from None

    def check_no_duplicates(self) -> None:
        repeated = {d.client.client_id: d.duplicates() for d in self.devices if d.duplicates()}
        assert not repeated, f"messages that reached a callback twice: {repeated}"

    def check_none_gave_up(self) -> None:
        gave_up = [
            (d.client.client_id, e) for d in self.devices for e in d.events if isinstance(e, GaveUp)
        ]
        assert not gave_up, gave_up[:5]

    async def stop(self) -> None:
        from twisted.internet import reactor

        stopping = gatherResults([d.client.stop() for d in self.devices])
        stopping.addTimeout(20, reactor)
        await stopping


@attrs.define(eq=False)
class Api:
    """The application server's side: the notification API, answers checked
    against docs/openapi/notification.json."""

    http: CheckedClient
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def batch(self, to: list[str], texts: Sequence[str]) -> list[str]:
        body = {"notifications": [{"to": to, "title": "e2e", "text": text} for text in texts]}
        answer = await self.http.post("/v1/notifications/batch", body, headers=self.auth)
        assert answer.status == 200, answer.json
        results = answer.json["results"]
        assert [r.get("recipients") for r in results] == [len(to)] * len(texts), results
        return [str(r["messageId"]) for r in results]

    async def single(self, to: list[str], text: str) -> str:
        body = {"to": to, "title": "e2e", "text": text}
        answer = await self.http.post("/v1/notifications", body, headers=self.auth)
        assert answer.status == 202, answer.json
        return str(answer.json["messageId"])

    async def wave(self, to: list[str], name: str, batched: int, singles: int) -> list[str]:
        """``batched`` notifications in one batch request, then ``singles`` single ones."""
        ids = await self.batch(to, [f"{name} batch {n}" for n in range(batched)])
        for n in range(singles):
            ids.append(await self.single(to, f"{name} single {n}"))
        return ids

    async def receipt(self, message_id: str) -> Any:
        answer = await self.http.get(f"/v1/notifications/{message_id}", headers=self.auth)
        assert answer.status == 200, answer.json
        return answer.json

    async def wait_acked(self, message_ids: Sequence[str], recipients: int, timeout: float) -> None:
        """Until every receipt says ``acked == recipients`` and nothing pending."""
        left = set(message_ids)

        async def all_acked() -> bool:
            for message_id in sorted(left):
                receipt = await self.receipt(message_id)
                assert receipt["recipients"] == recipients, receipt
                if receipt["acked"] == recipients and receipt["pending"] == []:
                    left.discard(message_id)
            return not left

        await wait_for(
            all_acked, timeout=timeout, interval=0.2, what=f"receipts of {len(left)} to say acked"
        )

    async def queue_lag(self) -> int:
        answer = await self.http.get("/health")
        assert answer.status == 200, answer.json
        return int(answer.json["queueLag"])


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path, redis_url: str, zookeeper_hosts: str) -> AsyncIterator[Cluster]:
    from twisted.internet import reactor

    built = Cluster(reactor, tmp_path, redis_url, zookeeper_hosts)
    try:
        yield built
    finally:
        await built.close()


def new_fleet(reglog: Daemon) -> Fleet:
    from twisted.internet import reactor

    devices = []
    for n in range(CLIENTS):
        device = Device()
        device.client = PushClient(
            reactor,
            reglog.url("http"),
            device.on_message,
            client_id=f"device-{n:03d}",
            backoff=BACKOFF,
        )
        device.client.on_event(device.events.append)
        devices.append(device)
    return Fleet(devices)


@pytest.mark.timeout(240)
@pytest_twisted.ensureDeferred
async def test_crash_drain_and_restart_lose_and_duplicate_nothing(
    cluster: Cluster, zookeeper_hosts: str
) -> None:
    from twisted.internet import reactor

    # --- the cluster, started all at once --------------------------------------------
    delivery = cluster.delivery()
    notification = cluster.notification()
    reglog = cluster.reglog(heartbeat=HEARTBEAT)

    def start_server(name: str) -> Daemon:
        return cluster.server(
            name, drain_period=DRAIN_PERIOD, heartbeat=HEARTBEAT, capacity=CAPACITY
        )

    a, b = start_server("push-a"), start_server("push-b")
    api = Api(CheckedClient(reactor, notification.url("http"), DOCUMENT), cluster.api_key)
    zookeeper = ZooKeeperReader(reactor, zookeeper_hosts)
    fleet: Fleet | None = None

    async def queue_empty() -> bool:
        return await api.queue_lag() == 0

    try:
        with cluster.logs_on_failure():
            await zookeeper.start()
            await cluster.wait_healthy(delivery, "metrics")
            await cluster.wait_healthy(notification)
            for server in (a, b):
                await cluster.wait_server_ready(server, delivery)
            await cluster.wait_reglog_servers(reglog, 2)

            # --- 1. clients spread over both servers; a first wave for everyone ------
            fleet = new_fleet(reglog)
            everyone = fleet.client_ids
            for device in fleet.devices:
                device.client.start()
            online = gatherResults([d.client.when_authenticated() for d in fleet.devices])
            online.addTimeout(60, reactor)
            await online
            on_a, on_b = fleet.on(a), fleet.on(b)
            assert len(on_a) + len(on_b) == CLIENTS
            # reglog draws each server with odds proportional to its free room:
            # about half each; a quarter is far outside chance.
            assert min(len(on_a), len(on_b)) >= CLIENTS // 4, (len(on_a), len(on_b))

            first = await api.wave(everyone, "first", batched=10, singles=2)
            await fleet.wait_received(first, timeout=60, what="the first wave")
            await api.wait_acked(first, CLIENTS, timeout=30)
            fleet.check_no_duplicates()

            # --- 2. SIGKILL A while the second wave is being sent --------------------
            moved = {d.client.client_id for d in on_a}
            stayed = [d for d in fleet.devices if d.client.client_id not in moved]
            marks = {d.client.client_id: len(d.events) for d in fleet.devices}
            second: list[str] = []
            for round_number in range(8):
                sent = await api.wave(everyone, f"second {round_number}", batched=2, singles=1)
                second.extend(sent)
                if round_number == 2:
                    a.kill()
                    await a.wait_exit(10)
                # The next round goes out once the clients that stayed on B got
                # this one: the wave keeps flowing while A's clients move over.
                await wait_for(
                    lambda sent=sent: fleet.missing(sent, stayed) == 0,
                    timeout=30,
                    interval=0.05,
                    what=f"round {round_number} to reach the clients on B",
                )
            await fleet.wait_received(second, timeout=90, what="the second wave")
            fleet.check_no_duplicates()
            await api.wait_acked(second, CLIENTS, timeout=30)
            await fleet.wait_online(b, timeout=30)
            for device in fleet.devices:
                events = device.events_since(marks[device.client.client_id])
                if device.client.client_id in moved:
                    lost = [
                        n
                        for n, e in enumerate(events)
                        if isinstance(e, Disconnected) and e.server == a.address("client")
                    ]
                    assert lost, (device.client.client_id, events)
                    assert any(
                        isinstance(e, Authenticated) and e.server == b.address("client")
                        for e in events[lost[0] :]
                    ), (device.client.client_id, events)
                else:
                    assert not [e for e in events if isinstance(e, Disconnected)], events

            # --- 3. SIGTERM B: a graceful drain ---------------------------------------
            marks = {d.client.client_id: len(d.events) for d in fleet.devices}
            kicked: Deferred[None] = Deferred()

            def first_kick(event: ClientEvent) -> None:
                if (
                    isinstance(event, Disconnected)
                    and KickReason.SHUTTING_DOWN.name in event.reason
                    and not kicked.called
                ):
                    kicked.callback(None)

            for device in fleet.devices:
                device.client.on_event(first_kick)
            b_node = node_path(SERVERS, "push-b")
            assert await zookeeper.exists(b_node)
            terminated_at = reactor.seconds()
            b.terminate()
            kicked.addTimeout(DRAIN_PERIOD + EXIT_MARGIN, reactor)
            await kicked
            assert not await zookeeper.exists(b_node), "B kicked a client before leaving ZooKeeper"
            code = await b.wait_exit(DRAIN_PERIOD + EXIT_MARGIN)
            took = reactor.seconds() - terminated_at
            assert code in CLEAN_EXITS, (code, b.report())
            assert took <= DRAIN_PERIOD + EXIT_MARGIN
            assert "Push server push-b stopped" in b.log()

            def shutdown_kicks(device: Device) -> list[ClientEvent]:
                return [
                    e
                    for e in device.events_since(marks[device.client.client_id])
                    if isinstance(e, Disconnected)
                    and e.server == b.address("client")
                    and KickReason.SHUTTING_DOWN.name in e.reason
                ]

            # B wrote its last KICKs just before it exited: let them be read.
            await wait_for(
                lambda: all(shutdown_kicks(d) for d in fleet.devices),
                timeout=10,
                what="every client to read its KICK",
            )
            for device in fleet.devices:
                events = device.events_since(marks[device.client.client_id])
                assert len(shutdown_kicks(device)) == 1, (device.client.client_id, events)
                assert not [e for e in events if isinstance(e, Authenticated)], events

            # --- no server at all: what is sent now stays pending ---------------------
            await cluster.wait_reglog_servers(reglog, 0, timeout=20)
            third = await api.wave(everyone, "third", batched=3, singles=1)
            await wait_for(queue_empty, timeout=20, what="delivery to take the third wave")
            for message_id in third:
                receipt = await api.receipt(message_id)
                assert (sorted(receipt["pending"]), receipt["acked"]) == (everyone, 0), receipt
            assert fleet.missing(third) == CLIENTS * len(third)
            assert not [d for d in fleet.devices if d.client.state is ClientState.ONLINE]

            # --- a new server C: everyone comes back and gets what was pending ---------
            c = start_server("push-c")
            await cluster.wait_server_ready(c, delivery)
            await fleet.wait_received(third, timeout=90, what="the third wave, through C")
            await api.wait_acked(third, CLIENTS, timeout=30)
            await fleet.wait_online(c, timeout=30)
            fleet.check_no_duplicates()
            fleet.check_none_gave_up()
            every = set(first) | set(second) | set(third)
            assert all(set(d.received) == every for d in fleet.devices)

            await fleet.stop()
            assert {d.client.state for d in fleet.devices} == {ClientState.STOPPED}
            codes = await cluster.stop(["push-c", "reglog", "delivery", "notification"])
            assert all(code in CLEAN_EXITS for code in codes.values()), codes
            for daemon in cluster.started:
                assert "Traceback" not in daemon.log(), daemon.report()
    finally:
        if fleet is not None:
            await fleet.stop()
        await api.http.close()
        await zookeeper.close()


@pytest_twisted.ensureDeferred
async def test_a_daemon_that_cannot_start_fails_the_wait_with_its_output(
    cluster: Cluster,
) -> None:
    server = cluster.server("broken", capacity=0)
    with pytest.raises(DaemonExited) as raised:
        await cluster.wait_server_ready(server)
    # twistd's status on a usage error depends on the Twisted release (1 on
    # the latest, 0 on 25.5.0); either way the daemon is gone, the reason quoted.
    status = server.returncode
    assert status in (0, 1)
    assert "--capacity must be at least 1, not 0" in str(raised.value)
    assert f"broken (pigeon-server, exited with {status})" in str(raised.value)
    assert await cluster.stop() == {"broken": status}
    assert server.gone()
