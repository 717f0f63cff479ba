"""Store URLs: ``memory:`` or ``redis[s]://[[user]:password@]host[:port][/db]``,
with ``?timeout=SECONDS`` and (``rediss://``) ``?ssl_ca_certs=PATH``."""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

DEFAULT_REDIS_PORT = 6379
#: Seconds a store call waits for Redis (connecting included) before it fails
#: with StoreError. Well below what wraps store calls (the push server's auth
#: timeout, 10 s; HTTP clients' patience), so that a stopped Redis is
#: answered as such (AUTH_FAIL UNAVAILABLE, 503) rather than as a timeout.
DEFAULT_TIMEOUT = 3.0
#: Query parameters a Redis URL may carry.
_QUERY_OPTIONS = ("ssl_ca_certs", "timeout")
_FORMS = "memory: or redis://[:password@]host:port/db (rediss:// for TLS)"


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

    def __str__(self) -> str:
        """The URL without credentials, for logs and error messages."""
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"


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
    return RedisAddress(
        timeout=timeout,
        host=parts.hostname,
        port=DEFAULT_REDIS_PORT if port is None else port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
        ca_certs=ca_certs,
    )


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
