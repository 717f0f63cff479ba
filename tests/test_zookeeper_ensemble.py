"""Discovery on a 3-node ZooKeeper ensemble: a follower or the leader crashes,
quorum is lost for a while. Sessions outlive what an ensemble is built to
survive, so nobody notices: registrations stay, watchers' lists never lose a
node, and writes go on once a quorum serves.

The ensemble is shared by the module; each test starts with every node up
(a node a previous test killed is started again) and works in a chroot of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from kazoo.client import KazooClient
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread

from pigeonpush.discovery.interface import DELIVERY, SERVERS
from pigeonpush.discovery.naming import node_path
from pigeonpush.discovery.zookeeper import ZooKeeperDiscovery
from pigeonpush.sdk import ClientEvent, ClientState, Disconnected, PushClient, full_jitter
from support.cluster import Cluster, ZooKeeperReader
from support.discoveries import (
    TEST_UPDATE_INTERVAL,
    Recorder,
    non_pool_threads,
    read_znode,
    wait_for_threads_gone,
)
from support.openapi import CheckedClient, OpenAPIDocument
from support.waiting import wait_for
from support.zookeeper_ensemble import EnsembleNode, ZooKeeperEnsemble, running_ensemble

#: Real daemons or processes: run where slow tests run (docs/development.rst).
pytestmark = pytest.mark.slow

#: Longer than a leader election on this loaded machine, so sessions outlive it.
SESSION_TIMEOUT = 10.0
#: Bound on a new leader being elected and serving.
ELECTION_TIMEOUT = 30.0
SERVER_DATA = {"client": "127.0.0.1:7100", "rpc": "127.0.0.1:7101", "capacity": 10}

#: What a daemon logs when its ZooKeeper connection drops (kazoo's SUSPENDED).
LOST_LINE = "lost; reconnecting"
#: What it logs when that connection is back (same session, or a new one).
BACK_LINES = ("Reconnected to ZooKeeper", "New ZooKeeper session")
NOTIFICATION_API = OpenAPIDocument.load(
    Path(__file__).parent.parent / "docs/openapi/notification.json"
)

MakeDiscovery = Callable[..., ZooKeeperDiscovery]


def reconnected(log: str) -> bool:
    """Every lost ZooKeeper connection in a daemon's log was followed by its
    return (kazoo reports no second loss while it is still reconnecting)."""
    return log.count(LOST_LINE) == sum(log.count(line) for line in BACK_LINES)


def load(connections: int) -> dict[str, object]:
    return {**SERVER_DATA, "connections": connections}


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperEnsemble]:
    with running_ensemble(tmp_path_factory.mktemp("ensemble")) as started:
        yield started


@pytest_twisted.async_yield_fixture
async def ensemble_hosts(ensemble: ZooKeeperEnsemble) -> AsyncIterator[str]:
    """The ensemble's connection string, chrooted to a fresh node, every node up."""
    await deferToThread(ensemble.start)
    chroot = f"/test-{uuid.uuid4().hex}"
    client = KazooClient(hosts=ensemble.hosts)
    await deferToThread(client.start, 30)
    try:
        await deferToThread(client.create, chroot)
    finally:
        await deferToThread(client.stop)
        client.close()
    yield ensemble.hosts + chroot


@pytest_twisted.async_yield_fixture
async def make_discovery(ensemble_hosts: str) -> AsyncIterator[MakeDiscovery]:
    from twisted.internet import reactor

    before = non_pool_threads()
    made: list[ZooKeeperDiscovery] = []

    def make() -> ZooKeeperDiscovery:
        discovery = ZooKeeperDiscovery(
            ensemble_hosts,
            reactor,
            min_update_interval=TEST_UPDATE_INTERVAL,
            session_timeout=SESSION_TIMEOUT,
        )
        made.append(discovery)
        return discovery

    yield make
    await DeferredList([discovery.close() for discovery in made], consumeErrors=True)
    await wait_for_threads_gone(before)


def session_of(discovery: ZooKeeperDiscovery) -> int:
    session = discovery._zk.client_id
    assert session is not None, "not connected"
    return int(session[0])


async def owner_of(hosts: str, path: str) -> int | None:
    found = await read_znode(hosts, path)
    return None if found is None else int(found[1].ephemeralOwner)


async def node_of(ensemble: ZooKeeperEnsemble, session: int) -> EnsembleNode | None:
    for node in ensemble.nodes:
        if await deferToThread(node.serves_session, session):
            return node
    return None


async def wait_new_leader(ensemble: ZooKeeperEnsemble, old: EnsembleNode) -> EnsembleNode:
    async def elected() -> Any:
        leader = await deferToThread(ensemble.leader)
        return leader is not None and leader is not old and leader

    leader: EnsembleNode = await wait_for(
        elected, timeout=ELECTION_TIMEOUT, interval=0.2, what="a new leader"
    )
    return leader


async def registered_pair(
    make_discovery: MakeDiscovery,
) -> tuple[ZooKeeperDiscovery, Any, Recorder]:
    """An owner with servers/s1 and delivery/d1, and an observer watching servers."""
    owner, observer = make_discovery(), make_discovery()
    recorder = Recorder()
    await observer.watch(SERVERS, recorder)
    registration = await owner.register(SERVERS, "s1", load(0))
    await owner.register(DELIVERY, "d1", {"rpc": "127.0.0.1:7201"})
    await recorder.wait_for_data("s1", load(0))
    return owner, registration, recorder


def assert_never_left(recorder: Recorder, node_id: str) -> None:
    """From its first appearance on, ``node_id`` was in every set the watch got."""
    seen = recorder.data_seen(node_id)
    assert None not in seen[1:], f"{node_id} left the watched list: {seen}"


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_a_crashed_follower_goes_unnoticed(
    ensemble: ZooKeeperEnsemble, ensemble_hosts: str, make_discovery: MakeDiscovery
) -> None:
    owner, registration, recorder = await registered_pair(make_discovery)
    session = session_of(owner)
    # The follower the owner is connected to, when it is on one: the hardest case.
    followers = await deferToThread(ensemble.followers)
    serving = await node_of(ensemble, session)
    victim = serving if serving in followers else followers[0]

    await deferToThread(victim.kill)

    registration.update(load(1))
    await recorder.wait_for_data("s1", load(1), timeout=SESSION_TIMEOUT * 2)
    assert session_of(owner) == session
    assert await owner_of(ensemble_hosts, "/pigeonpush/servers/s1") == session
    assert await owner_of(ensemble_hosts, "/pigeonpush/delivery/d1") == session
    assert_never_left(recorder, "s1")
    assert (await deferToThread(ensemble.leader)) is not None


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_a_crashed_leader_keeps_every_session_and_node(
    ensemble: ZooKeeperEnsemble, ensemble_hosts: str, make_discovery: MakeDiscovery
) -> None:
    owner, registration, recorder = await registered_pair(make_discovery)
    session = session_of(owner)
    leader = await deferToThread(ensemble.leader)
    assert leader is not None

    await deferToThread(leader.kill)
    await wait_new_leader(ensemble, leader)

    registration.update(load(2))
    await recorder.wait_for_data("s1", load(2), timeout=SESSION_TIMEOUT * 2)
    assert session_of(owner) == session
    assert await owner_of(ensemble_hosts, "/pigeonpush/servers/s1") == session
    assert await owner_of(ensemble_hosts, "/pigeonpush/delivery/d1") == session
    assert_never_left(recorder, "s1")


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_registrations_outlive_a_lost_quorum(
    ensemble: ZooKeeperEnsemble, ensemble_hosts: str, make_discovery: MakeDiscovery
) -> None:
    """2 of 3 down for longer than the session timeout: nothing serves, so no
    session can expire; when quorum is back the same sessions carry on."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    owner, registration, recorder = await registered_pair(make_discovery)
    session = session_of(owner)
    down = ensemble.nodes[:2]
    for node in down:
        await deferToThread(node.kill)

    async def not_serving() -> bool:
        return await deferToThread(ensemble.nodes[2].mode) is None

    await wait_for(not_serving, timeout=ELECTION_TIMEOUT, interval=0.2, what="quorum lost")
    registration.update(load(3))  # written once quorum is back
    # An outage past the session timeout: the timeout only runs on a serving ensemble.
    await deferLater(reactor, SESSION_TIMEOUT + 2, lambda: None)
    assert recorder.data_seen("s1")[-1] == load(0)

    for node in down:
        ensemble.start_node(node)
    await deferToThread(ensemble.wait_serving, ensemble.nodes, ELECTION_TIMEOUT)

    await recorder.wait_for_data("s1", load(3), timeout=SESSION_TIMEOUT * 2)
    assert session_of(owner) == session
    assert await owner_of(ensemble_hosts, "/pigeonpush/servers/s1") == session
    assert_never_left(recorder, "s1")


def test_the_connection_string_names_every_node(tmp_path: Path) -> None:
    ensemble = ZooKeeperEnsemble(tmp_path)
    addresses = ensemble.hosts.split(",")
    assert len(addresses) == 3
    assert addresses == [f"127.0.0.1:{node.client_port}" for node in ensemble.nodes]


# --- the daemons on the ensemble ---------------------------------------------------


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path, redis_url: str, ensemble_hosts: str) -> AsyncIterator[Cluster]:
    from twisted.internet import reactor

    built = Cluster(reactor, tmp_path, redis_url, ensemble_hosts)
    try:
        yield built
    finally:
        await built.close()


async def notify(api: CheckedClient, key: str, client_id: str, text: str) -> str:
    body = {"to": [client_id], "title": "ensemble", "text": text}
    answer = await api.post("/v1/notifications", body, headers={"Authorization": f"Bearer {key}"})
    assert answer.status == 202, answer.json
    return str(answer.json["messageId"])


@pytest.mark.timeout(150)
@pytest_twisted.ensureDeferred
async def test_daemons_serve_connected_devices_through_a_lost_quorum(
    ensemble: ZooKeeperEnsemble, ensemble_hosts: str, cluster: Cluster
) -> None:
    """The leader crashes: reglog's list never loses the push server. Then a
    second node: with 2 of 3 ZooKeeper nodes down the push server keeps its
    devices and delivers what is pushed meanwhile (Redis is up), reglog keeps
    its list; when quorum returns the registrations are there and new devices
    are routed."""
    from twisted.internet import reactor

    delivery = cluster.delivery()
    notification = cluster.notification()
    reglog = cluster.reglog()
    server = cluster.server("push-a")
    api = CheckedClient(reactor, notification.url("http"), NOTIFICATION_API)
    zookeeper = ZooKeeperReader(reactor, ensemble_hosts)
    received: list[str] = []
    events: list[ClientEvent] = []
    device = PushClient(
        reactor,
        reglog.url("http"),
        lambda message: received.append(message.message_id),
        client_id="device-1",
        backoff=full_jitter(initial=0.2, maximum=2.0),
    )
    device.on_event(events.append)
    late: PushClient | None = None
    try:
        with cluster.logs_on_failure():
            await zookeeper.start()
            await cluster.wait_healthy(delivery, "metrics")
            await cluster.wait_healthy(notification)
            await cluster.wait_server_ready(server, delivery)
            await cluster.wait_reglog_servers(reglog, 1)
            device.start()
            await device.when_authenticated().addTimeout(20, reactor)
            before = await notify(api, cluster.api_key, "device-1", "before")
            await wait_for(lambda: before in received, timeout=20, what="the first message")

            # --- the leader crashes: reglog's list never changes --------------------------
            mark = len(events)
            counted: list[object] = []

            async def reglog_servers() -> object:
                health = await cluster.health(reglog, "http")
                return None if health is None else health[1].get("servers")

            leader = await deferToThread(ensemble.leader)
            assert leader is not None
            await deferToThread(leader.kill)

            async def elected_while_counting() -> bool:
                counted.append(await reglog_servers())
                found = await deferToThread(ensemble.leader)
                return found is not None and found is not leader

            await wait_for(
                elected_while_counting, timeout=ELECTION_TIMEOUT, interval=0.1, what="new leader"
            )
            during = await notify(api, cluster.api_key, "device-1", "after the election")
            await wait_for(lambda: during in received, timeout=20, what="the message after it")
            counted.append(await reglog_servers())
            assert set(counted) == {1}, counted

            # --- a second node down: quorum lost ------------------------------------------
            # If the push server was on the crashed leader, it is back first:
            # a loss while it is still reconnecting would not be a new one.
            await wait_for(
                lambda: reconnected(server.log()),
                timeout=ELECTION_TIMEOUT,
                what="the push server back on ZooKeeper",
            )
            losses = server.log().count(LOST_LINE)
            survivors = [node for node in ensemble.nodes if node.running]
            await deferToThread(survivors[0].kill)
            last = survivors[1]

            async def not_serving() -> bool:
                return await deferToThread(last.mode) is None

            # The last node gives up leading after syncLimit ticks without followers.
            await wait_for(not_serving, timeout=ELECTION_TIMEOUT, interval=0.2, what="no quorum")
            await wait_for(
                lambda: server.log().count(LOST_LINE) > losses,
                # kazoo notices a silent ensemble by its ping timeout; a loaded
                # machine (two test environments at once) can take a while.
                timeout=45,
                interval=0.1,
                what="the push server to lose ZooKeeper",
            )
            meanwhile = await notify(api, cluster.api_key, "device-1", "meanwhile")
            await wait_for(
                lambda: meanwhile in received, timeout=20, what="the message sent meanwhile"
            )
            health = await cluster.health(reglog, "http")
            assert health is not None and health[1]["servers"] == 1, health
            assert device.state is ClientState.ONLINE
            assert not [e for e in events[mark:] if isinstance(e, Disconnected)], events[mark:]

            # --- quorum back ------------------------------------------------------------
            for node in ensemble.nodes:
                if not node.running:
                    ensemble.start_node(node)
            await deferToThread(ensemble.wait_serving, ensemble.nodes, ELECTION_TIMEOUT)
            assert await zookeeper.exists(node_path(SERVERS, "push-a"))
            await cluster.wait_reglog_servers(reglog, 1, timeout=20)
            late = PushClient(
                reactor, reglog.url("http"), lambda message: None, client_id="device-2"
            )
            late.start()
            await late.when_authenticated().addTimeout(20, reactor)
            after = await notify(api, cluster.api_key, "device-1", "after")
            await wait_for(lambda: after in received, timeout=20, what="the message after")
            assert received == [before, during, meanwhile, after]
    finally:
        stops = [device.stop()] + ([late.stop()] if late is not None else [])
        await DeferredList(stops, consumeErrors=True)
        await api.close()
        await zookeeper.close()


@pytest.mark.parametrize("plugin", ["server", "reglog", "delivery"])
def test_every_daemon_takes_the_ensemble_connection_string(plugin: str) -> None:
    from pigeonpush.delivery import tap as delivery_tap
    from pigeonpush.reglog import tap as reglog_tap
    from pigeonpush.server import tap as server_tap

    taps = {"server": server_tap, "reglog": reglog_tap, "delivery": delivery_tap}
    hosts = "zk1:2181,zk2:2182,[::1]:2183/pigeon"
    config = taps[plugin].Options()
    config.parseOptions(["--redis=redis://127.0.0.1:6379/0", f"--zookeeper={hosts}"])
    assert config["zookeeper"] == hosts
