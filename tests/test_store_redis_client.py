"""The Redis connection's protocol (``redis_connection.RedisProtocol``): what
it takes from txredisapi, and the replies it hands over, without a socket.

txredisapi's internals are not an interface: the signatures checked here are
the ones the protocol was written against (txredisapi 1.4.10 to 1.6.0, the
range setup.cfg pins; tox's twoldest environment runs the oldest). A change
there fails this file first, by name, rather than the store in odd ways."""

from __future__ import annotations

import configparser
import inspect
from pathlib import Path
from typing import Any

import pytest
import txredisapi
from hypothesis import given
from hypothesis import strategies as st
from packaging.requirements import Requirement
from twisted.internet.testing import StringTransport

from pigeonpush.store.interface import StoreError
from pigeonpush.store.redis_connection import BatchReplies, RedisProtocol, is_error
from support.server_harness import result_of

ROOT = Path(__file__).resolve().parent.parent


def _parameters(function: Any) -> list[tuple[str, Any]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def test_txredisapi_internals_keep_the_signatures_the_protocol_relies_on() -> None:
    base, hiredis_protocol = txredisapi.BaseRedisProtocol, txredisapi.HiredisProtocol
    assert issubclass(RedisProtocol, hiredis_protocol)
    # overridden: one call per complete reply, decoded
    assert [name for name, _ in _parameters(base.replyReceived)] == ["self", "reply"]
    # overridden without calling it: txredisapi's would AUTH/SELECT through its factory
    assert _parameters(base.connectionMade) == [("self", inspect.Parameter.empty)]
    # overridden and called
    assert [name for name, _ in _parameters(base.connectionLost)] == ["self", "why"]
    # overridden and called (bytes read count as Redis answering): the reader
    # that calls replyReceived; and the constructor's options
    assert _parameters(hiredis_protocol.dataReceived) == [
        ("self", inspect.Parameter.empty),
        ("data", inspect.Parameter.empty),
        ("unpause", False),
    ]
    options = inspect.signature(base.__init__).parameters
    assert options["charset"].default == "utf-8" and options["convertNumbers"].default is True
    # nothing else of txredisapi's is overridden
    ours = {
        name
        for name in vars(RedisProtocol) | vars(BatchReplies)
        if hasattr(base, name) and not name.startswith("__")
    }
    assert ours == {"replyReceived", "connectionMade", "connectionLost", "dataReceived"}


def connected() -> tuple[RedisProtocol, StringTransport]:
    protocol = RedisProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_batch_is_one_write_and_its_replies_come_back_in_order() -> None:
    protocol, transport = connected()
    first = protocol.send([("GET", "a"), ("HGETALL", "h")])
    second = protocol.send([("PING",)])
    assert transport.value() == (
        b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$7\r\nHGETALL\r\n$1\r\nh\r\n*1\r\n$4\r\nPING\r\n"
    )
    protocol.dataReceived(b"$1\r\nx\r\n*4\r\n$5\r\ntitle\r\n$2\r\nhi\r\n$4\r\ntext\r\n$0\r\n")
    assert not first.called
    protocol.dataReceived(b"\r\n+PONG\r\n")
    assert result_of(first) == ["x", ["title", "hi", "text", ""]]
    assert result_of(second) == ["PONG"]


def test_replies_of_every_type() -> None:
    protocol, _ = connected()
    batch = protocol.send([("X",)] * 7)
    protocol.dataReceived(
        b":-12\r\n$-1\r\n*-1\r\n*0\r\n$2\r\n\xff\xfe\r\n"
        b"-NOSCRIPT No matching script.\r\n*2\r\n:1\r\n-ERR wrong type\r\n"
    )
    replies = result_of(batch)
    assert replies[:5] == [-12, None, None, [], b"\xff\xfe"]  # not UTF-8: bytes
    assert is_error(replies[5], "NOSCRIPT")
    assert replies[6][0] == 1 and is_error(replies[6][1])
    assert "wrong type" in str(replies[6][1])


def test_numbers_stay_text() -> None:
    protocol, _ = connected()
    batch = protocol.send([("GET", "k")])
    protocol.dataReceived(b"$4\r\n0123\r\n")
    assert result_of(batch) == ["0123"]


def test_an_unexpected_reply_drops_the_connection() -> None:
    protocol, transport = connected()
    protocol.dataReceived(b"+OK\r\n")
    assert transport.disconnecting or not protocol.usable


def test_calls_in_flight_fail_when_the_connection_is_lost() -> None:
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    protocol, _ = connected()
    batch = protocol.send([("GET", "a")])
    protocol.connectionLost(Failure(ConnectionLost()))
    with pytest.raises(StoreError, match="the connection to Redis was lost"):
        result_of(batch)


#: What a reply can hold: (RESP bytes, the value the protocol hands over).
_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda n: (b":%d\r\n" % n, n)),
    st.text().map(lambda t: (b"$%d\r\n%s\r\n" % (len(t.encode()), t.encode()), t)),
    st.binary().map(
        lambda b: (b"$%d\r\n%s\r\n" % (len(b), b), _decoded(b)),
    ),
    st.just((b"$-1\r\n", None)),
)


def _decoded(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _array(items: list[tuple[bytes, Any]]) -> tuple[bytes, Any]:
    return (b"*%d\r\n" % len(items) + b"".join(raw for raw, _ in items), [v for _, v in items])


_replies = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=5).map(_array), max_leaves=20
)


@given(st.lists(_replies, min_size=1, max_size=5), st.data())
def test_replies_split_anywhere_come_back_whole(
    replies: list[tuple[bytes, Any]], data: st.DataObject
) -> None:
    protocol, _ = connected()
    batch = protocol.send([("X",)] * len(replies))
    payload = b"".join(raw for raw, _ in replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=6)))
    for start, end in zip([0, *cuts], [*cuts, len(payload)], strict=True):
        protocol.dataReceived(payload[start:end])
    assert result_of(batch) == [value for _, value in replies]


def test_tox_tests_both_ends_of_the_txredisapi_pin() -> None:
    """setup.cfg's range and the matrix's two pins name the same versions."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    (line,) = (
        line
        for line in config["options.extras_require"]["server"].split("\n")
        if line.strip().startswith("txredisapi")
    )
    bounds = {spec.operator: spec.version for spec in Requirement(line).specifier}
    assert set(bounds) == {">=", "<="}, "pin both ends: the versions the overrides were checked on"
    tox = (ROOT / "tox.ini").read_text()
    assert f"twoldest: txredisapi=={bounds['>=']}" in tox
    assert f"twlatest: txredisapi=={bounds['<=']}" in tox
