"""Discovery specs (``--zookeeper``), ``open_discovery`` and ``DiscoveryService``."""

from __future__ import annotations

import re
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from pigeonpush.discovery import DiscoveryService, open_discovery
from pigeonpush.discovery.interface import DELIVERY, SERVERS, DiscoveryClosed, Node
from pigeonpush.discovery.spec import (
    STATIC_DEFAULT_CAPACITY,
    StaticSpec,
    ZooKeeperSpec,
    parse_spec,
)
from pigeonpush.discovery.static import StaticDiscovery
from pigeonpush.discovery.zookeeper import ZooKeeperDiscovery
from support.discoveries import Recorder, non_pool_threads
from support.logcheck import FailureCollector


def test_static_nodes_may_speak_tls() -> None:
    spec = parse_spec(
        "static:servers=n1@tls:push.example:7100|tls:10.0.0.1:7101;delivery=d1@tls:[::1]:7201"
    )
    assert isinstance(spec, StaticSpec)
    (server,) = spec.nodes[SERVERS]
    assert server.data["client"] == "tls:push.example:7100"
    assert server.data["rpc"] == "tls:10.0.0.1:7101"
    assert spec.nodes[DELIVERY][0].data == {"rpc": "tls:[::1]:7201"}


@pytest.mark.parametrize(
    "hosts",
    [
        "127.0.0.1:2181",
        "zk1",
        "zk1:2181,zk2:2182,zk3",
        "zk1:2181,zk2:2181/pigeon",
        "zk1:2181/a/b_c-d",
        "[::1]:2181,[fe80::1]:2181",
    ],
)
def test_zookeeper_hosts_are_taken_as_they_are(hosts: str) -> None:
    assert parse_spec(hosts) == ZooKeeperSpec(hosts)


def test_static_without_nodes() -> None:
    assert parse_spec("static:") == StaticSpec({})


def test_static_with_fixed_nodes() -> None:
    spec = parse_spec(
        "static:servers=n1@10.0.0.1:7100|10.0.0.1:7101,n2@[::1]:7100|[::1]:7101|500;"
        "delivery=d1@10.0.0.3:7201"
    )
    assert spec == StaticSpec(
        {
            SERVERS: (
                Node(
                    SERVERS,
                    "n1",
                    {
                        "client": "10.0.0.1:7100",
                        "rpc": "10.0.0.1:7101",
                        "connections": 0,
                        "capacity": STATIC_DEFAULT_CAPACITY,
                    },
                ),
                Node(
                    SERVERS,
                    "n2",
                    {
                        "client": "[::1]:7100",
                        "rpc": "[::1]:7101",
                        "connections": 0,
                        "capacity": 500,
                    },
                ),
            ),
            DELIVERY: (Node(DELIVERY, "d1", {"rpc": "10.0.0.3:7201"}),),
        }
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "discovery spec is empty"),
        ("static", "needs its colon"),
        ("redis://localhost:6379/0", "looks like a URL"),
        ("zk1:21810000", "out of range"),
        ("zk1:0", "out of range"),
        ("zk1:port", "bad ZooKeeper host 'zk1:port'"),
        ("zk1,,zk2", "bad ZooKeeper host ''"),
        ("zk1 :2181", "bad ZooKeeper host"),
        ("zk1:2181/", "bad chroot '/'"),
        ("zk1:2181/a//b", "bad chroot"),
        ("zk1:2181/a/../b", "bad chroot"),
        ("static:servers", "is not KIND=NODE"),
        ("static:servers=", "is not KIND=NODE"),
        ("static:clients=c1@h:1", "unknown node kind 'clients'"),
        ("static:servers=n1@h:1|h:2;servers=n2@h:1|h:2", "lists servers twice"),
        ("static:servers=n1@h:1|h:2,n1@h:3|h:4", "lists servers node 'n1' twice"),
        ("static:servers=h:1|h:2", "is not ID@[tls:]CLIENT-HOST:PORT|[tls:]RPC-HOST:PORT"),
        ("static:servers=n1@h:1", "expected ID@[tls:]CLIENT-HOST:PORT|[tls:]RPC-HOST:PORT"),
        ("static:servers=n1@h:1|h:2|0", "capacity '0' is not a positive integer"),
        ("static:servers=n1@h:1|h:2|many", "capacity 'many'"),
        ("static:servers=n1@h|h:2", "'h' is not host:port"),
        ("static:servers=n1@ssl:h:1|h:2", "TLS as tls:host:port"),
        ("static:servers=@h:1|h:2", "node id must be a non-empty string"),
        ("static:delivery=d1@h:1|h:2", "expected ID@[tls:]RPC-HOST:PORT"),
        ("static:delivery=d1@h:99999", "has no valid port"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_spec(spec)


def test_open_discovery_builds_the_static_backend() -> None:
    clock = Clock()
    discovery = open_discovery("static:delivery=d1@10.0.0.3:7201", clock, min_update_interval=2)
    assert isinstance(discovery, StaticDiscovery)
    recorder = Recorder()
    discovery.watch(DELIVERY, recorder)
    clock.advance(0)
    assert recorder.latest == {"d1": Node(DELIVERY, "d1", {"rpc": "10.0.0.3:7201"})}


@pytest_twisted.ensureDeferred
async def test_open_discovery_builds_the_zookeeper_backend_without_connecting() -> None:
    from twisted.internet import reactor

    before = non_pool_threads()
    discovery = open_discovery("127.0.0.1:1,127.0.0.1:2/chroot", reactor, session_timeout=3)
    assert isinstance(discovery, ZooKeeperDiscovery)
    assert discovery.hosts == "127.0.0.1:1,127.0.0.1:2/chroot"
    assert non_pool_threads() == before  # nothing runs before start
    await discovery.close()
    assert non_pool_threads() == before


def test_open_discovery_refuses_a_bad_spec() -> None:
    with pytest.raises(ValueError, match="looks like a URL"):
        open_discovery("zk://zk1:2181", Clock())


@pytest_twisted.ensureDeferred
async def test_the_service_starts_and_closes_the_discovery() -> None:
    from twisted.internet import reactor

    discovery = StaticDiscovery(clock=reactor)
    service = DiscoveryService(discovery)
    service.startService()
    assert service.running
    await discovery.register(SERVERS, "s1", {})

    await service.stopService()

    assert not service.running
    with pytest.raises(DiscoveryClosed):
        await discovery.start()


class _Unstartable:
    """A discovery whose start fails: what the service does with the failure."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.closed = False

    def start(self) -> Deferred[None]:
        return fail(self.error)

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the service called {name}")


def test_the_service_logs_a_failed_start(logged_failures: FailureCollector) -> None:
    service = DiscoveryService(_Unstartable(RuntimeError("no route")))  # type: ignore[arg-type]
    service.startService()
    assert [failure.getErrorMessage() for failure in logged_failures.flush(RuntimeError)] == [
        "no route"
    ]


def test_the_service_is_quiet_when_closed_before_it_started(
    logged_failures: FailureCollector,
) -> None:
    discovery = _Unstartable(DiscoveryClosed("closed"))
    service = DiscoveryService(discovery)  # type: ignore[arg-type]
    service.startService()
    assert logged_failures.flush() == []
    service.stopService()
    assert discovery.closed
