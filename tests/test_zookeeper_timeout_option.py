"""``--zookeeper-timeout`` of every daemon that uses ZooKeeper: checked when the
options are parsed, and handed to the discovery backend."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from twisted.application.service import IServiceCollection
from twisted.python import usage

from pigeonpush.delivery import tap as delivery_tap
from pigeonpush.discovery import DiscoveryService
from pigeonpush.discovery.zookeeper import ZooKeeperDiscovery
from pigeonpush.reglog import tap as reglog_tap
from pigeonpush.server import tap as server_tap

TAPS = [server_tap, reglog_tap, delivery_tap]


def _discovery(service: Any) -> ZooKeeperDiscovery:
    for child in service:
        # reglog and delivery run a DiscoveryService; the push server owns its own.
        discovery = getattr(child, "discovery", None)
        if isinstance(child, DiscoveryService) or discovery is not None:
            assert isinstance(discovery, ZooKeeperDiscovery)
            return discovery
        if IServiceCollection.providedBy(child):
            try:
                return _discovery(child)
            except LookupError:
                continue
    raise LookupError("no discovery service in the tree")


@pytest.mark.parametrize("tap", TAPS, ids=lambda tap: tap.__name__.split(".")[1])
def test_the_timeout_reaches_the_zookeeper_backend(tap: ModuleType) -> None:
    from twisted.internet import reactor

    options = tap.Options()
    options.parseOptions(["--zookeeper", "127.0.0.1:1", "--zookeeper-timeout", "4.5"])
    default = tap.Options()
    default.parseOptions(["--zookeeper", "127.0.0.1:1"])

    assert _discovery(tap.makeService(options, reactor)).session_timeout == 4.5
    assert _discovery(tap.makeService(default, reactor)).session_timeout == 10.0


@pytest.mark.parametrize("tap", TAPS, ids=lambda tap: tap.__name__.split(".")[1])
@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan", "inf"])
def test_a_bad_timeout_is_refused_by_name(tap: ModuleType, value: str) -> None:
    with pytest.raises(usage.UsageError, match="--zookeeper-timeout must be a"):
        tap.Options().parseOptions(["--zookeeper-timeout", value])
