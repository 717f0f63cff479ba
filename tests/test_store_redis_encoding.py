"""The Redis command encoder: txredisapi's bytes, faster."""

from __future__ import annotations

import pytest
import txredisapi
from hypothesis import given
from hypothesis import strategies as st

from pigeonpush.store.redis_connection import encode_commands

words = st.one_of(st.text(), st.integers(), st.binary())


def txredisapi_bytes(commands: list[list[object]]) -> bytes:
    protocol = txredisapi.BaseRedisProtocol(charset="utf-8")
    return b"".join(protocol._build_command(*command) for command in commands)


@given(st.lists(st.lists(words, min_size=1, max_size=6), max_size=5))
def test_the_same_bytes_as_txredisapi(commands: list[list[object]]) -> None:
    assert encode_commands(commands) == txredisapi_bytes(commands)  # type: ignore[arg-type]


def test_a_known_command() -> None:
    assert (
        encode_commands([("SET", "k", "é")]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n"
    )


def test_a_lone_surrogate_cannot_be_sent() -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_commands([("SET", "k", "\ud800")])
