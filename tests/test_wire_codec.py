"""The codec: round trips, one encoding per frame, and a clear error for every bad input."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from pigeonpush.wire.codec import (
    DEFAULT_MAX_FRAME,
    ENCODED_PING,
    ENCODED_PONG,
    MAX_STRING_BYTES,
    SUPPORTED_VERSIONS,
    DecodeError,
    EncodeError,
    ack_message_id,
    decode,
    encode,
    encode_ack,
    encode_nack,
    encode_push,
    uplink_problem,
)
from pigeonpush.wire.frames import (
    MAX_UPLINK_DATA_BYTES,
    MAX_UPLINK_PAIRS,
    PING,
    PONG,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    AuthFail,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    FrameType,
    Kick,
    KickReason,
    Nack,
    Push,
    Uplink,
    UplinkAck,
)
from support.wire_strategies import frames, pushes, untimed


def payload_of(frame: Frame) -> bytes:
    """The bytes after the length prefix, checking the prefix on the way."""
    data = encode(frame)
    (length,) = struct.unpack("!I", data[:4])
    assert length == len(data) - 4
    return data[4:]


@untimed
@given(frames)
def test_every_frame_round_trips(frame: Frame) -> None:
    assert decode(payload_of(frame)) == frame


@untimed
@given(frames)
def test_the_type_byte_follows_the_prefix(frame: Frame) -> None:
    expected = {
        Auth: FrameType.AUTH,
        AuthOk: FrameType.AUTH_OK,
        AuthFail: FrameType.AUTH_FAIL,
        type(PING): FrameType.PING,
        type(PONG): FrameType.PONG,
        Push: FrameType.PUSH,
        Ack: FrameType.ACK,
        Kick: FrameType.KICK,
        Error: FrameType.ERROR,
        Nack: FrameType.NACK,
    }[type(frame)]
    assert payload_of(frame)[0] == expected


@untimed
@given(pushes)
def test_encode_push_is_encode_of_push(push: Push) -> None:
    assert encode_push(push.message_id, push.title, push.text, push.extras) == encode(push)


@untimed
@given(st.text(max_size=200))
def test_encode_ack_is_encode_of_ack(message_id: str) -> None:
    try:
        expected = encode(Ack(message_id))
    except EncodeError:
        with pytest.raises(EncodeError):
            encode_ack(message_id)
        return
    assert encode_ack(message_id) == expected


@pytest.mark.parametrize("payload", [b"\x06\x00\x02\xff\xfe", b"\x06\x00\x05m1", b"\x06\x00"])
def test_ack_message_id_reads_what_decode_reads(payload: bytes) -> None:
    assert ack_message_id(encode_ack("m-1")[4:]) == decode(encode_ack("m-1")[4:]).message_id  # type: ignore[union-attr]
    with pytest.raises(DecodeError) as read:
        ack_message_id(payload)
    with pytest.raises(DecodeError) as decoded:
        decode(payload)
    assert str(read.value) == str(decoded.value)


def test_encode_ack_explains_what_it_cannot_carry() -> None:
    with pytest.raises(EncodeError, match=r"^messageId is 70000 bytes of UTF-8"):
        encode_ack("x" * 70000)
    with pytest.raises(EncodeError, match=r"^messageId is not encodable as UTF-8"):
        encode_ack("\ud800")
    with pytest.raises(EncodeError, match=r"^messageId must be a str, not int"):
        encode_ack(7)  # type: ignore[arg-type]


def test_encode_push_handles_strings_past_its_length_table() -> None:
    """Strings of 8192 bytes and more take the general path, with the same layout."""
    long_text = "x" * 9000 + "\u00e9" * 20000  # 49,000 bytes
    push = Push("id", "t", long_text, {"k" * 8192: "v" * 10000})
    data = encode_push(push.message_id, push.title, push.text, push.extras)
    assert decode(data[4:]) == push
    assert data == encode(push)


def test_constant_frames_are_the_encoded_ping_and_pong() -> None:
    assert ENCODED_PING == encode(PING) == bytes.fromhex("00000001 04")
    assert ENCODED_PONG == encode(PONG) == bytes.fromhex("00000001 05")
    assert decode(ENCODED_PING[4:]) is PING
    assert decode(ENCODED_PONG[4:]) is PONG


def test_heartbeat_travels_as_whole_milliseconds() -> None:
    data = encode(AuthOk(heartbeat=29.9996, max_frame=DEFAULT_MAX_FRAME, ack_window=1))
    assert data[5:9] == (30000).to_bytes(4, "big")
    frame = decode(data[4:])
    assert isinstance(frame, AuthOk)
    assert frame.heartbeat == 30.0


def test_extras_keep_their_order_on_the_wire() -> None:
    one = encode(Push("m", "", "", {"a": "1", "b": "2"}))
    other = encode(Push("m", "", "", {"b": "2", "a": "1"}))
    assert one != other
    assert decode(one[4:]) == decode(other[4:])


def test_strings_may_be_empty_or_as_long_as_the_uint16_allows() -> None:
    longest = "\u00e9" * (MAX_STRING_BYTES // 2) + "x"  # exactly 65,535 bytes
    frame = Push("", "", longest, {"": ""})
    assert decode(payload_of(frame)) == frame


def test_auth_of_an_unsupported_version_decodes_to_its_version_only() -> None:
    """A server must be able to answer AUTH_FAIL VERSION to any future client."""
    assert PROTOCOL_VERSION in SUPPORTED_VERSIONS
    body = bytes.fromhex("01 0007") + b"whatever version 7 puts here"
    assert decode(body) == Auth("", "", 7)


@untimed
@given(st.data())
def test_decoding_any_bytes_gives_a_frame_or_a_decode_error(data: st.DataObject) -> None:
    """Mutations of valid frames: decode never raises anything but DecodeError,
    and whatever it accepts has exactly the bytes it came from as its encoding."""
    payload = bytearray(payload_of(data.draw(frames, label="frame")))
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]), label="action")
        position = data.draw(st.integers(0, len(payload)), label="position")
        if action == "flip" and position < len(payload):
            payload[position] = data.draw(st.integers(0, 255), label="byte")
        elif action == "cut":
            del payload[position:]
        else:
            payload[position:position] = data.draw(st.binary(min_size=1, max_size=3))
    try:
        frame = decode(bytes(payload))
    except DecodeError as e:
        assert e.code in (ErrorCode.MALFORMED, ErrorCode.UNKNOWN_TYPE)
        assert str(e)
        return
    if isinstance(frame, Auth) and frame.version not in SUPPORTED_VERSIONS:
        return  # only the version of such an AUTH is read
    assert payload_of(frame) == bytes(payload)


@untimed
@given(st.binary(max_size=64))
@example(b"")
def test_decoding_random_bytes_never_raises_anything_else(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(payload)


def decode_error(hex_payload: str) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(bytes.fromhex(hex_payload))
    return info.value


@pytest.mark.parametrize(
    ("hex_payload", "code", "message"),
    [
        ("", ErrorCode.MALFORMED, "empty frame: no type byte"),
        ("2a", ErrorCode.UNKNOWN_TYPE, "unknown frame type 0x2a"),
        ("00 0000", ErrorCode.UNKNOWN_TYPE, "unknown frame type 0x00"),
        ("04 00", ErrorCode.MALFORMED, "PING: 1 byte after the last field"),
        ("05 0000", ErrorCode.MALFORMED, "PONG: 2 bytes after the last field"),
        ("07 0001 61 00", ErrorCode.MALFORMED, "ACK: 1 byte after the last field"),
        ("07 0005 6162", ErrorCode.MALFORMED, "ACK: messageId is 5 bytes but only 2 remain"),
        ("07 00", ErrorCode.MALFORMED, "ACK: messageId length is cut short"),
        ("07 0003 61ff62", ErrorCode.MALFORMED, "ACK: messageId is not valid UTF-8 (byte 1"),
        ("07 0003 eda080", ErrorCode.MALFORMED, "ACK: messageId is not valid UTF-8"),
        ("07 0002 c0af", ErrorCode.MALFORMED, "ACK: messageId is not valid UTF-8"),
        (
            "06 0001 6d 0001 74 0001 78 0002 0001 6b 0001 31 0001 6b 0001 32",
            ErrorCode.MALFORMED,
            "PUSH: extras has a key more than once",
        ),
        (
            "06 0001 6d 0001 74 0001 78 0002 0001 6b 0001 31",
            ErrorCode.MALFORMED,
            "PUSH: extras key 1 length is cut short",
        ),
        (
            "06 0001 6d 0001 74 0001 78 0001 0001 6b 0002 ff31",
            ErrorCode.MALFORMED,
            "PUSH: extras value 0 is not valid UTF-8",
        ),
        ("06 0001 6d 0001 74 0001 78", ErrorCode.MALFORMED, "PUSH: extras count is cut short"),
        ("06 0001 6d 0003 ffffff", ErrorCode.MALFORMED, "PUSH: title is not valid UTF-8"),
        ("01 0001 0001 61", ErrorCode.MALFORMED, "AUTH: token length is cut short"),
        ("01 00", ErrorCode.MALFORMED, "AUTH: version is cut short"),
        ("02 00000000 00002000 00000020", ErrorCode.MALFORMED, "AUTH_OK: heartbeat must be"),
        ("02 00007530 000003ff 00000020", ErrorCode.MALFORMED, "AUTH_OK: maxFrame must be"),
        ("02 00007530 00002000 00000000", ErrorCode.MALFORMED, "AUTH_OK: ackWindow must be"),
        ("02 00007530 00002000 000020", ErrorCode.MALFORMED, "AUTH_OK: ackWindow is cut short"),
        ("02 00007530 00002000 00000020 00", ErrorCode.MALFORMED, "AUTH_OK: 1 byte after"),
        ("03 00 0000", ErrorCode.MALFORMED, "AUTH_FAIL: unknown code 0"),
        ("08 04 0000", ErrorCode.MALFORMED, "KICK: unknown code 4"),
        ("09 08 0000", ErrorCode.MALFORMED, "ERROR: unknown code 8"),
        ("09 01", ErrorCode.MALFORMED, "ERROR: text length is cut short"),
    ],
)
def test_each_bad_body_gets_a_code_and_a_reason(
    hex_payload: str, code: ErrorCode, message: str
) -> None:
    error = decode_error(hex_payload)
    assert error.code is code
    assert str(error).startswith(message)


def test_decode_errors_never_quote_the_bytes_they_refuse() -> None:
    """Error texts reach logs and the peer: a token must not leak through them."""
    secret = "s3cr3t-token-"
    token = secret.encode() + b"\xff"
    payload = bytes.fromhex("01 0001 0002 6964") + len(token).to_bytes(2, "big") + token
    error = decode_error(payload.hex())
    assert "token" in str(error)
    assert secret not in str(error)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (Ack("x" * 65536), "messageId is 65536 bytes of UTF-8; the limit is 65535"),
        (Ack("\ud800"), "messageId is not encodable as UTF-8 (position 0)"),
        (Push("m", "\u00e9" * 40000, "", {}), "title is 80000 bytes of UTF-8"),
        (Push("m", "t", "x", {"k": "\udc80"}), "extras value is not encodable as UTF-8"),
        (Push("m", "t", "x", {"k" * 70000: ""}), "extras key is 70000 bytes"),
        (Push("m", "t", "x", {"k": 1}), "extras value must be a str, not int"),  # type: ignore[dict-item]
        (Push("m", "t", "x", {str(i): "" for i in range(65536)}), "extras has 65536 pairs"),
        (Auth("c", "t", 65536), "version must be 0 to 65535, not 65536"),
        (Auth("c" * 70000, "t"), "clientId is 70000 bytes"),
        (AuthOk(0.0004, 8192, 32), "heartbeat must be 1 to 4294967295 ms, not 0"),
        (AuthOk(4294967.296, 8192, 32), "heartbeat must be 1 to"),
        (AuthOk(30, 1023, 32), "maxFrame must be 1024 to 4294967295, not 1023"),
        (AuthOk(30, 8192, 0), "ackWindow must be 1 to 4294967295, not 0"),
        (AuthFail(99, ""), "99 is not a AuthFailCode"),  # type: ignore[arg-type]
        (Kick(KickReason.POLICY, "\ud800"), "text is not encodable as UTF-8"),
        (Error(0, ""), "0 is not a ErrorCode"),  # type: ignore[arg-type]
        (Nack("m", -1), "retryAfterMs must be 0 to 4294967295, not -1000"),
        (Nack("m", 4294967.296), "retryAfterMs must be 0 to 4294967295, not 4294967296"),
        (Nack("m", float("nan")), "retryAfter must be a number of seconds, not nan"),
        (Nack("\ud800"), "messageId is not encodable as UTF-8 (position 0)"),
    ],
)
def test_frames_the_wire_cannot_carry_raise_encode_error(frame: Frame, message: str) -> None:
    with pytest.raises(EncodeError) as info:
        encode(frame)
    assert str(info.value).startswith(message)


def test_encode_push_explains_what_it_cannot_carry() -> None:
    with pytest.raises(EncodeError, match=r"^text is 70000 bytes of UTF-8"):
        encode_push("m", "t", "x" * 70000, {})
    with pytest.raises(EncodeError, match=r"^extras must be a mapping, not list"):
        encode_push("m", "t", "x", [("k", "v")])  # type: ignore[arg-type]


def test_nack_carries_retry_after_as_whole_milliseconds() -> None:
    assert encode(Nack("m", 1.2345)) == encode_nack("m", 1.2345)
    assert decode(encode(Nack("m", 1.2345))[4:]) == Nack("m", 1.234)
    assert decode(encode(Nack("m"))[4:]) == Nack("m", 0.0)


def test_encode_refuses_what_is_not_a_frame() -> None:
    with pytest.raises(TypeError, match="not a frame"):
        encode("PING")  # type: ignore[arg-type]


@untimed
@given(st.integers(0, 0xFFFF))
def test_any_version_number_is_carried(version: int) -> None:
    assume(version not in SUPPORTED_VERSIONS)
    assert decode(payload_of(Auth("c", "t", version))) == Auth("", "", version)


def test_uplink_round_trips_with_its_data() -> None:
    frame = Uplink("u-7", {"temp": "21.5", "note": "café ☕"})
    assert decode(encode(frame)[4:]) == frame
    assert decode(encode(UplinkAck("u-7"))[4:]) == UplinkAck("u-7")


def test_uplink_data_must_be_a_map_of_strings() -> None:
    with pytest.raises(EncodeError, match="data must be a mapping"):
        encode(Uplink("u-1", ["a"]))  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="data value must be a str"):
        encode(Uplink("u-1", {"a": b"raw"}))  # type: ignore[dict-item]


def test_uplink_limits_are_explained() -> None:
    def problem(uplink_id: str, data: dict[str, str]) -> tuple[str, str] | None:
        error = uplink_problem(uplink_id, data)
        return None if error is None else (error.code.name, str(error))

    assert problem("u-1", {"k": "v" * 100}) is None
    assert problem("", {}) == ("MALFORMED", "uplinkId must be 1 to 64 bytes of UTF-8, not 0")
    assert problem("x" * 65, {}) == (
        "MALFORMED",
        "uplinkId must be 1 to 64 bytes of UTF-8, not 65",
    )
    pairs = {str(n): "" for n in range(MAX_UPLINK_PAIRS + 1)}
    assert problem("u", pairs) == ("MALFORMED", "data has 65 pairs; the limit is 64")
    assert problem("u", {"k": "v" * (MAX_UPLINK_DATA_BYTES - 1)}) is None
    over = {"k": "é" * (MAX_UPLINK_DATA_BYTES // 2)}
    assert problem("u", over) == ("TOO_LARGE", "data is 4097 bytes of UTF-8; the limit is 4096")
