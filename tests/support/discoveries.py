"""Discovery fixtures: both backends, a recording watch callback, session expiry.

``discoveries`` is parametrized over the backends for the shared contract: an
``owner`` that registers nodes and an ``observer`` that watches them. With
ZooKeeper they are two instances (two sessions, as two processes would be);
with the static backend they are one instance, whose in-process registry is
what the other parts of a standalone process see.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread

from pigeonpush.discovery.interface import Discovery, Node
from pigeonpush.discovery.static import StaticDiscovery
from pigeonpush.discovery.zookeeper import ZooKeeperDiscovery
from support.waiting import wait_for

#: Short enough to keep tests fast, long enough to tell coalesced writes apart.
TEST_UPDATE_INTERVAL = 0.3
#: ZooKeeper's fixture accepts 1 s and more; this also bounds every kazoo call.
TEST_SESSION_TIMEOUT = 4.0


@attrs.define
class Recorder:
    """A watch callback that keeps every set it got, and the thread it ran on."""

    sets: list[Mapping[str, Node]] = attrs.field(factory=list)
    threads: list[threading.Thread] = attrs.field(factory=list)

    def __call__(self, live: Mapping[str, Node]) -> None:
        self.sets.append(live)
        self.threads.append(threading.current_thread())

    @property
    def latest(self) -> Mapping[str, Node]:
        assert self.sets, "the watch never called back"
        return self.sets[-1]

    def data_seen(self, node_id: str) -> list[Mapping[str, Any] | None]:
        """The node's data in each set, consecutive repeats collapsed (None: absent)."""
        seen: list[Mapping[str, Any] | None] = []
        for live in self.sets:
            node = live.get(node_id)
            data = None if node is None else node.data
            if not seen or seen[-1] != data:
                seen.append(data)
        return seen

    async def wait_for_data(
        self, node_id: str, data: Mapping[str, Any], timeout: float = 10.0
    ) -> None:
        def arrived() -> bool:
            node = self.sets[-1].get(node_id) if self.sets else None
            return node is not None and node.data == data

        await wait_for(arrived, timeout=timeout, what=f"{node_id} with {data} in the live set")

    async def wait_for_absence(self, node_id: str, timeout: float = 10.0) -> None:
        await wait_for(
            lambda: bool(self.sets) and node_id not in self.sets[-1],
            timeout=timeout,
            what=f"{node_id} gone from the live set",
        )


@attrs.define
class Discoveries:
    backend: str
    owner: Discovery
    observer: Discovery


def non_pool_threads() -> set[threading.Thread]:
    """Live threads, except the reactor's thread pool (which outlives a test)."""
    return {
        thread
        for thread in threading.enumerate()
        if thread.is_alive() and not thread.name.startswith("PoolThread-")
    }


async def wait_for_threads_gone(before: set[threading.Thread], timeout: float = 10.0) -> None:
    """Wait until no thread started after ``before`` was taken is left."""

    def gone() -> bool:
        return not (non_pool_threads() - before)

    try:
        await wait_for(gone, timeout=timeout, what="kazoo threads to end")
    except TimeoutError:
        left = sorted(thread.name for thread in non_pool_threads() - before)
        raise AssertionError(f"threads left running: {left}") from None


async def expire_session(discovery: ZooKeeperDiscovery) -> None:
    """Make ZooKeeper expire ``discovery``'s session, as a long partition would.

    A second client attaches to the same session (id and password) and closes
    it: the server ends the session and removes its ephemeral nodes at once,
    and the first client learns on its next reconnection that its session
    expired (kazoo's LOST).
    """
    from kazoo.client import KazooClient

    session = discovery._zk.client_id
    assert session is not None, "the discovery is not connected"
    intruder = KazooClient(hosts=discovery.hosts, client_id=session, timeout=TEST_SESSION_TIMEOUT)
    await deferToThread(intruder.start, 30)
    try:
        assert intruder.client_id is not None and intruder.client_id[0] == session[0]
    finally:
        await deferToThread(intruder.stop)
        intruder.close()


async def read_znode(hosts: str, path: str) -> tuple[bytes, Any] | None:
    """``(data, stat)`` of a znode, read by a client of its own (as an operator
    would), or None if it does not exist."""
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoNodeError

    client = KazooClient(hosts=hosts)
    await deferToThread(client.start, 30)
    try:
        try:
            data, stat = await deferToThread(client.get, path)
        except NoNodeError:
            return None
        return data, stat
    finally:
        await deferToThread(client.stop)
        client.close()


@pytest_twisted.async_yield_fixture
async def make_zookeeper_discovery(
    zookeeper_hosts: str,
) -> AsyncIterator[Callable[..., ZooKeeperDiscovery]]:
    """Makes ZooKeeperDiscovery instances on the test's chroot; all are closed after
    the test, and no kazoo thread may outlive them."""
    from twisted.internet import reactor

    before = non_pool_threads()
    made: list[ZooKeeperDiscovery] = []

    def make(**options: Any) -> ZooKeeperDiscovery:
        options.setdefault("min_update_interval", TEST_UPDATE_INTERVAL)
        options.setdefault("session_timeout", TEST_SESSION_TIMEOUT)
        discovery = ZooKeeperDiscovery(options.pop("hosts", zookeeper_hosts), reactor, **options)
        made.append(discovery)
        return discovery

    yield make
    await DeferredList([discovery.close() for discovery in made], consumeErrors=True)
    await wait_for_threads_gone(before)


@pytest_twisted.async_yield_fixture
async def make_static_discovery() -> AsyncIterator[Callable[..., StaticDiscovery]]:
    """Makes StaticDiscovery instances on the real reactor; closed after the test."""
    from twisted.internet import reactor

    made: list[StaticDiscovery] = []

    def make(**options: Any) -> StaticDiscovery:
        options.setdefault("min_update_interval", TEST_UPDATE_INTERVAL)
        discovery = StaticDiscovery(clock=reactor, **options)
        made.append(discovery)
        return discovery

    yield make
    for discovery in made:
        await discovery.close()


@pytest.fixture(params=["static", "zookeeper"])
def discoveries(request: pytest.FixtureRequest) -> Discoveries:
    """An owner and an observer on one backend (see the module docstring)."""
    if request.param == "static":
        make_static = request.getfixturevalue("make_static_discovery")
        shared = make_static()
        return Discoveries("static", shared, shared)
    make_zookeeper = request.getfixturevalue("make_zookeeper_discovery")
    return Discoveries("zookeeper", make_zookeeper(), make_zookeeper())
