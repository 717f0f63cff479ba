"""The hex test vectors that docs/protocol.rst shows, checked against the codec
both ways, so that the specification and the code cannot drift apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import StringTransport

from pigeonpush.wire.codec import DEFAULT_MAX_FRAME, DecodeError, decode, encode, encode_push
from pigeonpush.wire.frames import (
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
    Push,
    Subscribe,
    Subscription,
    SubscriptionCode,
    Unsubscribe,
    Uplink,
    UplinkAck,
)
from pigeonpush.wire.protocol import FrameProtocol

DOCS = Path(__file__).resolve().parent.parent / "docs"
VECTORS = json.loads((DOCS / "protocol-vectors.json").read_text(encoding="utf-8"))


def frame_from(spec: dict[str, Any]) -> Frame:
    """The frame a vector describes, from the field names the document uses."""
    kind = spec["type"]
    if kind == "AUTH":
        return Auth(spec.get("clientId", ""), spec.get("token", ""), spec["version"])
    if kind == "AUTH_OK":
        return AuthOk(spec["heartbeatMs"] / 1000, spec["maxFrame"], spec["ackWindow"])
    if kind == "AUTH_FAIL":
        return AuthFail(AuthFailCode[spec["code"]], spec["reason"])
    if kind == "PING":
        return PING
    if kind == "PONG":
        return PONG
    if kind == "PUSH":
        return Push(
            spec["messageId"], spec["title"], spec["text"], spec["extras"], spec.get("topic", "")
        )
    if kind == "ACK":
        return Ack(spec["messageId"])
    if kind == "NACK":
        return Nack(spec["messageId"], spec["retryAfterMs"] / 1000)
    if kind == "UPLINK":
        return Uplink(spec["uplinkId"], spec["data"])
    if kind == "UPLINK_ACK":
        return UplinkAck(spec["uplinkId"])
    if kind == "KICK":
        return Kick(KickReason[spec["reason"]], spec["text"])
    if kind == "ERROR":
        return Error(ErrorCode[spec["code"]], spec["text"])
    if kind == "MISSED":
        return Missed(spec["topic"])
    if kind == "SUBSCRIBE":
        return Subscribe(spec["requestId"], spec["topic"])
    if kind == "UNSUBSCRIBE":
        return Unsubscribe(spec["requestId"], spec["topic"])
    if kind == "SUBSCRIPTION":
        return Subscription(spec["requestId"], SubscriptionCode[spec["code"]], spec["reason"])
    raise AssertionError(f"unknown type in a vector: {kind}")


def wire(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["hex"])


def names(vectors: list[dict[str, Any]]) -> list[str]:
    return [vector["name"] for vector in vectors]


@pytest.mark.parametrize("vector", VECTORS["frames"], ids=names(VECTORS["frames"]))
def test_frame_vector_encodes_and_decodes(vector: dict[str, Any]) -> None:
    frame = frame_from(vector["frame"])
    data = wire(vector)
    assert encode(frame) == data
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert decode(data[4:]) == frame
    if isinstance(frame, Push):
        pushed = encode_push(frame.message_id, frame.title, frame.text, frame.extras, frame.topic)
        assert pushed == data


@pytest.mark.parametrize("vector", VECTORS["decodeOnly"], ids=names(VECTORS["decodeOnly"]))
def test_decode_only_vector_decodes(vector: dict[str, Any]) -> None:
    assert decode(wire(vector)[4:]) == frame_from(vector["frame"])


@pytest.mark.parametrize("vector", VECTORS["errors"], ids=names(VECTORS["errors"]))
def test_error_vector_is_refused_with_its_code(vector: dict[str, Any]) -> None:
    """Fed to a receiver: the ERROR frame it answers carries the vector's code."""
    code = ErrorCode[vector["error"]]
    data = wire(vector)
    if code is not ErrorCode.TOO_LARGE:
        with pytest.raises(DecodeError) as info:
            decode(data[4:])
        assert info.value.code is code
    receiver = FrameProtocol(max_frame=VECTORS["maxFrame"])
    transport = StringTransport()
    receiver.makeConnection(transport)
    receiver.dataReceived(data)
    answer = transport.value()
    frame = decode(answer[4:])
    assert isinstance(frame, Error)
    assert frame.code is code
    assert transport.disconnecting


def test_vectors_cover_every_type_and_code() -> None:
    frames = [frame_from(vector["frame"]) for vector in VECTORS["frames"]]
    assert {encode(frame)[4] for frame in frames} == set(FrameType)
    assert {f.code for f in frames if isinstance(f, AuthFail)} == set(AuthFailCode)
    assert {f.reason for f in frames if isinstance(f, Kick)} == set(KickReason)
    assert {f.code for f in frames if isinstance(f, Error)} == set(ErrorCode)
    assert {vector["error"] for vector in VECTORS["errors"]} == {
        "MALFORMED",
        "UNKNOWN_TYPE",
        "TOO_LARGE",
    }
    assert VECTORS["maxFrame"] == DEFAULT_MAX_FRAME


def test_the_specification_shows_the_vectors() -> None:
    """The page includes this very file, so a reader sees what the tests check."""
    spec = (DOCS / "protocol.rst").read_text(encoding="utf-8")
    assert ".. literalinclude:: protocol-vectors.json" in spec
    for frame_type in FrameType:
        assert frame_type.name in spec
