"""The ZooKeeper backend against the real server: znode layout, session loss,
nodes of other sessions, an unreachable ensemble, clean stop."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
import pytest_twisted
from kazoo.client import KazooClient
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from pigeonpush.discovery.interface import DELIVERY, SERVERS, DiscoveryClosed
from pigeonpush.discovery.service import DiscoveryService
from pigeonpush.discovery.zookeeper import ZooKeeperDiscovery
from support.discoveries import (
    Recorder,
    expire_session,
    non_pool_threads,
    read_znode,
    wait_for_threads_gone,
)
from support.servers import ZooKeeperServer, free_port
from support.waiting import wait_for

MakeDiscovery = Callable[..., ZooKeeperDiscovery]
SERVER_DATA = {
    "client": "127.0.0.1:7100",
    "rpc": "127.0.0.1:7101",
    "connections": 0,
    "capacity": 10,
}


def load(connections: int) -> dict[str, object]:
    return {**SERVER_DATA, "connections": connections}


@pytest.fixture
def log_messages() -> Iterator[list[str]]:
    """The text of every event logged during the test."""
    messages: list[str] = []

    def observe(event: LogEvent) -> None:
        messages.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield messages
    finally:
        globalLogPublisher.removeObserver(observe)


async def write_raw(hosts: str, path: str, data: bytes) -> None:
    """Create or overwrite a persistent znode, as another program would."""
    client = KazooClient(hosts=hosts)
    await deferToThread(client.start, 30)
    try:
        if await deferToThread(client.exists, path):
            await deferToThread(client.set, path, data)
        else:
            await deferToThread(client.create, path, data, makepath=True)
    finally:
        await deferToThread(client.stop)
        client.close()


@pytest_twisted.ensureDeferred
async def test_nodes_are_ephemeral_json_znodes_under_the_chroot(
    make_zookeeper_discovery: MakeDiscovery,
    zookeeper_server: ZooKeeperServer,
    zookeeper_hosts: str,
) -> None:
    discovery = make_zookeeper_discovery()
    await discovery.register(SERVERS, "s1", SERVER_DATA)
    await discovery.register(DELIVERY, "d1", {"rpc": "127.0.0.1:7201"})

    chroot = zookeeper_hosts[len(zookeeper_server.hosts) :]
    found = await read_znode(zookeeper_server.hosts, f"{chroot}/pigeonpush/servers/s1")
    assert found is not None
    data, stat = found
    assert json.loads(data) == SERVER_DATA
    assert stat.ephemeralOwner == discovery._zk.client_id[0]
    delivery = await read_znode(zookeeper_hosts, "/pigeonpush/delivery/d1")
    assert delivery is not None
    assert json.loads(delivery[0]) == {"rpc": "127.0.0.1:7201"}


@pytest_twisted.ensureDeferred
async def test_coalesced_updates_make_one_znode_write(
    make_zookeeper_discovery: MakeDiscovery, zookeeper_hosts: str
) -> None:
    owner, observer = make_zookeeper_discovery(), make_zookeeper_discovery()
    recorder = Recorder()
    await observer.watch(SERVERS, recorder)
    registration = await owner.register(SERVERS, "s1", load(0))
    for connections in range(1, 11):
        registration.update(load(connections))
    await recorder.wait_for_data("s1", load(10))

    found = await read_znode(zookeeper_hosts, "/pigeonpush/servers/s1")
    assert found is not None
    assert found[1].version == 1  # created, then set once


@pytest_twisted.ensureDeferred
async def test_a_node_disappears_when_its_owner_closes(
    make_zookeeper_discovery: MakeDiscovery, zookeeper_hosts: str
) -> None:
    owner, observer = make_zookeeper_discovery(), make_zookeeper_discovery()
    recorder = Recorder()
    await observer.watch(SERVERS, recorder)
    await owner.register(SERVERS, "s1", SERVER_DATA)
    await owner.register(DELIVERY, "d1", {"rpc": "127.0.0.1:7201"})
    await recorder.wait_for_data("s1", SERVER_DATA)

    await owner.close()

    await recorder.wait_for_absence("s1")
    assert await read_znode(zookeeper_hosts, "/pigeonpush/delivery/d1") is None


def _reactor() -> object:
    from twisted.internet import reactor

    return reactor


@pytest_twisted.ensureDeferred
async def test_a_departed_node_leaves_no_watch_behind(
    make_zookeeper_discovery: MakeDiscovery,
) -> None:
    """A node that never comes back (a restart under a new id) must not leave a
    watch (and its reconnection work) in the watcher for ever."""
    owner, observer = make_zookeeper_discovery(), make_zookeeper_discovery()
    recorder = Recorder()
    await observer.watch(SERVERS, recorder)
    baseline = len(observer._zk.state_listeners)
    registrations = [await owner.register(SERVERS, f"s{i}", SERVER_DATA) for i in range(3)]
    await recorder.wait_for_data("s2", SERVER_DATA)
    # Each node's data watch is made on a kazoo thread: s2's data can arrive first.
    await wait_for(
        lambda: len(observer._zk.state_listeners) == baseline + 3, what="three data watches"
    )

    for registration in registrations:
        await registration.unregister()

    await wait_for(lambda: recorder.latest == {}, what="every node gone")
    assert len(observer._zk.state_listeners) == baseline


@pytest_twisted.ensureDeferred
async def test_close_leaves_no_kazoo_thread(zookeeper_hosts: str) -> None:
    before = non_pool_threads()
    discovery = ZooKeeperDiscovery(zookeeper_hosts, _reactor())  # type: ignore[arg-type]
    await discovery.register(SERVERS, "s1", SERVER_DATA)
    await discovery.watch(SERVERS, Recorder())
    await discovery.watch(DELIVERY, Recorder())
    assert non_pool_threads() - before, "kazoo runs threads while connected"

    await discovery.close()

    await wait_for_threads_gone(before)


@pytest_twisted.ensureDeferred
async def test_a_node_registers_again_after_its_session_expired(
    make_zookeeper_discovery: MakeDiscovery, zookeeper_hosts: str
) -> None:
    owner, observer = make_zookeeper_discovery(), make_zookeeper_discovery()
    recorder, own_view = Recorder(), Recorder()
    await observer.watch(SERVERS, recorder)
    await owner.watch(SERVERS, own_view)
    registration = await owner.register(SERVERS, "s1", load(1))
    await owner.register(DELIVERY, "d1", {"rpc": "127.0.0.1:7201"})
    await recorder.wait_for_data("s1", load(1))
    old_session = owner._zk.client_id[0]

    await expire_session(owner)
    registration.update(load(2))  # while the session is being lost: the latest wins

    def owned_by_a_new_session(path: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            found = await read_znode(zookeeper_hosts, path)
            return found is not None and found[1].ephemeralOwner not in (0, old_session)

        return check

    # d1 had no update since: only the re-registration brings it back.
    for path in ("/pigeonpush/servers/s1", "/pigeonpush/delivery/d1"):
        await wait_for(owned_by_a_new_session(path), timeout=20, what=f"{path} in a new session")
    await recorder.wait_for_data("s1", load(2))

    # The owner's writes and its own watch keep working in the new session.
    registration.update(load(3))
    await recorder.wait_for_data("s1", load(3))
    await make_zookeeper_discovery().register(SERVERS, "s2", SERVER_DATA)
    await own_view.wait_for_data("s2", SERVER_DATA)
    await own_view.wait_for_data("s1", load(3))


@pytest_twisted.ensureDeferred
async def test_a_watch_keeps_working_after_the_watchers_session_expired(
    make_zookeeper_discovery: MakeDiscovery,
) -> None:
    owner, observer = make_zookeeper_discovery(), make_zookeeper_discovery()
    recorder = Recorder()
    await observer.watch(SERVERS, recorder)
    registration = await owner.register(SERVERS, "s1", load(1))
    await recorder.wait_for_data("s1", load(1))

    await expire_session(observer)
    registration.update(load(2))
    await owner.register(SERVERS, "s2", SERVER_DATA)

    await recorder.wait_for_data("s1", load(2), timeout=20)
    await recorder.wait_for_data("s2", SERVER_DATA, timeout=20)


@pytest_twisted.ensureDeferred
async def test_a_node_left_by_another_session_is_replaced(
    make_zookeeper_discovery: MakeDiscovery, zookeeper_hosts: str, log_messages: list[str]
) -> None:
    """A restart under the same node id wins over the old session's node, and
    the old owner's stop leaves the new node alone."""
    old, new, observer = (make_zookeeper_discovery() for _ in range(3))
    recorder = Recorder()
    await observer.watch(SERVERS, recorder)
    await old.register(SERVERS, "s1", load(1))
    await recorder.wait_for_data("s1", load(1))

    await new.register(SERVERS, "s1", load(2))

    await recorder.wait_for_data("s1", load(2))
    assert any("Replaced /pigeonpush/servers/s1" in message for message in log_messages)
    await old.close()
    found = await read_znode(zookeeper_hosts, "/pigeonpush/servers/s1")
    assert found is not None
    assert found[1].ephemeralOwner == new._zk.client_id[0]
    assert recorder.latest["s1"].data == load(2)


@pytest_twisted.ensureDeferred
async def test_nodes_with_data_that_is_not_a_json_object_are_ignored(
    make_zookeeper_discovery: MakeDiscovery, zookeeper_hosts: str, log_messages: list[str]
) -> None:
    observer = make_zookeeper_discovery()
    await write_raw(zookeeper_hosts, "/pigeonpush/servers/garbage", b"\xff not json")
    await write_raw(zookeeper_hosts, "/pigeonpush/servers/listed", b"[1, 2]")
    await write_raw(zookeeper_hosts, "/pigeonpush/servers/good", b'{"rpc": "h:1"}')
    recorder = Recorder()

    await observer.watch(SERVERS, recorder)

    assert set(recorder.latest) == {"good"}
    assert any("Ignoring /pigeonpush/servers/garbage" in message for message in log_messages)
    assert any("not an object" in message for message in log_messages)
    # Fixed by its writer, it becomes live.
    await write_raw(zookeeper_hosts, "/pigeonpush/servers/garbage", b'{"rpc": "h:2"}')
    await recorder.wait_for_data("garbage", {"rpc": "h:2"})


@pytest_twisted.ensureDeferred
async def test_a_chroot_that_does_not_exist_yet_is_created(
    make_zookeeper_discovery: MakeDiscovery, zookeeper_server: ZooKeeperServer
) -> None:
    hosts = f"{zookeeper_server.hosts}/fresh-{uuid.uuid4().hex}/pigeon"
    discovery = make_zookeeper_discovery(hosts=hosts)
    recorder = Recorder()
    await discovery.watch(SERVERS, recorder)
    await discovery.register(SERVERS, "s1", SERVER_DATA)
    await recorder.wait_for_data("s1", SERVER_DATA)
    assert await read_znode(hosts, "/pigeonpush/servers/s1") is not None


@pytest_twisted.ensureDeferred
async def test_an_unreachable_ensemble_is_waited_for_and_close_ends_the_wait(
    log_messages: list[str],
) -> None:
    before = non_pool_threads()
    hosts = f"127.0.0.1:{free_port()}"
    discovery = ZooKeeperDiscovery(hosts, _reactor(), session_timeout=1.0)  # type: ignore[arg-type]
    registering = discovery.register(SERVERS, "s1", SERVER_DATA)
    watching = discovery.watch(SERVERS, Recorder())

    await wait_for(
        lambda: any(f"Still connecting to ZooKeeper at {hosts}" in m for m in log_messages),
        timeout=10,
        what="the still-connecting warning",
    )
    assert not registering.called and not watching.called

    await discovery.close()

    with pytest.raises(DiscoveryClosed):
        await registering
    with pytest.raises(DiscoveryClosed):
        await watching
    await wait_for_threads_gone(before)


@pytest_twisted.ensureDeferred
async def test_the_service_connects_on_start_and_closes_on_stop(zookeeper_hosts: str) -> None:
    before = non_pool_threads()
    discovery = ZooKeeperDiscovery(zookeeper_hosts, _reactor())  # type: ignore[arg-type]
    service = DiscoveryService(discovery)
    service.startService()
    await discovery.start()
    assert discovery._zk.connected
    await discovery.register(SERVERS, "s1", SERVER_DATA)

    stopping: Deferred[None] = service.stopService()
    await stopping

    assert await read_znode(zookeeper_hosts, "/pigeonpush/servers/s1") is None
    await wait_for_threads_gone(before)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_update_interval": -1}, "min_update_interval"),
        ({"session_timeout": 0}, "session_timeout"),
    ],
)
def test_bad_options_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ZooKeeperDiscovery("127.0.0.1:2181", _reactor(), **options)  # type: ignore[arg-type]


def test_bad_hosts_are_refused() -> None:
    with pytest.raises(ValueError, match="bad ZooKeeper host"):
        ZooKeeperDiscovery("zk1:notaport", _reactor())  # type: ignore[arg-type]


def test_a_reactor_without_threads_is_refused() -> None:
    from twisted.internet.task import Clock

    with pytest.raises(TypeError, match="needs a reactor with threads"):
        ZooKeeperDiscovery("127.0.0.1:2181", Clock())
