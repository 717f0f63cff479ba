"""Fixtures shared by the whole suite: real servers and the failure check.

The reactor is imported lazily (pytest-twisted installs it first).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_twisted

from support.logcheck import FailureCollector, collect_all_garbage, collect_garbage
from support.rawredis import Raw, raw_redis
from support.servers import RedisCluster, RedisServer, ZooKeeperServer

# Fixture modules of the subsystems (store backends, discovery backends).
pytest_plugins = ["support.stores", "support.discoveries"]


@pytest.fixture(autouse=True)
def logged_failures() -> Iterator[FailureCollector]:
    """Fail any test during which an unhandled Failure was logged."""
    collector = FailureCollector()
    collector.start()
    try:
        yield collector
        collect_garbage()
    finally:
        collector.stop()
    if collector.events:
        pytest.fail("unhandled failures were logged:\n" + collector.report())


@pytest.fixture(scope="module", autouse=True)
def late_logged_failures() -> Iterator[None]:
    """Fail a module during which a Deferred that outlived an earlier test was
    dropped with an unhandled error (reported at its last test's teardown)."""
    yield
    collector = FailureCollector()
    collector.start()
    try:
        collect_all_garbage()
    finally:
        collector.stop()
    if collector.events:
        pytest.fail(
            "unhandled failures were logged by objects that outlived their test:\n"
            + collector.report()
        )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One throwaway redis-server for the session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server.url


@pytest_twisted.async_yield_fixture
async def raw(redis_url: str) -> AsyncIterator[Raw]:
    """The test's Redis, seen from outside the store."""
    async with raw_redis(redis_url) as connection:
        yield connection


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One throwaway Redis Cluster for the session: 3 masters, 3 replicas."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """The session's Redis Cluster, every master emptied for this test (and
    the cluster healthy again after a test that failed a master over)."""
    redis_cluster.wait_ok()
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(scope="session")
def zookeeper_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ZooKeeperServer]:
    """One throwaway standalone ZooKeeper for the session."""
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def zookeeper_hosts(zookeeper_server: ZooKeeperServer) -> Iterator[str]:
    """A kazoo hosts string chrooted to a fresh node, so tests never see each other."""
    from kazoo.client import KazooClient

    chroot = f"/test-{uuid.uuid4().hex}"
    client = KazooClient(hosts=zookeeper_server.hosts)
    client.start(timeout=30)
    try:
        client.create(chroot)
    finally:
        client.stop()
        client.close()
    yield zookeeper_server.hosts + chroot
