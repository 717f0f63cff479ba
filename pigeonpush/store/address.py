"""Store URLs: ``memory:``, ``redis[s]://[[user]:password@]host[:port][/db]``
or, for a Redis Cluster, ``redis[s]+cluster://[[user]:password@]host:port[,host:port...]``
(seed nodes; the rest is learnt from CLUSTER SLOTS), with ``?timeout=SECONDS``,
(TLS) ``?ssl_ca_certs=PATH`` and (one Redis only, a prototype) ``?direct_streams=1``."""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from pigeonpush.hostport import check_host, format_host_port

DEFAULT_REDIS_PORT = 6379
#: Seconds a store call waits for Redis (connecting included) before it fails
#: with StoreError. Well below what wraps store calls (the push server's auth
#: timeout, 10 s; HTTP clients' patience), so that a stopped Redis is
#: answered as such (AUTH_FAIL UNAVAILABLE, 503) rather than as a timeout.
DEFAULT_TIMEOUT = 3.0
#: Query parameters a Redis URL may carry.
_QUERY_OPTIONS = ("direct_streams", "queue_shards", "ssl_ca_certs", "timeout")
#: Most queue shards a URL may ask for (each is a stream, read in turn).
MAX_QUEUE_SHARDS = 256
_FORMS = (
    "memory: or redis://[:password@]host:port/db (rediss:// for TLS; "
    "redis+cluster://[:password@]host:port[,host:port...] for a Redis Cluster)"
)
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


@attrs.frozen(slots=True)
class RedisAddress:
    """Where Redis is and how to log in. The password never shows in repr or logs."""

    host: str
    port: int = DEFAULT_REDIS_PORT
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    tls: bool = False
    #: PEM file of the authorities to trust for TLS (default: the system's)
    ca_certs: str | None = None
    #: seconds a call waits for Redis (``?timeout=``)
    timeout: float = DEFAULT_TIMEOUT
    #: streams the queue is sharded over (``?queue_shards=``; None: the
    #: store's default, 1 on one Redis and 8 on a cluster). Every daemon
    #: sharing the store must use the same URL, hence the same count.
    queue_shards: int | None = None
    #: unicasts to online devices go to their push server's own stream
    #: (``?direct_streams=1``, docs/delivery.rst "Direct streams"); every
    #: daemon sharing the store must use the same URL
    direct_streams: bool = False

    def __str__(self) -> str:
        """The URL without credentials, for logs and error messages."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{format_host_port(self.host, self.port)}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """A RedisAddress, or ValueError saying what is wrong with ``url``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad store URL {_redacted(url)!r}: {e}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"bad store URL {_redacted(url)!r}: expected {_FORMS}")
    if not parts.hostname:
        raise ValueError(f"bad store URL {_redacted(url)!r}: no host")
    try:
        check_host(parts.hostname)
    except ValueError as e:
        raise ValueError(f"bad store URL {_redacted(url)!r}: {e}") from None
    if parts.fragment:
        raise ValueError(f"bad store URL {_redacted(url)!r}: unexpected #{parts.fragment}")
    if port == 0:
        raise ValueError(f"bad store URL {_redacted(url)!r}: port 0 is not a Redis port")
    if parts.username and parts.password is None:
        raise ValueError(
            f"bad store URL {_redacted(url)!r}: a user name needs a password (user:password@)"
        )
    path = parts.path.strip("/")
    if not path:
        db = 0
    elif path.isdigit() and path.isascii():
        db = int(path)
    else:
        raise ValueError(
            f"bad store URL {_redacted(url)!r}: the path must be a database number, "
            f"not {parts.path!r}"
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    unknown = sorted(set(options) - set(_QUERY_OPTIONS))
    if unknown:
        raise ValueError(
            f"bad store URL {_redacted(url)!r}: unknown option {unknown[0]!r} "
            f"(known: {', '.join(_QUERY_OPTIONS)})"
        )
    ca_certs = options.get("ssl_ca_certs") or None
    if ca_certs is not None and parts.scheme != "rediss":
        raise ValueError(f"bad store URL {_redacted(url)!r}: ssl_ca_certs needs rediss://")
    timeout = DEFAULT_TIMEOUT
    if "timeout" in options:
        try:
            timeout = float(options["timeout"])
        except ValueError:
            timeout = math.nan
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(
                f"bad store URL {_redacted(url)!r}: timeout must be a positive number "
                f"of seconds, not {options['timeout']!r}"
            )
    queue_shards = None
    if "queue_shards" in options:
        text = options["queue_shards"]
        if not (text.isdigit() and text.isascii() and 1 <= int(text) <= MAX_QUEUE_SHARDS):
            raise ValueError(
                f"bad store URL {_redacted(url)!r}: queue_shards must be a whole number "
                f"from 1 to {MAX_QUEUE_SHARDS}, not {text!r}"
            )
        queue_shards = int(text)
    direct = options.get("direct_streams", "0")
    if direct not in ("0", "1"):
        raise ValueError(
            f"bad store URL {_redacted(url)!r}: direct_streams must be 0 or 1, not {direct!r}"
        )
    return RedisAddress(
        direct_streams=direct == "1",
        queue_shards=queue_shards,
        timeout=timeout,
        host=parts.hostname,
        port=DEFAULT_REDIS_PORT if port is None else port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
        ca_certs=ca_certs,
    )


@attrs.frozen(slots=True)
class ClusterAddress:
    """A Redis Cluster: its seed nodes (each a RedisAddress with the shared
    credentials, TLS and timeout settings); database 0, the only one a
    cluster has."""

    seeds: tuple[RedisAddress, ...]

    @property
    def timeout(self) -> float:
        return self.seeds[0].timeout

    @property
    def queue_shards(self) -> int | None:
        return self.seeds[0].queue_shards

    def node(self, host: str, port: int) -> RedisAddress:
        """The address of a node the cluster named, with the seeds' settings."""
        return attrs.evolve(self.seeds[0], host=host, port=port)

    def __str__(self) -> str:
        scheme = "rediss+cluster" if self.seeds[0].tls else "redis+cluster"
        nodes = ",".join(str(seed).split("://", 1)[1].rsplit("/", 1)[0] for seed in self.seeds)
        return f"{scheme}://{nodes}"


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterAddress:
    """A ClusterAddress, or ValueError saying what is wrong with ``url``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"bad store URL {_redacted(url)!r}: expected {_FORMS}")
    split = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
                default=len(rest))  # fmt: skip
    location, tail = rest[:split], rest[split:]
    credentials, at, hosts = location.rpartition("@")
    seeds: list[RedisAddress] = []
    for host in hosts.split(","):
        if not host:
            raise ValueError(f"bad store URL {_redacted(url)!r}: an empty host in the node list")
        single = f"{CLUSTER_SCHEMES[scheme]}://{credentials}{at}{host}{tail}"
        try:
            seed = parse_redis_url(single)
        except ValueError as e:
            reason = str(e).split("': ", 1)[-1]
            raise ValueError(f"bad store URL {_redacted(url)!r}: {reason}") from None
        if seed.db != 0:
            raise ValueError(
                f"bad store URL {_redacted(url)!r}: a Redis Cluster has database 0 only"
            )
        if seed.direct_streams:
            raise ValueError(
                f"bad store URL {_redacted(url)!r}: direct_streams is for one Redis, "
                "not a Redis Cluster (yet)"
            )
        seeds.append(seed)
    return ClusterAddress(tuple(seeds))


def parse_store_address(url: str) -> RedisAddress | ClusterAddress:
    """A Redis URL (``redis[s]://``) or a Redis Cluster one (``redis[s]+cluster://``)."""
    return parse_cluster_url(url) if is_cluster_url(url) else parse_redis_url(url)


def _redacted(url: str) -> str:
    """``url`` with any password replaced, so errors can quote it safely."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    credentials, at, location = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{location}"
