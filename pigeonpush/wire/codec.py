"""Frames to bytes and back (the layouts are specified in docs/protocol.rst).

A frame on the wire is a 4-byte big-endian length, one type byte, then the
body. Bodies are fixed-width big-endian integers and strings written as a
uint16 byte length followed by that many bytes of UTF-8. There are no optional
fields, no padding and no alignment, so a decoder in any language is a handful
of reads; trailing bytes are an error, so every frame has exactly one encoding.

Decoding is optimistic: each type's decoder reads its fields without checking
bounds one by one and lets indexing, ``struct`` and the UTF-8 decoder fail;
only then does ``_explain`` walk the body again, field by field, to say
precisely what is wrong. Valid input, the hot path, pays for no check it does
not need.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Final, NoReturn

from pigeonpush.identifiers import TOPIC, is_topic
from pigeonpush.wire.frames import (
    MAX_UPLINK_DATA_BYTES,
    MAX_UPLINK_ID_BYTES,
    MAX_UPLINK_PAIRS,
    PING,
    PONG,
    Ack,
    Auth,
    AuthFail,
    AuthFailCode,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    FrameType,
    Kick,
    KickReason,
    Missed,
    Nack,
    Ping,
    Pong,
    Push,
    Subscribe,
    Subscription,
    SubscriptionCode,
    Unsubscribe,
    Uplink,
    UplinkAck,
)

#: Default limit of the length prefix value (type byte + body), in bytes.
DEFAULT_MAX_FRAME: Final = 8192
#: The smallest frame limit a peer may announce or configure: AUTH must always fit.
MIN_MAX_FRAME: Final = 1024
#: The largest frame limit: the length prefix is an unsigned 32-bit integer.
MAX_MAX_FRAME: Final = 0xFFFFFFFF
#: The protocol versions this implementation can speak (a server answers
#: AUTH_FAIL VERSION to any other).
SUPPORTED_VERSIONS: Final = frozenset({1, 2, 3})
#: Longest string (in UTF-8 bytes): its length is a uint16.
MAX_STRING_BYTES: Final = 0xFFFF
#: Most extras pairs in one PUSH: their count is a uint16.
MAX_EXTRAS: Final = 0xFFFF
#: Largest uint32 (heartbeat in milliseconds, frame limit, ACK window).
MAX_UINT32: Final = 0xFFFFFFFF
#: Size of the length prefix.
PREFIX_BYTES: Final = 4


class DecodeError(ValueError):
    """A frame that cannot be decoded; ``code`` is what the ERROR frame says."""

    code: ErrorCode

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class EncodeError(ValueError):
    """A frame that has no encoding (a string too long, a value out of range)."""


_U16 = struct.Struct(">H")
_PREFIX_TYPE = struct.Struct(">IB")  # length prefix + type byte
_PREFIX_TYPE_U16 = struct.Struct(">IBH")  # ... + the first string's length (PUSH, ACK)
_PREFIX_TYPE_U8_U16 = struct.Struct(">IBBH")  # ... + a code + a string's length
_AUTH_OK_FRAME = struct.Struct(">IBIII")
_AUTH_OK_BODY = struct.Struct(">III")

_U32 = struct.Struct(">I")
_pack_u16 = _U16.pack
#: uint16 encodings of string lengths up to the default frame limit: indexing
#: this is several times cheaper than a ``struct`` call (about 350 KB).
_LEN16: Final = tuple(n.to_bytes(2, "big") for n in range(DEFAULT_MAX_FRAME))
_unpack_u16 = _U16.unpack_from
_unpack_u8_u16 = struct.Struct(">BH").unpack_from

_STRING = "str"
_U8_FIELD = "u8"
_U16_FIELD = "u16"
_U32_FIELD = "u32"
_MAP = "map"

#: Body layouts, by type: (field name on the wire, kind). Used to explain errors
#: (the decoders below read the same layouts inline, for speed).
_LAYOUTS: Final[dict[FrameType, tuple[tuple[str, str], ...]]] = {
    FrameType.AUTH: (("version", _U16_FIELD), ("clientId", _STRING), ("token", _STRING)),
    FrameType.AUTH_OK: (
        ("heartbeatMs", _U32_FIELD),
        ("maxFrame", _U32_FIELD),
        ("ackWindow", _U32_FIELD),
    ),
    FrameType.AUTH_FAIL: (("code", _U8_FIELD), ("reason", _STRING)),
    FrameType.PING: (),
    FrameType.PONG: (),
    FrameType.PUSH: (
        ("messageId", _STRING),
        ("title", _STRING),
        ("text", _STRING),
        ("extras", _MAP),
    ),
    FrameType.ACK: (("messageId", _STRING),),
    FrameType.KICK: (("reason", _U8_FIELD), ("text", _STRING)),
    FrameType.ERROR: (("code", _U8_FIELD), ("text", _STRING)),
    FrameType.NACK: (("messageId", _STRING), ("retryAfterMs", _U32_FIELD)),
    FrameType.UPLINK: (("uplinkId", _STRING), ("data", _MAP)),
    FrameType.UPLINK_ACK: (("uplinkId", _STRING),),
    FrameType.MISSED: (("topic", _STRING),),
    FrameType.SUBSCRIBE: (("requestId", _U32_FIELD), ("topic", _STRING)),
    FrameType.UNSUBSCRIBE: (("requestId", _U32_FIELD), ("topic", _STRING)),
    FrameType.SUBSCRIPTION: (
        ("requestId", _U32_FIELD),
        ("code", _U8_FIELD),
        ("reason", _STRING),
    ),
}
_FIXED_WIDTH = {_U8_FIELD: 1, _U16_FIELD: 2, _U32_FIELD: 4}


# --- encoding -----------------------------------------------------------------


def _utf8(value: str, field: str) -> bytes:
    try:
        raw = value.encode()
    except UnicodeEncodeError as e:
        raise EncodeError(f"{field} is not encodable as UTF-8 (position {e.start})") from None
    except AttributeError:
        raise EncodeError(f"{field} must be a str, not {type(value).__name__}") from None
    if len(raw) > MAX_STRING_BYTES:
        raise EncodeError(f"{field} is {len(raw)} bytes of UTF-8; the limit is {MAX_STRING_BYTES}")
    return raw


def encode_push(
    message_id: str, title: str, text: str, extras: Mapping[str, str], topic: str = ""
) -> bytes:
    """A whole PUSH frame, without building a ``Push`` first (the server's hot
    path); the same bytes as ``encode(Push(message_id, title, text, extras,
    topic))``. A topic (version 3) is one more string after the extras; with
    none the frame is the version 1 and 2 PUSH."""
    if topic:
        return _with_topic(encode_push(message_id, title, text, extras), topic)
    try:
        m = message_id.encode()
        t = title.encode()
        x = text.encode()
        if extras:
            tail = _LEN16[len(extras)]
            for key, value in extras.items():
                k = key.encode()
                v = value.encode()
                tail += _LEN16[len(k)] + k + _LEN16[len(v)] + v
        else:
            tail = b"\x00\x00"
        return (
            _PREFIX_TYPE_U16.pack(7 + len(m) + len(t) + len(x) + len(tail), FrameType.PUSH, len(m))
            + m
            + _LEN16[len(t)]
            + t
            + _LEN16[len(x)]
            + x
            + tail
        )
    except IndexError:  # a length past the table
        return _encode_long_push(message_id, title, text, extras)
    except (struct.error, UnicodeEncodeError, AttributeError):
        _check_push(message_id, title, text, extras)
        raise  # pragma: no cover  (_check_push raises for everything caught here)


def _with_topic(frame: bytes, topic: str) -> bytes:
    """``frame`` (a whole PUSH) with the topic string appended, its length prefix updated."""
    raw = _utf8(topic, "topic")
    body = frame[4:] + _pack_u16(len(raw)) + raw
    return _U32.pack(len(body)) + body


def _encode_long_push(message_id: str, title: str, text: str, extras: Mapping[str, str]) -> bytes:
    """encode_push for strings of any length (up to the uint16 limit)."""
    try:
        m = message_id.encode()
        t = title.encode()
        x = text.encode()
        tail = _pack_u16(len(extras))
        for key, value in extras.items():
            k = key.encode()
            v = value.encode()
            tail += _pack_u16(len(k)) + k + _pack_u16(len(v)) + v
        return (
            _PREFIX_TYPE_U16.pack(7 + len(m) + len(t) + len(x) + len(tail), FrameType.PUSH, len(m))
            + m
            + _pack_u16(len(t))
            + t
            + _pack_u16(len(x))
            + x
            + tail
        )
    except (struct.error, UnicodeEncodeError, AttributeError):
        # Rare: find the culprit and say which field it is.
        _check_push(message_id, title, text, extras)
        raise  # pragma: no cover  (_check_push raises for everything caught here)


def _check_push(message_id: str, title: str, text: str, extras: Mapping[str, str]) -> None:
    _utf8(message_id, "messageId")
    _utf8(title, "title")
    _utf8(text, "text")
    if not isinstance(extras, Mapping):
        raise EncodeError(f"extras must be a mapping, not {type(extras).__name__}")
    if len(extras) > MAX_EXTRAS:
        raise EncodeError(f"extras has {len(extras)} pairs; the limit is {MAX_EXTRAS}")
    for key, value in extras.items():
        _utf8(key, "extras key")
        _utf8(value, "extras value")


def _encode_push(frame: Push) -> bytes:
    return encode_push(frame.message_id, frame.title, frame.text, frame.extras, frame.topic)


def encode_ack(message_id: str) -> bytes:
    """A whole ACK frame, without building an ``Ack`` first (a client ACKs
    every PUSH); the same bytes as ``encode(Ack(message_id))``."""
    try:
        m = message_id.encode()
        return _PREFIX_TYPE_U16.pack(3 + len(m), FrameType.ACK, len(m)) + m
    except (struct.error, UnicodeEncodeError, AttributeError):
        _utf8(message_id, "messageId")  # says which of the three it is
        raise  # pragma: no cover  (_utf8 raises for everything caught here)


def _encode_ack(frame: Ack) -> bytes:
    return encode_ack(frame.message_id)


def _encode_request(frame: Subscribe | Unsubscribe) -> bytes:
    kind = FrameType.SUBSCRIBE if isinstance(frame, Subscribe) else FrameType.UNSUBSCRIBE
    if not 0 <= frame.request_id <= 0xFFFFFFFF:
        raise EncodeError(f"requestId must be 0 to 4294967295, not {frame.request_id}")
    raw = _utf8(frame.topic, "topic")
    body = bytes((kind,)) + _U32.pack(frame.request_id) + _pack_u16(len(raw)) + raw
    return _U32.pack(len(body)) + body


def _encode_subscription(frame: Subscription) -> bytes:
    if not 0 <= frame.request_id <= 0xFFFFFFFF:
        raise EncodeError(f"requestId must be 0 to 4294967295, not {frame.request_id}")
    raw = _utf8(frame.reason, "reason")
    code = SubscriptionCode(frame.code)
    body = bytes((FrameType.SUBSCRIPTION,)) + _U32.pack(frame.request_id) + bytes((code,))
    body += _pack_u16(len(raw)) + raw
    return _U32.pack(len(body)) + body


def _encode_missed(frame: Missed) -> bytes:
    raw = _utf8(frame.topic, "topic")
    return _PREFIX_TYPE_U16.pack(3 + len(raw), FrameType.MISSED, len(raw)) + raw


def encode_nack(message_id: str, retry_after: float = 0.0) -> bytes:
    """A whole NACK frame; the same bytes as ``encode(Nack(message_id, retry_after))``."""
    retry_ms = retry_after_ms(retry_after)
    m = _utf8(message_id, "messageId")
    return _PREFIX_TYPE_U16.pack(7 + len(m), FrameType.NACK, len(m)) + m + _U32.pack(retry_ms)


def retry_after_ms(retry_after: float) -> int:
    """The wire value of a NACK's retry-after given in seconds; EncodeError
    outside 0 to 2**32 - 1 ms."""
    try:
        retry_ms = round(retry_after * 1000)
    except (TypeError, ValueError, OverflowError):
        raise EncodeError(f"retryAfter must be a number of seconds, not {retry_after!r}") from None
    if not 0 <= retry_ms <= MAX_UINT32:
        raise EncodeError(f"retryAfterMs must be 0 to {MAX_UINT32}, not {retry_ms}")
    return retry_ms


def _encode_nack(frame: Nack) -> bytes:
    return encode_nack(frame.message_id, frame.retry_after)


def _encode_uplink(frame: Uplink) -> bytes:
    u = _utf8(frame.uplink_id, "uplinkId")
    data = frame.data
    if not isinstance(data, Mapping):
        raise EncodeError(f"data must be a mapping, not {type(data).__name__}")
    if len(data) > MAX_EXTRAS:
        raise EncodeError(f"data has {len(data)} pairs; the limit is {MAX_EXTRAS}")
    parts = [_PREFIX_TYPE_U16.pack(0, FrameType.UPLINK, len(u)), u, _pack_u16(len(data))]
    for key, value in data.items():
        k = _utf8(key, "data key")
        v = _utf8(value, "data value")
        parts += (_pack_u16(len(k)), k, _pack_u16(len(v)), v)
    frame_bytes = b"".join(parts)
    return _U32.pack(len(frame_bytes) - PREFIX_BYTES) + frame_bytes[PREFIX_BYTES:]


def _encode_uplink_ack(frame: UplinkAck) -> bytes:
    u = _utf8(frame.uplink_id, "uplinkId")
    return _PREFIX_TYPE_U16.pack(3 + len(u), FrameType.UPLINK_ACK, len(u)) + u


def _encode_auth(frame: Auth) -> bytes:
    version = frame.version
    if not 0 <= version <= 0xFFFF:
        raise EncodeError(f"version must be 0 to 65535, not {version}")
    c = _utf8(frame.client_id, "clientId")
    t = _utf8(frame.token, "token")
    return b"".join(
        (
            _PREFIX_TYPE.pack(7 + len(c) + len(t), FrameType.AUTH),
            _pack_u16(version),
            _pack_u16(len(c)),
            c,
            _pack_u16(len(t)),
            t,
        )
    )


def heartbeat_ms(heartbeat: float) -> int:
    """The wire value of a heartbeat interval given in seconds."""
    return round(heartbeat * 1000)


def _encode_auth_ok(frame: AuthOk) -> bytes:
    interval = heartbeat_ms(frame.heartbeat)
    _check_auth_ok(interval, frame.max_frame, frame.ack_window, EncodeError)
    return _AUTH_OK_FRAME.pack(13, FrameType.AUTH_OK, interval, frame.max_frame, frame.ack_window)


def _check_auth_ok(
    interval: int, max_frame: int, ack_window: int, error: Callable[[str], Exception]
) -> None:
    if not 1 <= interval <= MAX_UINT32:
        raise error(f"heartbeat must be 1 to {MAX_UINT32} ms, not {interval}")
    if not MIN_MAX_FRAME <= max_frame <= MAX_MAX_FRAME:
        raise error(f"maxFrame must be {MIN_MAX_FRAME} to {MAX_MAX_FRAME}, not {max_frame}")
    if not 1 <= ack_window <= MAX_UINT32:
        raise error(f"ackWindow must be 1 to {MAX_UINT32}, not {ack_window}")


def _coded(
    frame_type: FrameType, code: int, enum: type[AuthFailCode | KickReason | ErrorCode], text: str
) -> bytes:
    """AUTH_FAIL, KICK and ERROR: a one-byte code then a string."""
    try:
        enum(code)
    except ValueError:
        raise EncodeError(f"{code!r} is not a {enum.__name__}") from None
    raw = _utf8(text, "text")
    return _PREFIX_TYPE_U8_U16.pack(4 + len(raw), frame_type, code, len(raw)) + raw


def _encode_auth_fail(frame: AuthFail) -> bytes:
    return _coded(FrameType.AUTH_FAIL, frame.code, AuthFailCode, frame.reason)


def _encode_kick(frame: Kick) -> bytes:
    return _coded(FrameType.KICK, frame.reason, KickReason, frame.text)


def _encode_error(frame: Error) -> bytes:
    return _coded(FrameType.ERROR, frame.code, ErrorCode, frame.text)


#: Pre-encoded constant frames.
ENCODED_PING: Final = _PREFIX_TYPE.pack(1, FrameType.PING)
ENCODED_PONG: Final = _PREFIX_TYPE.pack(1, FrameType.PONG)

_ENCODERS: Final[dict[type, Callable[[object], bytes]]] = {
    Push: _encode_push,  # type: ignore[dict-item]
    Ack: _encode_ack,  # type: ignore[dict-item]
    Ping: lambda frame: ENCODED_PING,
    Pong: lambda frame: ENCODED_PONG,
    Auth: _encode_auth,  # type: ignore[dict-item]
    AuthOk: _encode_auth_ok,  # type: ignore[dict-item]
    AuthFail: _encode_auth_fail,  # type: ignore[dict-item]
    Kick: _encode_kick,  # type: ignore[dict-item]
    Error: _encode_error,  # type: ignore[dict-item]
    Nack: _encode_nack,  # type: ignore[dict-item]
    Uplink: _encode_uplink,  # type: ignore[dict-item]
    UplinkAck: _encode_uplink_ack,  # type: ignore[dict-item]
    Missed: _encode_missed,  # type: ignore[dict-item]
    Subscribe: _encode_request,  # type: ignore[dict-item]
    Unsubscribe: _encode_request,  # type: ignore[dict-item]
    Subscription: _encode_subscription,  # type: ignore[dict-item]
}


def encode(frame: Frame) -> bytes:
    """The whole frame: 4-byte length prefix, type byte and body.

    Raises EncodeError for a value the wire cannot carry (a string over 65,535
    bytes of UTF-8, an unpaired surrogate, a number out of range).
    """
    try:
        encoder = _ENCODERS[type(frame)]
    except KeyError:
        raise TypeError(f"not a frame: {frame!r}") from None
    return encoder(frame)


def uplink_problem(uplink_id: str, data: Mapping[str, str]) -> DecodeError | None:
    """What makes an UPLINK unacceptable beyond its encoding (the limits of
    docs/protocol.rst), as the error to answer: MALFORMED for the id's length
    or the number of pairs, TOO_LARGE for the data's size; None if nothing."""
    size = len(uplink_id.encode())
    if not 1 <= size <= MAX_UPLINK_ID_BYTES:
        return DecodeError(
            ErrorCode.MALFORMED,
            f"uplinkId must be 1 to {MAX_UPLINK_ID_BYTES} bytes of UTF-8, not {size}",
        )
    if len(data) > MAX_UPLINK_PAIRS:
        return DecodeError(
            ErrorCode.MALFORMED, f"data has {len(data)} pairs; the limit is {MAX_UPLINK_PAIRS}"
        )
    total = sum(len(key.encode()) + len(value.encode()) for key, value in data.items())
    if total > MAX_UPLINK_DATA_BYTES:
        return DecodeError(
            ErrorCode.TOO_LARGE,
            f"data is {total} bytes of UTF-8; the limit is {MAX_UPLINK_DATA_BYTES}",
        )
    return None


# --- decoding -----------------------------------------------------------------


def _decode_push(data: bytes) -> Push:
    # Each string: a big-endian uint16 length read byte by byte (cheaper than
    # a struct call), then that many bytes of UTF-8.
    try:
        end = 3 + (data[1] << 8 | data[2])
        message_id = data[3:end].decode()
        start = end + 2
        end = start + (data[end] << 8 | data[end + 1])
        title = data[start:end].decode()
        start = end + 2
        end = start + (data[end] << 8 | data[end + 1])
        text = data[start:end].decode()
        count = data[end] << 8 | data[end + 1]
        end += 2
        extras: dict[str, str] = {}
        for _ in range(count):
            start = end + 2
            end = start + (data[end] << 8 | data[end + 1])
            key = data[start:end].decode()
            start = end + 2
            end = start + (data[end] << 8 | data[end + 1])
            extras[key] = data[start:end].decode()
        topic = ""
        if end < len(data):  # version 3: the topic it came through
            start = end + 2
            end = start + (data[end] << 8 | data[end + 1])
            topic = data[start:end].decode()
    except (IndexError, UnicodeDecodeError):
        _explain(data)
    if end != len(data):
        _explain(data)
    if len(extras) != count:
        raise DecodeError(ErrorCode.MALFORMED, "PUSH: extras has a key more than once")
    return Push(message_id, title, text, extras, topic)


def ack_message_id(payload: bytes) -> str:
    """The messageId of an ACK ``payload`` (type byte and body) without
    building an ``Ack``: a server reads one per PUSH it writes. Raises
    DecodeError as ``decode`` does."""
    try:
        end = 3 + (payload[1] << 8 | payload[2])
        message_id = payload[3:end].decode()
    except (IndexError, UnicodeDecodeError):
        _explain(payload)
    if end != len(payload):
        _explain(payload)
    return message_id


def _decode_ack(data: bytes) -> Ack:
    return Ack(ack_message_id(data))


def _decode_request(data: bytes) -> Subscribe | Unsubscribe:
    try:
        (request_id,) = _U32.unpack_from(data, 1)
        end = 7 + (data[5] << 8 | data[6])
        topic = data[7:end].decode()
    except (IndexError, UnicodeDecodeError, struct.error):
        _explain(data)
    if end != len(data):
        _explain(data)
    if not is_topic(topic):
        name = FrameType(data[0]).name
        raise DecodeError(ErrorCode.MALFORMED, f"{name}: the topic must be {TOPIC.text}")
    if data[0] == FrameType.SUBSCRIBE:
        return Subscribe(request_id, topic)
    return Unsubscribe(request_id, topic)


def _decode_subscription(data: bytes) -> Subscription:
    try:
        (request_id,) = _U32.unpack_from(data, 1)
        code = data[5]
        end = 8 + (data[6] << 8 | data[7])
        reason = data[8:end].decode()
    except (IndexError, UnicodeDecodeError, struct.error):
        _explain(data)
    if end != len(data):
        _explain(data)
    try:
        return Subscription(request_id, SubscriptionCode(code), reason)
    except ValueError:
        _unknown_code(FrameType.SUBSCRIPTION, code)


def _decode_missed(data: bytes) -> Missed:
    try:
        end = 3 + (data[1] << 8 | data[2])
        topic = data[3:end].decode()
    except (IndexError, UnicodeDecodeError):
        _explain(data)
    if end != len(data):
        _explain(data)
    return Missed(topic)


def _decode_nack(data: bytes) -> Nack:
    try:
        end = 3 + (data[1] << 8 | data[2])
        message_id = data[3:end].decode()
        (retry_ms,) = _U32.unpack_from(data, end)
    except (IndexError, UnicodeDecodeError, struct.error):
        _explain(data)
    if end + 4 != len(data):
        _explain(data)
    return Nack(message_id, retry_ms / 1000)


def _decode_uplink(data: bytes) -> Uplink:
    try:
        end = 3 + (data[1] << 8 | data[2])
        uplink_id = data[3:end].decode()
        count = data[end] << 8 | data[end + 1]
        end += 2
        pairs: dict[str, str] = {}
        for _ in range(count):
            start = end + 2
            end = start + (data[end] << 8 | data[end + 1])
            key = data[start:end].decode()
            start = end + 2
            end = start + (data[end] << 8 | data[end + 1])
            pairs[key] = data[start:end].decode()
    except (IndexError, UnicodeDecodeError):
        _explain(data)
    if end != len(data):
        _explain(data)
    if len(pairs) != count:
        raise DecodeError(ErrorCode.MALFORMED, "UPLINK: data has a key more than once")
    return Uplink(uplink_id, pairs)


def _decode_uplink_ack(data: bytes) -> UplinkAck:
    return UplinkAck(ack_message_id(data))


def _decode_ping(data: bytes) -> Ping:
    if len(data) != 1:
        _explain(data)
    return PING


def _decode_pong(data: bytes) -> Pong:
    if len(data) != 1:
        _explain(data)
    return PONG


def _decode_auth(data: bytes) -> Auth:
    try:
        (version,) = _unpack_u16(data, 1)
    except struct.error:
        _explain(data)
    if version not in SUPPORTED_VERSIONS:
        # The rest of the body is laid out as that version says; only the
        # version matters now (the answer is AUTH_FAIL VERSION).
        return Auth("", "", version)
    try:
        (size,) = _unpack_u16(data, 3)
        end = 5 + size
        client_id = data[5:end].decode()
        (size,) = _unpack_u16(data, end)
        start = end + 2
        end = start + size
        token = data[start:end].decode()
    except (struct.error, UnicodeDecodeError):
        _explain(data)
    if end != len(data):
        _explain(data)
    return Auth(client_id, token, version)


def _decode_auth_ok(data: bytes) -> AuthOk:
    if len(data) != 13:
        _explain(data)
    interval, max_frame, ack_window = _AUTH_OK_BODY.unpack_from(data, 1)
    _check_auth_ok(interval, max_frame, ack_window, _malformed_auth_ok)
    return AuthOk(interval / 1000, max_frame, ack_window)


def _malformed_auth_ok(message: str) -> DecodeError:
    return DecodeError(ErrorCode.MALFORMED, f"AUTH_OK: {message}")


def _decode_coded(data: bytes) -> tuple[int, str]:
    """The code and string of AUTH_FAIL, KICK and ERROR."""
    try:
        code, size = _unpack_u8_u16(data, 1)
        end = 4 + size
        text = data[4:end].decode()
    except (struct.error, UnicodeDecodeError):
        _explain(data)
    if end != len(data):
        _explain(data)
    return code, text


def _unknown_code(frame_type: FrameType, code: int) -> NoReturn:
    raise DecodeError(ErrorCode.MALFORMED, f"{frame_type.name}: unknown code {code}") from None


def _decode_auth_fail(data: bytes) -> AuthFail:
    code, text = _decode_coded(data)
    try:
        return AuthFail(AuthFailCode(code), text)
    except ValueError:
        _unknown_code(FrameType.AUTH_FAIL, code)


def _decode_kick(data: bytes) -> Kick:
    code, text = _decode_coded(data)
    try:
        return Kick(KickReason(code), text)
    except ValueError:
        _unknown_code(FrameType.KICK, code)


def _decode_error(data: bytes) -> Error:
    code, text = _decode_coded(data)
    try:
        return Error(ErrorCode(code), text)
    except ValueError:
        _unknown_code(FrameType.ERROR, code)


def _unknown_type(data: bytes) -> NoReturn:
    raise DecodeError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type 0x{data[0]:02x}")


#: Decoders indexed by type byte (a tuple lookup is the cheapest dispatch).
_DECODERS: Final[tuple[Callable[[bytes], Frame], ...]] = tuple(
    {
        FrameType.AUTH: _decode_auth,
        FrameType.AUTH_OK: _decode_auth_ok,
        FrameType.AUTH_FAIL: _decode_auth_fail,
        FrameType.PING: _decode_ping,
        FrameType.PONG: _decode_pong,
        FrameType.PUSH: _decode_push,
        FrameType.ACK: _decode_ack,
        FrameType.KICK: _decode_kick,
        FrameType.ERROR: _decode_error,
        FrameType.NACK: _decode_nack,
        FrameType.UPLINK: _decode_uplink,
        FrameType.UPLINK_ACK: _decode_uplink_ack,
        FrameType.MISSED: _decode_missed,
        FrameType.SUBSCRIBE: _decode_request,
        FrameType.UNSUBSCRIBE: _decode_request,
        FrameType.SUBSCRIPTION: _decode_subscription,
    }.get(type_byte, _unknown_type)  # type: ignore[call-overload]
    for type_byte in range(256)
)


def decode(payload: bytes) -> Frame:
    """The frame in ``payload``: the bytes after the length prefix (type byte
    and body).

    Raises DecodeError: ``code`` UNKNOWN_TYPE for a type byte this version does
    not define, MALFORMED for anything else (a body cut short, trailing bytes,
    invalid UTF-8, an unknown code, a repeated extras key, a limit out of range).
    """
    if not payload:
        raise DecodeError(ErrorCode.MALFORMED, "empty frame: no type byte")
    return _DECODERS[payload[0]](payload)


def _explain(data: bytes) -> NoReturn:
    """Raise the DecodeError that says what is wrong with this body: the first
    field that runs past the end or is not UTF-8, or bytes after the last one."""
    frame_type = FrameType(data[0])
    name = frame_type.name
    end = len(data)
    offset = 1
    for field, kind in _LAYOUTS[frame_type]:
        if kind in _FIXED_WIDTH:
            offset += _FIXED_WIDTH[kind]
            if offset > end:
                raise DecodeError(ErrorCode.MALFORMED, f"{name}: {field} is cut short")
        elif kind == _STRING:
            offset = _explain_string(data, offset, name, field)
        else:  # _MAP
            if offset + 2 > end:
                raise DecodeError(ErrorCode.MALFORMED, f"{name}: {field} count is cut short")
            (count,) = _unpack_u16(data, offset)
            offset += 2
            for index in range(count):
                offset = _explain_string(data, offset, name, f"{field} key {index}")
                offset = _explain_string(data, offset, name, f"{field} value {index}")
    if frame_type is FrameType.PUSH and offset < end:  # version 3's topic
        offset = _explain_string(data, offset, name, "topic")
    if offset != end:
        extra = end - offset
        raise DecodeError(
            ErrorCode.MALFORMED,
            f"{name}: {extra} byte{'' if extra == 1 else 's'} after the last field",
        )
    raise AssertionError(f"{name}: _explain found nothing wrong")  # pragma: no cover


def _explain_string(data: bytes, offset: int, name: str, field: str) -> int:
    if offset + 2 > len(data):
        raise DecodeError(ErrorCode.MALFORMED, f"{name}: {field} length is cut short")
    size: int = _unpack_u16(data, offset)[0]
    start = offset + 2
    end = start + size
    if end > len(data):
        raise DecodeError(
            ErrorCode.MALFORMED,
            f"{name}: {field} is {size} bytes but only {len(data) - start} remain",
        )
    try:
        data[start:end].decode()
    except UnicodeDecodeError as e:
        raise DecodeError(
            ErrorCode.MALFORMED,
            f"{name}: {field} is not valid UTF-8 (byte {e.start} of the string)",
        ) from None
    return end
