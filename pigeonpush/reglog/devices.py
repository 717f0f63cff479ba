"""Registered devices (``--auth-mode=registered``): their ids, secrets and checks.

A device's secret is shown once, at registration; the store keeps only a salted
scrypt hash in a self-describing string ``scrypt$<n>$<r>$<p>$<salt>$<hash>``
(salt and hash in unpadded URL-safe base64), so the parameters can be raised
later and old records still verify.

The parameters are modest on purpose: a secret is 256 random bits from
``secrets``, so no work factor is needed against guessing (there is nothing to
guess), and the hash only keeps a copy of the store from handing out working
secrets. scrypt with n=2**10, r=8, p=1 uses 1 MiB and takes about 2 ms on one
core (4.5 ms at n=2**11, 40 ms at n=2**14, measured on the development machine);
2 ms on the reactor thread would still cap the whole process at ~500
registered routes per second and delay every other request, so hashing runs
in the reactor's thread pool (hashlib releases the GIL while it hashes), and
a route request costs the reactor only a hand-over.

A route request for an unknown clientId is checked against a dummy hash with
the same parameters, so an unknown device and a wrong secret take the same time
and get the same answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from pigeonpush.store.interface import Store
from pigeonpush.store.model import DeviceRecord
from pigeonpush.tokens import url_safe_token

log = Logger()

T = TypeVar("T")

SCHEME = "scrypt"
SCRYPT_N = 2**10
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
#: Refuse stored parameters beyond these: a corrupt record must not eat memory
#: (scrypt needs 128 * n * r bytes).
MAX_N = 2**16
MAX_R = 16
MAX_P = 16
MAX_MEMORY = 64 * 1024 * 1024
_MAXMEM = MAX_MEMORY + 1024 * 1024  # OpenSSL counts a little more than 128 * n * r


def new_client_id() -> str:
    """A random URL-safe clientId (22 characters, about 128 bits), never with a
    leading ``-`` (it is typed after ``--to`` and ``--client-id``)."""
    return url_safe_token(16)


def new_secret() -> str:
    """A device secret: 43 URL-safe characters, about 256 bits, never with a
    leading ``-`` (it is typed after ``--secret``)."""
    return url_safe_token(32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(
    secret: str,
    *,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
    salt: bytes | None = None,
) -> str:
    """The self-describing salted hash of ``secret`` (CPU-bound: run it off the reactor)."""
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES, maxmem=_MAXMEM
    )
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, encoded: str) -> bool:
    """Whether ``secret`` matches ``encoded`` (constant-time compare).

    ValueError if ``encoded`` is not a hash this module wrote.
    """
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError("not a scrypt secret hash")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
    except ValueError as error:
        raise ValueError(f"malformed scrypt secret hash: {error}") from None
    if not (1 < n <= MAX_N and n & (n - 1) == 0 and 0 < r <= MAX_R and 0 < p <= MAX_P):
        raise ValueError("scrypt parameters out of range")
    if 128 * n * r > MAX_MEMORY:
        raise ValueError("scrypt parameters need too much memory")
    if not salt or not expected:
        raise ValueError("malformed scrypt secret hash: empty salt or hash")
    digest = hashlib.scrypt(
        secret.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=len(expected),
        maxmem=_MAXMEM,
    )
    return hmac.compare_digest(digest, expected)


class BlockingRunner(Protocol):
    """Runs a CPU-bound function somewhere that does not block the reactor."""

    def __call__(self, function: Callable[..., T], /, *args: Any) -> Deferred[T]: ...


def in_thread_pool(reactor: IReactorThreads) -> BlockingRunner:
    """A runner on ``reactor``'s thread pool."""

    def run(function: Callable[..., T], /, *args: Any) -> Deferred[T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return run


def run_inline(function: Callable[..., T], /, *args: Any) -> Deferred[T]:
    """A runner that calls at once (for tools and tests that own the thread)."""
    return succeed(function(*args))


class ClientExists(Exception):
    """A device with this clientId is already registered."""


class DeviceRegistry:
    """Registers devices and checks their secrets against the store."""

    __slots__ = ("_clock", "_dummy_hash", "_run", "_store")

    def __init__(self, store: Store, clock: IReactorTime, run: BlockingRunner) -> None:
        self._store = store
        self._clock = clock
        self._run = run
        # Checked when the clientId is unknown, so that costs what a wrong secret costs.
        self._dummy_hash = hash_secret(new_secret())

    async def register(self, client_id: str | None = None) -> tuple[str, str]:
        """Register a device; returns ``(clientId, secret)``, the secret's only copy.

        ClientExists if ``client_id`` is taken (nothing is written then).
        """
        if client_id is None:
            client_id = new_client_id()
        secret = new_secret()
        secret_hash = await self._run(hash_secret, secret)
        record = DeviceRecord(client_id, secret_hash, self._clock.seconds())
        if not await self._store.register_device(record):
            raise ClientExists(client_id)
        return client_id, secret

    async def check(self, client_id: str, secret: str) -> bool:
        """Whether ``client_id`` is registered and ``secret`` is its secret."""
        record = await self._store.device(client_id)
        encoded = self._dummy_hash if record is None else record.secret_hash
        try:
            matches = await self._run(verify_secret, secret, encoded)
        except ValueError as error:
            log.error(
                "Stored secret hash of device {client_id} is unusable: {reason}",
                client_id=client_id,
                reason=str(error),
            )
            return False
        return matches and record is not None
