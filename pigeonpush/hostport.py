"""Network addresses as text: ``host:port``, and ``[tls:]host:port`` for a peer.

One rule set, used wherever an address is read (options, discovery data,
``ROUTE``, reglog's answers and requests, ZooKeeper hosts, Redis Cluster
redirections, the tools):

- the host is a host name (letters, digits, ``-`` and ``_`` in dot-separated
  labels of at most 63 characters, at most 253 in all, no label starting or
  ending with ``-``), a dotted IPv4 address (a name of digits and dots must be
  one), or an IPv6 address in brackets, ``[::1]:7100`` (no zone id). The host
  is kept as written (no case folding, no IPv6 compression), so an address
  compares equal to the one it was read from;
- the port is 1 to 65535 in ASCII digits (``int()`` alone would take
  ``" 80"``, ``"+80"`` or other scripts' digits).

``format_host_port`` writes the one form back (brackets around IPv6), and
``parse_host_port(format_host_port(h, p)) == (h, p)`` for every valid pair.

A peer address adds the transport: ``host:port`` is TCP, ``tls:host:port`` is
TLS (``PeerAddress``, ``parse_peer_address``). The same strings are published
in discovery (``client``, ``rpc``) and stored in ``ROUTE``.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from pigeonpush.tls import TCP, TLS

#: The prefix of a TLS address; a plain ``host:port`` is TCP.
TLS_PREFIX = "tls:"
#: The longest host name (RFC 1035's 255 octets on the wire, less the framing).
MAX_HOST_NAME = 253
HOST_PORT = "host:port"
PEER_FORM = "host:port or tls:host:port"

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_IPV4_LIKE = re.compile(r"[0-9.]+")
_IPV6_TEXT = re.compile(r"[0-9A-Fa-f:.]+")


class _Bad(Exception):
    """Why a text is not an address: the words after ``address 'TEXT'``."""


def check_host(host: str) -> str:
    """``host`` (a host name, IPv4 or unbracketed IPv6 address) if valid, else ValueError."""
    try:
        return _check_host(host, bracketed=False)
    except _Bad as e:
        raise ValueError(f"host {host!r} {e}") from None


def check_port(port: int) -> int:
    """``port`` if it is an int from 1 to 65535, else ValueError."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    return port


def format_host_port(host: str, port: int) -> str:
    """``host:port``, IPv6 as ``[v6]:port``; ValueError if either part is invalid."""
    check_host(host)
    check_port(port)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(
    text: str, *, default_port: int | None = None, bare_ipv6: bool = False
) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` (``[v6]:port``); ValueError saying what is wrong.

    ``default_port``: the port of a text that gives none (``host``, ``[v6]``).
    ``bare_ipv6``: the last colon separates the port and the host may be an
    unbracketed IPv6 address, as Redis Cluster writes node addresses
    (``MOVED 3999 ::1:7001``); brackets are still accepted.
    """
    try:
        return _parse(text, default_port, bare_ipv6=bare_ipv6, form=HOST_PORT)
    except _Bad as e:
        raise ValueError(f"address {text!r} {e}") from None


@attrs.frozen(slots=True)
class PeerAddress:
    """Where a peer listens and what it speaks there. ``str()`` gives the
    address back in its one written form (``[tls:]host:port``)."""

    host: str
    port: int
    transport: str = TCP

    @property
    def tls(self) -> bool:
        return self.transport == TLS

    @property
    def host_port(self) -> str:
        """``host:port`` (``[v6]:port``), without the transport."""
        return format_host_port(self.host, self.port)

    def __str__(self) -> str:
        return (TLS_PREFIX if self.tls else "") + self.host_port


def parse_peer_address(address: str) -> PeerAddress:
    """``host:port`` (TCP) or ``tls:host:port`` (TLS), IPv6 as ``[v6]:port``;
    ValueError saying what is wrong."""
    transport = TCP
    text = address
    if isinstance(text, str) and text.startswith(TLS_PREFIX):
        transport, text = TLS, text[len(TLS_PREFIX) :]
    try:
        host, port = _parse(text, None, bare_ipv6=False, form=PEER_FORM)
    except _Bad as e:
        raise ValueError(f"address {address!r} {e}") from None
    return PeerAddress(host, port, transport)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) -> (host, port); ValueError when
    malformed or when it names TLS (use ``parse_peer_address`` for those)."""
    peer = parse_peer_address(address)
    if peer.tls:
        raise ValueError(f"address {address!r} is a TLS address, not host:port")
    return peer.host, peer.port


def _parse(text: str, default_port: int | None, *, bare_ipv6: bool, form: str) -> tuple[str, int]:
    if not isinstance(text, str):
        raise _Bad("is not a string")
    port_text: str | None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _Bad(f"is not {form}: an IPv6 host is written [v6]:port")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            host, port_text = text, None
        if ":" in host and not bare_ipv6:
            hint = ", TLS as tls:host:port" if form == PEER_FORM else ""
            raise _Bad(f"is not {form}: write IPv6 hosts as [v6]:port{hint}")
    if not host:
        raise _Bad(f"is not {form}: no host")
    if port_text is None:
        if default_port is None:
            raise _Bad(f"is not {form}: no port")
        port = default_port
    elif not port_text:
        raise _Bad(f"is not {form}: no port after the colon")
    elif not (port_text.isascii() and port_text.isdigit()):
        raise _Bad(f"is not {form}: the port must be ASCII digits, not {port_text!r}")
    elif len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise _Bad(f"has no valid port: {port_text} is out of range (1 to 65535)")
    else:
        port = int(port_text)
    return _check_host(host, bracketed=text.startswith("[")), port


def _check_host(host: str, *, bracketed: bool) -> str:
    if bracketed or ":" in host:
        if "%" in host:
            raise _Bad(f"has no valid host: {host!r} has a zone id, which is not supported")
        if not (_IPV6_TEXT.fullmatch(host) and ":" in host):
            raise _Bad(f"has no valid host: {host!r} is not an IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Bad(f"has no valid host: {host!r} is not an IPv6 address") from None
        return host
    if _IPV4_LIKE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _Bad(
                f"has no valid host: {host!r} is not an IPv4 address (four numbers 0 to 255, "
                "no leading zeros)"
            ) from None
        return host
    if len(host) > MAX_HOST_NAME or not _HOST_NAME.fullmatch(host):
        raise _Bad(
            f"has no valid host: {host!r} is not a host name (dot-separated labels of "
            "letters, digits, '-' and '_', at most 63 characters each, 253 in all)"
        )
    return host
