"""Discovery specs: the one string that says where discovery lives.

``host[:port][,host[:port]...][/chroot]``
    ZooKeeper (the port defaults to 2181), e.g. ``zk1:2181,zk2:2181/pigeon``.
``static:``
    no ZooKeeper: the in-process registry only (``pigeon-standalone``).
``static:servers=ID@CLIENT|RPC[|CAPACITY],...;delivery=ID@RPC,...``
    the same, plus fixed nodes, e.g.
    ``static:servers=node1@10.0.0.5:7100|10.0.0.5:7101;delivery=d1@10.0.0.6:7201``.

Addresses are ``host:port`` (``[v6-address]:port`` for IPv6), and
``tls:host:port`` for a port that speaks TLS, as ``pigeonpush.hostport`` reads them.
A fixed push server publishes ``connections`` 0 and its ``capacity``
(STATIC_DEFAULT_CAPACITY unless given), so reglog can weigh it like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from pigeonpush.discovery.interface import DELIVERY, SERVERS, Node
from pigeonpush.discovery.naming import check_kind, check_node_id
from pigeonpush.hostport import parse_host_port, parse_peer_address

STATIC_PREFIX = "static:"
DEFAULT_ZOOKEEPER_PORT = 2181
#: The capacity a fixed push server declares unless its entry gives one.
STATIC_DEFAULT_CAPACITY = 10_000

ZOOKEEPER_FORMAT = "host[:port][,host[:port]...][/chroot]"


@attrs.frozen(slots=True)
class ZooKeeperSpec:
    """A kazoo hosts string, checked."""

    hosts: str


@attrs.frozen(slots=True)
class StaticSpec:
    """Fixed nodes per kind (possibly none)."""

    nodes: Mapping[str, tuple[Node, ...]] = attrs.field(factory=dict)


def parse_spec(spec: str) -> ZooKeeperSpec | StaticSpec:
    """What ``spec`` names; ValueError saying what is wrong with it."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(
            f"discovery spec is empty: give ZooKeeper hosts ({ZOOKEEPER_FORMAT}) or 'static:'"
        )
    if spec.startswith(STATIC_PREFIX):
        return StaticSpec(_parse_static(spec[len(STATIC_PREFIX) :]))
    if spec == "static":
        raise ValueError("discovery spec 'static' needs its colon: 'static:'")
    return ZooKeeperSpec(check_zookeeper_hosts(spec))


def check_zookeeper_hosts(hosts: str) -> str:
    """``hosts`` if it is a kazoo hosts string, else ValueError."""
    if not isinstance(hosts, str) or not hosts:
        raise ValueError(f"ZooKeeper hosts must be {ZOOKEEPER_FORMAT}, not {hosts!r}")
    if "://" in hosts:
        raise ValueError(
            f"discovery spec {hosts!r} looks like a URL: give ZooKeeper hosts "
            f"({ZOOKEEPER_FORMAT}) or 'static:...'"
        )
    servers, slash, chroot = hosts.partition("/")
    if slash:
        components = chroot.split("/")
        if any(part in ("", ".", "..") for part in components):
            raise ValueError(f"bad chroot '/{chroot}' in ZooKeeper hosts {hosts!r}")
    for server in servers.split(","):
        try:
            parse_host_port(server, default_port=DEFAULT_ZOOKEEPER_PORT)
        except ValueError as e:
            raise ValueError(
                f"bad ZooKeeper host {server!r} in {hosts!r} ({e}); expected {ZOOKEEPER_FORMAT}"
            ) from None
    return hosts


def _parse_static(body: str) -> dict[str, tuple[Node, ...]]:
    nodes: dict[str, tuple[Node, ...]] = {}
    if not body:
        return nodes
    for section in body.split(";"):
        kind, equals, entries = section.partition("=")
        if not equals or not entries:
            raise ValueError(f"static spec part {section!r} is not KIND=NODE[,NODE...]")
        check_kind(kind)
        if kind in nodes:
            raise ValueError(f"static spec lists {kind} twice")
        parsed: dict[str, Node] = {}
        for entry in entries.split(","):
            node = _parse_entry(kind, entry)
            if node.node_id in parsed:
                raise ValueError(f"static spec lists {kind} node {node.node_id!r} twice")
            parsed[node.node_id] = node
        nodes[kind] = tuple(parsed.values())
    return nodes


def _parse_entry(kind: str, entry: str) -> Node:
    expected = {
        SERVERS: "ID@[tls:]CLIENT-HOST:PORT|[tls:]RPC-HOST:PORT[|CAPACITY]",
        DELIVERY: "ID@[tls:]RPC-HOST:PORT",
    }[kind]
    node_id, at, addresses = entry.partition("@")
    if not at:
        raise ValueError(f"static {kind} entry {entry!r} is not {expected}")
    check_node_id(node_id)
    fields = addresses.split("|")
    try:
        data: dict[str, Any]
        if kind == SERVERS and len(fields) in (2, 3):
            parse_peer_address(fields[0])
            parse_peer_address(fields[1])
            capacity = STATIC_DEFAULT_CAPACITY
            if len(fields) == 3:
                if not (fields[2].isascii() and fields[2].isdigit()) or int(fields[2]) == 0:
                    raise ValueError(f"capacity {fields[2]!r} is not a positive integer")
                capacity = int(fields[2])
            data = {"client": fields[0], "rpc": fields[1], "connections": 0, "capacity": capacity}
        elif kind == DELIVERY and len(fields) == 1:
            parse_peer_address(fields[0])
            data = {"rpc": fields[0]}
        else:
            raise ValueError(f"expected {expected}")
    except ValueError as e:
        raise ValueError(f"static {kind} entry {entry!r}: {e}") from None
    return Node(kind, node_id, data)
