"""API keys: loading them, and checking a request's Bearer key in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

#: Keys shorter than this are refused at start-up: they could be guessed.
MIN_KEY_LENGTH = 16


class KeyFileError(ValueError):
    """An API key file that cannot be used (the message says why)."""


def read_key_file(path: str) -> list[str]:
    """Keys from ``path``: one per line; blank lines and ``#`` comments ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read the API key file {path}: {e}") from e
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line)
    return keys


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an API key (None if it can). The key itself is
    never part of the answer: messages end up in logs."""
    if len(key) < MIN_KEY_LENGTH:
        return f"an API key must have at least {MIN_KEY_LENGTH} characters"
    if not key.isascii() or not key.isprintable() or " " in key:
        return "an API key must be printable ASCII without spaces"
    return None


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class ApiKeys:
    """The configured keys. ``check`` compares against every key with
    ``hmac.compare_digest`` on fixed-length digests, so neither the position
    of a match nor the length of a key shows in the time taken."""

    __slots__ = ("_digests",)

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(key.encode("utf-8")) for key in keys]
        if not self._digests:
            raise ValueError("at least one API key is required")

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: bytes | None) -> str | None:
        """The key's scope (a short digest naming the key, for idempotency
        keys) if the ``Authorization`` header holds a configured Bearer key;
        None otherwise."""
        if authorization is None:
            return None
        scheme, _, presented = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        digest = _digest(presented.strip())
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(known, digest)
        return digest[:8].hex() if matched else None
