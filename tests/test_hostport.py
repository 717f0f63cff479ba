"""The one host:port rule (``pigeonpush.hostport``): properties and the edge
cases each of the parsers it replaced handled."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.provisional import domains

from pigeonpush.hostport import (
    PeerAddress,
    check_host,
    check_port,
    format_host_port,
    parse_host_port,
    parse_peer_address,
)
from pigeonpush.tls import TCP, TLS

ports = st.integers(min_value=1, max_value=65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
_label = st.from_regex(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", fullmatch=True)
host_names = st.one_of(
    domains(),
    st.lists(_label, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda name: len(name) <= 253 and not name.replace(".", "").isdigit()),
)
hosts = st.one_of(ipv4, ipv6, host_names)


@given(hosts, ports)
@example("::1", 7100)
@example("push-1.example", 1)
@example("10.0.0.1", 65535)
def test_a_formatted_address_parses_back(host: str, port: int) -> None:
    text = format_host_port(host, port)
    assert parse_host_port(text) == (host, port)
    assert text.startswith("[") is (":" in host)
    assert parse_peer_address(text) == PeerAddress(host, port, TCP)
    assert str(parse_peer_address("tls:" + text)) == "tls:" + text


@given(hosts, ports)
def test_redis_cluster_addresses_take_ipv6_bare(host: str, port: int) -> None:
    assert parse_host_port(f"{host}:{port}", bare_ipv6=True) == (host, port)
    assert parse_host_port(format_host_port(host, port), bare_ipv6=True) == (host, port)


@given(st.text(max_size=40))
@example("[::1]")
@example("\u0661:1")
def test_any_text_is_an_address_or_a_value_error(text: str) -> None:
    try:
        host, port = parse_host_port(text, default_port=2181)
    except ValueError as e:
        assert repr(text) in str(e)
    else:
        # whatever parses is written back in a form that parses the same
        assert parse_host_port(format_host_port(host, port)) == (host, port)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7101", ("127.0.0.1", 7101)),
        ("delivery-1.internal:1", ("delivery-1.internal", 1)),
        ("[::1]:7201", ("::1", 7201)),
        ("[::ffff:10.0.0.1]:80", ("::ffff:10.0.0.1", 80)),
        ("[FE80::A]:80", ("FE80::A", 80)),  # kept as written
        ("Push.Example:443", ("Push.Example", 443)),
        ("redis_1:6379", ("redis_1", 6379)),
        ("h:00080", ("h", 80)),
    ],
)
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("zk1", ("zk1", 2181)), ("[::1]", ("::1", 2181)), ("zk1:2182", ("zk1", 2182))],
)
def test_a_default_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, default_port=2181) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not host:port: no host"),
        ("7101", "is not host:port: no port"),
        ("host", "is not host:port: no port"),
        ("host:", "no port after the colon"),
        (":7101", "no host"),
        ("host:0", "has no valid port: 0 is out of range"),
        ("host:65536", "has no valid port: 65536 is out of range"),
        ("host:21810000", "out of range"),
        ("host:" + "9" * 5000, "out of range"),  # not int()'s digit limit
        ("h:1x", "the port must be ASCII digits, not '1x'"),
        ("h:+80", "the port must be ASCII digits"),
        ("h: 80", "the port must be ASCII digits"),
        ("h:-1", "the port must be ASCII digits"),
        ("h:\uff17\uff11", "the port must be ASCII digits"),  # fullwidth digits
        ("h:\u0667\u0661\u0660\u0660", "the port must be ASCII digits"),  # Arabic-Indic
        ("h:\u00b2", "the port must be ASCII digits"),  # superscript two
        ("::1:7101", "write IPv6 hosts as [v6]:port"),
        ("a:b:1", "write IPv6 hosts as [v6]:port"),
        ("[::1:7101", "an IPv6 host is written [v6]:port"),
        ("[::1]7101", "an IPv6 host is written [v6]:port"),
        ("[::1]:", "no port after the colon"),
        ("[]:1", "no host"),
        ("[10.0.0.1]:1", "'10.0.0.1' is not an IPv6 address"),
        ("[push.example]:1", "'push.example' is not an IPv6 address"),
        ("[1:2:3]:1", "'1:2:3' is not an IPv6 address"),
        ("[fe80::1%eth0]:1", "has a zone id"),
        ("a b:1", "has no valid host: 'a b' is not a host name"),
        ("push\n1:7100", "is not a host name"),
        ("push\t1:7100", "is not a host name"),
        ("h/x:1", "is not a host name"),
        ("user@h:1", "is not a host name"),
        ("-h:1", "is not a host name"),
        ("h-:1", "is not a host name"),
        ("a..b:1", "is not a host name"),
        (".a:1", "is not a host name"),
        ("a.:1", "is not a host name"),
        ("\u00e9t\u00e9.example:1", "is not a host name"),
        ("x" * 64 + ".example:1", "is not a host name"),
        (".".join(["x" * 63] * 4) + ":1", "is not a host name"),  # 255 characters
        ("256.0.0.1:1", "'256.0.0.1' is not an IPv4 address"),
        ("010.0.0.1:1", "no leading zeros"),
        ("1.2.3:1", "is not an IPv4 address"),
        ("12345:1", "is not an IPv4 address"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_host_port(text)
    assert f"address {text!r} " in str(raised.value)
    assert message in str(raised.value)


def test_a_non_string_is_refused() -> None:
    with pytest.raises(ValueError, match="is not a string"):
        parse_host_port(7100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not a string"):
        parse_peer_address(None)  # type: ignore[arg-type]


def test_the_longest_host_name() -> None:
    name = ".".join(["x" * 63] * 3 + ["x" * 61])
    assert len(name) == 253
    assert parse_host_port(f"{name}:1") == (name, 1)


def test_redis_cluster_form() -> None:
    assert parse_host_port("::1:7001", bare_ipv6=True) == ("::1", 7001)
    assert parse_host_port("[::1]:7001", bare_ipv6=True) == ("::1", 7001)
    assert parse_host_port("10.0.0.1:7001", bare_ipv6=True) == ("10.0.0.1", 7001)
    with pytest.raises(ValueError, match="'\\?' is not a host name"):
        parse_host_port("?:7001", bare_ipv6=True)


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("", 1, "is not a host name"),
        ("[::1]", 1, "is not an IPv6 address"),
        ("a b", 1, "is not a host name"),
        ("h", 0, "port 0 is not a number from 1 to 65535"),
        ("h", 65536, "port 65536"),
        ("h", True, "port True"),
    ],
)
def test_format_refuses_what_would_not_parse(host: str, port: int, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        format_host_port(host, port)


def test_check_host_and_port() -> None:
    assert check_host("::1") == "::1"
    assert check_port(65535) == 65535
    with pytest.raises(ValueError, match="host 'a:b'"):
        check_host("a:b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls:", "is not host:port or tls:host:port"),
        ("ssl:h:7101", "write IPv6 hosts as [v6]:port, TLS as tls:host:port"),
        ("tcp:h:7101", "TLS as tls:host:port"),
    ],
)
def test_peer_addresses_name_their_form(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_peer_address(text)
    assert message in str(raised.value)
    assert repr(text) in str(raised.value)


def test_peer_address_transport() -> None:
    assert parse_peer_address("tls:[::1]:1") == PeerAddress("::1", 1, TLS)
    assert PeerAddress("::1", 1, TLS).host_port == "[::1]:1"
