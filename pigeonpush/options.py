"""Checks shared by the twistd plugins' Options: each refuses a bad value with a
``usage.UsageError`` that names the option, at parse time, before anything
listens or connects."""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from pigeonpush.discovery.naming import check_node_id as _check_node_id
from pigeonpush.discovery.spec import parse_spec
from pigeonpush.rpcpool import PeerAddress, parse_peer_address
from pigeonpush.store.address import parse_redis_url
from pigeonpush.tls import ClientTLS

MEMORY_STORE_URLS = ("memory:", "memory://")


#: ``--zookeeper-timeout``, for every daemon with ``--zookeeper``.
ZOOKEEPER_TIMEOUT_OPTION = [
    "zookeeper-timeout",
    None,
    "10",
    "ZooKeeper session timeout in seconds: how long this process's node outlives "
    "the process if it dies (ZooKeeper keeps it within 2 to 20 of its ticks).",
]


def zookeeper_timeout(text: Any) -> float:
    """``--zookeeper-timeout``: a positive number of seconds."""
    return seconds("--zookeeper-timeout", text)


def check_endpoint(option: str, description: str) -> None:
    """A server endpoint string (``tcp:7100``, ``ssl:...``, ``unix:...``).
    Parsing only builds the endpoint object: nothing listens."""
    try:
        serverFromString(MemoryReactor(), description)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(
            f"{option} must be a server endpoint such as tcp:7100, not {description!r} ({e})"
        ) from None


def check_store_url(option: str, url: str) -> None:
    """``memory:`` or a ``redis://`` / ``rediss://`` URL."""
    if url in MEMORY_STORE_URLS:
        return
    try:
        parse_redis_url(url)
    except ValueError as e:
        raise usage.UsageError(f"{option}: {e}") from None


def check_store_timeout(option: str, url: str, *, shorter_than: float, what: str) -> None:
    """A Redis URL's call timeout (``?timeout=``) is shorter than ``what``
    (``shorter_than`` seconds), the timeout that wraps store calls: else the
    outer one fires first and a stopped Redis looks like a timeout rather
    than an unavailable store. Call after ``check_store_url``."""
    if url in MEMORY_STORE_URLS:
        return
    timeout = parse_redis_url(url).timeout
    if timeout >= shorter_than:
        raise usage.UsageError(
            f"{option}: the store timeout ({timeout:g} s, ?timeout=) must be shorter than "
            f"{what} ({shorter_than:g} s)"
        )


def check_discovery_spec(option: str, spec: str) -> None:
    """A ZooKeeper hosts string or a ``static:`` spec."""
    try:
        parse_spec(spec)
    except ValueError as e:
        raise usage.UsageError(f"{option}: {e}") from None


def check_address(option: str, address: str) -> PeerAddress:
    """``host:port`` (or ``tls:host:port``) as published for others to connect to."""
    try:
        return parse_peer_address(address)
    except ValueError:
        raise usage.UsageError(
            f"{option} must be host:port, not {address!r} (tls:host:port when it speaks TLS)"
        ) from None


#: ``--rpc-ca-file``, for every daemon that calls push servers or delivery over AMP.
RPC_CA_FILE_OPTION = [
    "rpc-ca-file",
    None,
    None,
    "PEM file of the authorities whose certificates tls: RPC addresses must present "
    "[default: the system's].",
]


def client_tls(option: str, ca_file: str | None) -> ClientTLS:
    """The verification settings of a ``--*-ca-file`` option: its authorities,
    or the system's when it is not given; the file is read now."""
    try:
        return ClientTLS.from_options(ca_file, option=option)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def check_node_id(option: str, node_id: str) -> None:
    try:
        _check_node_id(node_id)
    except ValueError as e:
        raise usage.UsageError(f"{option}: {e}") from None


def seconds(option: str, text: Any, *, allow_zero: bool = False) -> float:
    """A finite number of seconds, positive (or zero when allowed)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise usage.UsageError(f"{option} must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        what = "zero or a positive" if allow_zero else "a positive"
        raise usage.UsageError(f"{option} must be {what} number of seconds, not {text!r}")
    return value


def whole(option: str, text: Any, *, minimum: int = 1) -> int:
    """A whole number of at least ``minimum``."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise usage.UsageError(f"{option} must be a whole number, not {text!r}") from None
    if value < minimum:
        raise usage.UsageError(f"{option} must be at least {minimum}, not {value}")
    return value
