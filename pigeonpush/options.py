"""Checks shared by the twistd plugins' Options: each refuses a bad value with a
``usage.UsageError`` that names the option, at parse time, before anything
listens or connects.

``DaemonOptions`` is the base of every plugin's Options: under twistd a bad
value ends the process with one line on stderr and exit status 1 (not
twistd's full usage text), and ``--log-format`` picks the log's format.
"""

from __future__ import annotations

import math
import re
import resource
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from pigeonpush.discovery.naming import check_node_id as _check_node_id
from pigeonpush.discovery.spec import parse_spec
from pigeonpush.hostport import PeerAddress, parse_peer_address
from pigeonpush.http import DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT
from pigeonpush.logformat import LOG_FORMATS, install_log_format
from pigeonpush.store.address import parse_store_address
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


class DaemonOptions(usage.Options):
    """What every plugin's Options share: ``--log-format``, and one-line
    errors under twistd.

    As a twistd subcommand (``parent`` set), a ``UsageError`` becomes
    ``SystemExit("<plugin>: <problem>")``: Python prints that one line on
    stderr and exits 1. Parsed on its own (tests, or as a part of
    pigeon-standalone) it raises ``UsageError`` as usual.
    """

    optParameters: list[list[Any]] = [
        [
            "log-format",
            None,
            "text",
            "text (twistd's lines) or json (one JSON object per line: time, level, "
            "namespace, text, fields).",
        ],
    ]

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
            if self["log-format"] not in LOG_FORMATS:
                raise usage.UsageError(
                    f"--log-format must be text or json, not {self['log-format']!r}"
                )
        except usage.UsageError as e:
            if self.parent is None:
                raise
            raise SystemExit(f"{self.parent.subCommand}: {e}") from None
        if self.parent is not None:
            install_log_format(self["log-format"], self.parent)


#: ``--max-connections`` and ``--request-timeout``, for every HTTP API listener.
HTTP_LIMIT_OPTIONS: list[list[Any]] = [
    [
        "max-connections",
        None,
        str(DEFAULT_MAX_CONNECTIONS),
        "HTTP connections open at once; more are closed as soon as accepted.",
    ],
    [
        "request-timeout",
        None,
        f"{DEFAULT_REQUEST_TIMEOUT:g}",
        "Seconds a client has to send a whole request, headers and body (then 408).",
    ],
]


def check_http_limits(options: usage.Options) -> None:
    """Parse ``--max-connections`` and ``--request-timeout`` in place."""
    options["max-connections"] = whole("--max-connections", options["max-connections"])
    options["request-timeout"] = seconds("--request-timeout", options["request-timeout"])


#: Listen backlog of device listeners when the endpoint gives none: room for a
#: reconnect storm (the kernel's cap, net.core.somaxconn, is 4096 by default).
#: Twisted's default of 50 overflowed in a 5,000-connection burst.
DEVICE_BACKLOG = 4096
_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")


def with_backlog(description: str, backlog: int = DEVICE_BACKLOG) -> str:
    """``description`` with ``:backlog=<backlog>`` added, unless it sets one or
    its endpoint type takes none (only tcp, tcp6, ssl and unix do)."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in _BACKLOG_TYPES or re.search(r"(?:^|:)\s*backlog=", description):
        return description
    return f"{description}:backlog={backlog}"


#: Descriptors a push server keeps for itself at the least, whatever
#: ``--capacity`` says (Redis, ZooKeeper, RPC, HTTP, log files).
MIN_FD_RESERVE = 64


def open_files_limit() -> int | None:
    """The process's soft ``RLIMIT_NOFILE``, or None when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def capacity_for(limit: int | None) -> int:
    """Default ``--capacity`` under an open-files limit: the limit less a
    reserve of ``min(max(1000, limit // 20), limit // 4)`` descriptors for
    Redis, ZooKeeper, RPC and HTTP sockets (19000 at 20000, 768 at 1024,
    62260 at 65536); 100000 when unlimited."""
    if limit is None:
        return 100_000
    reserve = min(max(1000, limit // 20), limit // 4)
    return max(1, limit - reserve)


def check_capacity(option: str, capacity: int, limit: int | None) -> None:
    """Refuse a capacity the open-files limit cannot hold."""
    if limit is not None and capacity > limit - MIN_FD_RESERVE:
        raise usage.UsageError(
            f"{option} {capacity} is over what the open-files limit allows: the limit "
            f"(ulimit -n) is {limit}, so at most {max(0, limit - MIN_FD_RESERVE)}; "
            f"raise the limit or lower {option}"
        )


class _ParseOnly:
    """The reactor handed to ``serverFromString`` when only parsing: an
    endpoint keeps it until it listens, which this one never does."""


def check_endpoint(option: str, description: str) -> None:
    """A server endpoint string (``tcp:7100``, ``ssl:...``, ``unix:...``).
    Parsing only builds the endpoint object: nothing listens."""
    try:
        serverFromString(_ParseOnly(), description)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(
            f"{option} must be a server endpoint such as tcp:7100, not {description!r} ({e})"
        ) from None


def check_store_url(option: str, url: str) -> None:
    """``memory:``, a ``redis://`` / ``rediss://`` URL or a Redis Cluster's
    ``redis+cluster://`` / ``rediss+cluster://``."""
    if url in MEMORY_STORE_URLS:
        return
    try:
        parse_store_address(url)
    except ValueError as e:
        raise usage.UsageError(f"{option}: {e}") from None


def check_store_timeout(option: str, url: str, *, shorter_than: float, what: str) -> None:
    """A Redis URL's call timeout (``?timeout=``) is shorter than ``what``
    (``shorter_than`` seconds), the timeout that wraps store calls: else the
    outer one fires first and a stopped Redis looks like a timeout rather
    than an unavailable store. Call after ``check_store_url``."""
    if url in MEMORY_STORE_URLS:
        return
    timeout = parse_store_address(url).timeout
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
