"""Registration mode's secrets: hashing, checking, and the device registry."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from pigeonpush.reglog.devices import (
    SCRYPT_N,
    ClientExists,
    DeviceRegistry,
    hash_secret,
    in_thread_pool,
    new_client_id,
    new_secret,
    run_inline,
    verify_secret,
)
from pigeonpush.store.memory import MemoryStore
from pigeonpush.store.model import DeviceRecord

T = TypeVar("T")


def test_a_hash_describes_itself_and_verifies() -> None:
    encoded = hash_secret("s3cret")
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", SCRYPT_N, 8, 1)
    assert len(salt) == 22 and len(digest) == 43  # 16 and 32 bytes, unpadded base64
    assert "s3cret" not in encoded
    assert verify_secret("s3cret", encoded)
    assert not verify_secret("s3cret ", encoded)
    assert not verify_secret("", encoded)


def test_equal_secrets_get_different_salts() -> None:
    assert hash_secret("same") != hash_secret("same")


def test_other_parameters_still_verify() -> None:
    encoded = hash_secret("old", n=2**4, r=1, p=1, salt=b"fixed-salt")
    assert encoded.startswith("scrypt$16$1$1$")
    assert verify_secret("old", encoded)
    assert not verify_secret("new", encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain-text-secret",
        "bcrypt$16$1$1$c2FsdA$aGFzaA",
        "scrypt$16$1$1$c2FsdA",
        "scrypt$x$1$1$c2FsdA$aGFzaA",
        "scrypt$15$1$1$c2FsdA$aGFzaA",
        "scrypt$2097152$8$1$c2FsdA$aGFzaA",
        "scrypt$65536$16$1$c2FsdA$aGFzaA",
        "scrypt$16$0$1$c2FsdA$aGFzaA",
        "scrypt$16$1$99$c2FsdA$aGFzaA",
        "scrypt$16$1$1$$aGFzaA",
        "scrypt$16$1$1$c2FsdA$",
        "scrypt$16$1$1$c2F*dA$aGFzaA",
    ],
)
def test_a_malformed_stored_hash_is_refused(encoded: str) -> None:
    with pytest.raises(ValueError):
        verify_secret("anything", encoded)


def test_ids_and_secrets_are_random_and_url_safe() -> None:
    ids = {new_client_id() for _ in range(100)}
    secrets = {new_secret() for _ in range(100)}
    assert len(ids) == len(secrets) == 100
    safe = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert all(len(i) == 22 and set(i) <= safe for i in ids)
    assert all(len(s) == 43 and set(s) <= safe for s in secrets)


class RecordingRunner:
    """Runs inline and remembers what it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __call__(self, function: Callable[..., T], /, *args: Any) -> Deferred[T]:
        self.ran.append(function.__name__)
        return run_inline(function, *args)


def registry(runner: Any = run_inline) -> tuple[DeviceRegistry, MemoryStore, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000)
    store = MemoryStore(clock)
    return DeviceRegistry(store, clock, runner), store, clock


@pytest_twisted.ensureDeferred
async def test_registering_stores_only_a_hash() -> None:
    devices, store, _ = registry()
    client_id, secret = await devices.register("lamp-1")
    assert client_id == "lamp-1"
    record = await store.device("lamp-1")
    assert record is not None
    assert record.created_at == 1_700_000_000
    assert secret not in record.secret_hash
    assert verify_secret(secret, record.secret_hash)


@pytest_twisted.ensureDeferred
async def test_registering_without_an_id_generates_one() -> None:
    devices, store, _ = registry()
    first, _ = await devices.register()
    second, _ = await devices.register(None)
    assert first != second
    assert await store.device(first) is not None


@pytest_twisted.ensureDeferred
async def test_a_taken_client_id_is_refused_and_kept() -> None:
    devices, store, _ = registry()
    _, secret = await devices.register("lamp-1")
    before = await store.device("lamp-1")
    with pytest.raises(ClientExists):
        await devices.register("lamp-1")
    assert await store.device("lamp-1") == before
    assert await devices.check("lamp-1", secret)


@pytest_twisted.ensureDeferred
async def test_check_accepts_only_the_registered_secret() -> None:
    devices, _, _ = registry()
    _, secret = await devices.register("lamp-1")
    _, other = await devices.register("lamp-2")
    assert await devices.check("lamp-1", secret)
    assert not await devices.check("lamp-1", other)
    assert not await devices.check("lamp-2", secret)
    assert not await devices.check("lamp-1", secret[:-1])


@pytest_twisted.ensureDeferred
async def test_an_unknown_device_costs_a_hash_like_a_wrong_secret() -> None:
    runner = RecordingRunner()
    devices, _, _ = registry(runner)
    _, secret = await devices.register("lamp-1")
    runner.ran.clear()
    assert not await devices.check("lamp-1", "wrong")
    assert not await devices.check("nobody", secret)
    assert runner.ran == ["verify_secret", "verify_secret"]


@pytest_twisted.ensureDeferred
async def test_an_unusable_stored_hash_fails_the_check_and_is_logged() -> None:
    devices, store, clock = registry()
    await store.register_device(DeviceRecord("broken", "md5$abc", clock.seconds()))
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert not await devices.check("broken", "anything")
    finally:
        globalLogPublisher.removeObserver(events.append)
    (event,) = [e for e in events if e.get("client_id") == "broken"]
    assert event["reason"] == "not a scrypt secret hash"
    assert event["log_level"].name == "error"


@pytest_twisted.ensureDeferred
async def test_the_thread_pool_runner_hashes_off_the_reactor_thread() -> None:
    from twisted.internet import reactor

    runner = in_thread_pool(reactor)
    thread = await runner(threading.current_thread)
    assert thread is not threading.main_thread()
    encoded = await runner(hash_secret, "s")
    assert await runner(verify_secret, "s", encoded)
