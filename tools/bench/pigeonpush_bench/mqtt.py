"""The part of MQTT 3.1.1 the Mosquitto baseline needs, as bytes.

Clients CONNECT (clean session), SUBSCRIBE to one topic at QoS 1, receive
PUBLISH and answer PUBACK, and send PINGREQ; the publisher sends QoS 1 PUBLISH
and counts PUBACKs. Packet layouts are those of the OASIS MQTT 3.1.1 standard,
section 3; nothing else of the protocol is implemented.
"""

from __future__ import annotations

import struct

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

#: The largest remaining length MQTT can express (four length bytes).
MAX_REMAINING = 268_435_455

_U16 = struct.Struct(">H")


class MqttError(ValueError):
    """Bytes that are not the MQTT this module speaks."""


def remaining_length(size: int) -> bytes:
    """The variable-length encoding of a packet's remaining length."""
    if not 0 <= size <= MAX_REMAINING:
        raise MqttError(f"remaining length {size} out of range")
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | 0x80 if size else byte)
        if not size:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise MqttError("string longer than 65,535 bytes")
    return _U16.pack(len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + remaining_length(len(body)) + body


def connect(client_id: str, keepalive: int, clean_session: bool = True) -> bytes:
    if not 0 <= keepalive <= 0xFFFF:
        raise MqttError(f"keepalive {keepalive} out of range")
    flags = 0x02 if clean_session else 0x00
    body = _string("MQTT") + bytes((4, flags)) + _U16.pack(keepalive) + _string(client_id)
    return _packet(CONNECT << 4, body)


def subscribe(packet_id: int, topic: str, qos: int = 1) -> bytes:
    return _packet((SUBSCRIBE << 4) | 0x02, _U16.pack(packet_id) + _string(topic) + bytes((qos,)))


def publish(
    topic: str, payload: bytes, qos: int = 1, packet_id: int = 0, dup: bool = False
) -> bytes:
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1)
    head = _string(topic)
    if qos:
        if not 0 < packet_id <= 0xFFFF:
            raise MqttError(f"packet id {packet_id} out of range")
        head += _U16.pack(packet_id)
    return _packet(first, head + payload)


def puback(packet_id: int) -> bytes:
    return b"\x40\x02" + _U16.pack(packet_id)


class PacketReader:
    """Splits a byte stream into ``(first byte, body)`` packets.

    A packet whose remaining length exceeds ``max_size`` raises MqttError (the
    connection should then be closed); nothing is buffered past it.
    """

    __slots__ = ("_buffer", "max_size")

    def __init__(self, max_size: int = 1 << 20) -> None:
        self._buffer = b""
        self.max_size = max_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The packets completed by ``data``, in order."""
        buffer = self._buffer + data if self._buffer else data
        size = len(buffer)
        offset = 0
        packets: list[tuple[int, bytes]] = []
        while size - offset >= 2:
            length = 0
            multiplier = 1
            index = offset + 1
            complete = False
            while index < size:
                byte = buffer[index]
                length += (byte & 0x7F) * multiplier
                index += 1
                if not byte & 0x80:
                    complete = True
                    break
                multiplier *= 128
                if multiplier > 128**3:
                    self._buffer = b""
                    raise MqttError("malformed remaining length")
            if not complete:
                break
            if length > self.max_size:
                self._buffer = b""
                raise MqttError(f"packet of {length} bytes exceeds {self.max_size}")
            end = index + length
            if end > size:
                break
            packets.append((buffer[offset], buffer[index:end]))
            offset = end
        self._buffer = buffer[offset:] if offset else buffer
        return packets


def parse_connack(body: bytes) -> int:
    """The CONNACK return code (0 = accepted)."""
    if len(body) != 2:
        raise MqttError("CONNACK body is not 2 bytes")
    return body[1]


def parse_suback(body: bytes) -> tuple[int, bytes]:
    """The SUBACK packet id and return codes (0x80 = refused)."""
    if len(body) < 3:
        raise MqttError("SUBACK body too short")
    return _U16.unpack_from(body)[0], body[2:]


def parse_puback(body: bytes) -> int:
    if len(body) != 2:
        raise MqttError("PUBACK body is not 2 bytes")
    packet_id: int = _U16.unpack(body)[0]
    return packet_id


def parse_publish(first: int, body: bytes) -> tuple[str, int, bytes]:
    """Topic, packet id (0 at QoS 0) and payload of a PUBLISH."""
    if len(body) < 2:
        raise MqttError("PUBLISH body too short")
    (size,) = _U16.unpack_from(body)
    end = 2 + size
    qos = (first >> 1) & 0x03
    if qos == 3:
        raise MqttError("PUBLISH with QoS 3")
    try:
        topic = body[2:end].decode()
    except UnicodeDecodeError as e:
        raise MqttError(f"PUBLISH topic is not UTF-8: {e}") from e
    if qos:
        if len(body) < end + 2:
            raise MqttError("PUBLISH body too short for its packet id")
        (packet_id,) = _U16.unpack_from(body, end)
        return topic, packet_id, body[end + 2 :]
    if len(body) < end:
        raise MqttError("PUBLISH body too short for its topic")
    return topic, 0, body[end:]
