"""Store URLs and ``open_store``."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from pigeonpush.store import open_store
from pigeonpush.store.address import RedisAddress, parse_redis_url
from pigeonpush.store.memory import MemoryStore
from pigeonpush.store.redis import RedisStore


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://localhost", RedisAddress("localhost")),
        ("redis://10.1.2.3:6380/2", RedisAddress("10.1.2.3", 6380, 2)),
        ("redis://redis.internal:6379/", RedisAddress("redis.internal")),
        ("redis://:pa%3Ass%40word@h:1/0", RedisAddress("h", 1, 0, password="pa:ss@word")),
        ("redis://pigeon:secret@h:1/15", RedisAddress("h", 1, 15, "pigeon", "secret")),
        ("redis://[::1]:7000/1", RedisAddress("::1", 7000, 1)),
        ("rediss://h:6390/0", RedisAddress("h", 6390, tls=True)),
        (
            "rediss://h/0?ssl_ca_certs=/etc/ca.pem",
            RedisAddress("h", tls=True, ca_certs="/etc/ca.pem"),
        ),
        ("redis://h/0?timeout=0.5", RedisAddress("h", timeout=0.5)),
    ],
)
def test_redis_urls(url: str, address: RedisAddress) -> None:
    assert parse_redis_url(url) == address


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://h:6379/0", "expected memory: or redis://"),
        ("redis:///0", "no host"),
        ("redis://h:port/0", "Port could not be cast"),
        ("redis://h:70000/0", "Port out of range"),
        ("redis://h:0/0", "port 0"),
        ("redis://a%20b:6379/0", "host 'a%20b' has no valid host"),
        ("redis://h_-:6379/0", "is not a host name"),
        ("redis://[fe80::1%25eth0]:6379/0", "has a zone id"),
        ("redis://h:6379/zero", "the path must be a database number, not '/zero'"),
        ("redis://h:6379/0/1", "the path must be a database number"),
        ("redis://h:6379/-1", "the path must be a database number"),
        ("redis://h/0?db=3", "unknown option 'db'"),
        ("redis://h/0?timeout=0", "timeout must be a positive number of seconds, not '0'"),
        ("redis://h/0?timeout=-1", "timeout must be a positive number of seconds"),
        ("redis://h/0?timeout=inf", "timeout must be a positive number of seconds"),
        ("redis://h/0?timeout=soon", "timeout must be a positive number of seconds, not 'soon'"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs rediss://"),
        ("redis://user@h/0", "a user name needs a password"),
        ("redis://h/0#frag", "unexpected #frag"),
    ],
)
def test_bad_redis_urls_say_what_is_wrong(url: str, error: str) -> None:
    with pytest.raises(ValueError, match="bad store URL") as raised:
        parse_redis_url(url)
    assert error in str(raised.value)


def test_a_bad_url_is_quoted_without_its_password() -> None:
    with pytest.raises(ValueError) as raised:
        parse_redis_url("redis://admin:hunter2@h:6379/db")
    assert "hunter2" not in str(raised.value)
    assert "redis://admin:***@h:6379/db" in str(raised.value)


def test_an_address_never_shows_its_password() -> None:
    address = parse_redis_url("redis://:hunter2@h:6379/3")
    assert "hunter2" not in repr(address)
    assert str(address) == "redis://h:6379/3"
    assert str(parse_redis_url("rediss://[::1]/0")) == "rediss://[::1]:6379/0"


def test_open_store_memory() -> None:
    clock = Clock()
    store = open_store("memory:", clock)
    assert isinstance(store, MemoryStore)


def test_open_store_redis_does_not_connect_yet() -> None:
    from twisted.internet import reactor

    # Nothing listens there; opening alone must not fail or connect.
    store = open_store("redis://127.0.0.1:9/4", reactor, idempotency_ttl=5)
    assert isinstance(store, RedisStore)
    assert store.address == RedisAddress("127.0.0.1", 9, 4)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("", "a store URL is needed"),
        ("memory", "expected memory: or redis://"),
        ("postgres://h/0", "expected memory: or redis://"),
    ],
)
def test_open_store_refuses_bad_urls(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        open_store(url, Clock())


def test_open_store_refuses_an_unreadable_ca_file(tmp_path: Path) -> None:
    from twisted.internet import reactor

    with pytest.raises(ValueError, match="cannot read ssl_ca_certs"):
        open_store(f"rediss://h/0?ssl_ca_certs={tmp_path / 'missing.pem'}", reactor)
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        open_store(f"rediss://h/0?ssl_ca_certs={empty}", reactor)


@pytest.mark.parametrize("ttl", [0, -5, float("nan")])
def test_open_store_refuses_a_bad_idempotency_ttl(ttl: float) -> None:
    from twisted.internet import reactor

    for url in ("memory:", "redis://h/0"):
        with pytest.raises(ValueError, match="idempotency_ttl must be a positive number"):
            open_store(url, reactor, idempotency_ttl=ttl)


def test_the_store_timeout_defaults_well_below_the_auth_timeout() -> None:
    from pigeonpush.server.settings import ServerSettings
    from pigeonpush.store.address import DEFAULT_TIMEOUT

    assert parse_redis_url("redis://h/0").timeout == DEFAULT_TIMEOUT
    assert ServerSettings().auth_timeout / 2 >= DEFAULT_TIMEOUT
