"""A minimal RFC 6455 WebSocket client for the load generator.

autobahn's client costs more CPU per connection and per message than the
pigeon server's side of it, so a generator built on it would measure itself.
This one does what a pigeon device needs and nothing else: the opening
handshake (``Sec-WebSocket-Accept`` and the subprotocol checked), one binary
message per pigeon frame (masked, as a client must), unmasked messages in
(continuations joined), an answer to each ping, and the close handshake.

``WebSocketClient`` hosts one length-prefixed protocol (``PigeonClient``)
and is its transport: each frame it writes (4-byte length prefix, then the
frame) goes out as one message without the prefix; each message received is
handed to it with the prefix, as TCP would. The framing is the one
docs/protocol.rst ("WebSocket") specifies.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import struct
from typing import Any

from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

#: The subprotocol the push server requires.
SUBPROTOCOL = "pigeonpush.v1"
#: RFC 6455's key suffix for ``Sec-WebSocket-Accept``.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The most header bytes of the handshake's answer.
MAX_HEAD = 8 * 1024
#: The largest message accepted (the server's frames are far smaller).
MAX_MESSAGE = 1 << 20

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL = 1000
_PREFIX = struct.Struct("!I")
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
_random = random.Random()


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``key`` (its own inverse)."""
    if not payload:
        return payload
    count = len(payload)
    repeated = (key * (count // 4 + 1))[:count]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(count, "big")


def client_frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One final, masked frame (``key``: the masking key, random by default)."""
    if key is None:
        key = _random.getrandbits(32).to_bytes(4, "big")
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        head = _SHORT.pack(first, 0x80 | length)
    elif length < 1 << 16:
        head = _MEDIUM.pack(first, 0x80 | 126, length)
    else:
        head = _LONG.pack(first, 0x80 | 127, length)
    return head + key + mask(payload, key)


class HandshakeFailed(Exception):
    """The server did not upgrade the connection as asked."""


class WebSocketClient(Protocol):
    """One WebSocket connection to ``ws://host:port/``, the transport of ``inner``.

    ``inner`` gets ``makeConnection`` once the server has upgraded the
    connection, and ``connectionLost`` when it ends (also when the handshake
    failed: then its ``reason`` attribute, if it has one, says so).
    """

    def __init__(self, inner: Protocol, host: str, port: int) -> None:
        self.inner = inner
        self._host = f"{host}:{port}"
        self._key = base64.b64encode(os.urandom(16))
        self._buffer = b""
        self._open = False
        self._closing = False
        self._fragments: list[bytes] | None = None
        self.disconnecting = False

    # -- the socket side ----------------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: %s\r\n\r\n"
            % (self._host.encode("ascii"), self._key, SUBPROTOCOL.encode("ascii"))
        )

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        if not self._open:
            head, separator, rest = buffer.partition(b"\r\n\r\n")
            if not separator:
                if len(buffer) > MAX_HEAD:
                    self._refuse("websocket_bad_answer")
                else:
                    self._buffer = buffer
                return
            try:
                self._check_answer(head)
            except HandshakeFailed as e:
                self._refuse(str(e))
                return
            self._open = True
            self.inner.makeConnection(self)
            buffer = rest
        self._buffer = self._read_frames(buffer)

    def _check_answer(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or status[1] != b"101":
            code = status[1].decode("ascii", "replace") if len(status) > 1 else "none"
            raise HandshakeFailed(f"websocket_http_{code}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"sec-websocket-accept") != accept_key(self._key):
            raise HandshakeFailed("websocket_bad_accept")
        if headers.get(b"sec-websocket-protocol") != SUBPROTOCOL.encode("ascii"):
            raise HandshakeFailed("websocket_no_subprotocol")

    def _refuse(self, reason: str) -> None:
        if hasattr(self.inner, "reason"):
            self.inner.reason = reason
        self._buffer = b""
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def _read_frames(self, buffer: bytes) -> bytes:
        """Handles the complete frames of ``buffer``; what is left of it."""
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            length = second & 0x7F
            at = offset + 2
            if length == 126:
                if end - at < 2:
                    break
                length = int.from_bytes(buffer[at : at + 2], "big")
                at += 2
            elif length == 127:
                if end - at < 8:
                    break
                length = int.from_bytes(buffer[at : at + 8], "big")
                at += 8
            key = None
            if second & 0x80:  # a server must not mask; unmask all the same
                if end - at < 4:
                    break
                key = buffer[at : at + 4]
                at += 4
            if length > MAX_MESSAGE:
                self._fail_connection()
                return b""
            if end - at < length:
                break
            payload = buffer[at : at + length]
            if key is not None:
                payload = mask(payload, key)
            offset = at + length
            self._frame(first & 0x80, first & 0x0F, payload)
            if self.transport is None or not self._open:
                return b""
        return buffer[offset:] if offset else buffer

    def _frame(self, final: int, opcode: int, payload: bytes) -> None:
        if opcode == BINARY and final and self._fragments is None:
            self.inner.dataReceived(_PREFIX.pack(len(payload)) + payload)
        elif opcode in (BINARY, TEXT) and not final:
            self._fragments = [payload] if opcode == BINARY else None
        elif opcode == CONTINUATION and self._fragments is not None:
            self._fragments.append(payload)
            if final:
                message = b"".join(self._fragments)
                self._fragments = None
                self.inner.dataReceived(_PREFIX.pack(len(message)) + message)
        elif opcode == PING:
            self._send(PONG, payload)
        elif opcode == CLOSE:
            if not self._closing:
                self._closing = True
                self._send(CLOSE, payload[:2])
            assert self.transport is not None
            self.transport.loseConnection()
        elif opcode == TEXT:
            self._fail_connection()  # the server never sends text
        # PONG, or a continuation of a dropped text message: nothing to do.

    def _fail_connection(self) -> None:
        self._open = False
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(client_frame(opcode, payload))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._open = False
        self.inner.connectionLost(reason)

    # -- the transport of ``inner`` --------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Whole length-prefixed frames, one message each (what ``inner`` writes)."""
        if not self._open or self._closing:
            return
        offset = 0
        while offset < len(data):
            (length,) = _PREFIX.unpack_from(data, offset)
            start = offset + 4
            offset = start + length
            self._send(BINARY, data[start:offset])

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """A close (1000), then the socket is closed."""
        self.disconnecting = True
        if self._open and not self._closing:
            self._closing = True
            self._send(CLOSE, CLOSE_NORMAL.to_bytes(2, "big"))
        if self.transport is not None:
            self.transport.loseConnection()

    def abortConnection(self) -> None:
        self.disconnecting = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def setTcpNoDelay(self, enabled: bool) -> None:
        assert self.transport is not None
        self.transport.setTcpNoDelay(enabled)  # type: ignore[attr-defined]

    def getPeer(self) -> Any:
        assert self.transport is not None
        return self.transport.getPeer()

    def getHost(self) -> Any:
        assert self.transport is not None
        return self.transport.getHost()
