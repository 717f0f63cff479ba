"""The attacker's own bookkeeping: frames split across reads, closes counted."""

from __future__ import annotations

import random

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from pigeonpush.wire.codec import encode
from pigeonpush.wire.frames import AuthOk, Error, ErrorCode, Kick, KickReason
from pigeonpush_abuse.attacks import Context, FrameClient, Target

TARGET = Target(("127.0.0.1", 1), "http://127.0.0.1:2", "http://127.0.0.1:3", "k" * 20)


def client() -> tuple[FrameClient, Context]:
    context = Context(Clock(), TARGET, 1.0, 10, random.Random(0), http=None)
    protocol = FrameClient(context)
    protocol.makeConnection(StringTransport())
    return protocol, context


def test_frames_are_counted_however_they_are_split() -> None:
    protocol, context = client()
    data = encode(AuthOk(30.0, 8192, 32)) + encode(Error(ErrorCode.TOO_LARGE, "big"))
    data += encode(Kick(KickReason.POLICY, ""))
    for index in range(0, len(data), 3):
        protocol.dataReceived(data[index : index + 3])
    assert context.observed["AuthOk"] == 1
    assert context.observed["ERROR TOO_LARGE"] == 1
    assert context.observed["KICK POLICY"] == 1
    assert context.observed["bytes received"] == len(data)
    assert protocol.authenticated.result is True


def test_a_close_by_the_server_is_counted_and_ours_is_not() -> None:
    protocol, context = client()
    protocol.connectionLost(Failure(ConnectionDone()))
    assert context.observed["closed by server"] == 1
    assert protocol.authenticated.result is False
    assert context.sent["connections"] == 1

    ours, context = client()
    ours.closing = True
    ours.connectionLost(Failure(ConnectionDone()))
    assert context.observed["closed by server"] == 0


def test_garbage_from_the_server_is_counted_not_raised() -> None:
    protocol, context = client()
    protocol.dataReceived(b"\x00\x00\x00\x02\xee\x01")
    protocol.dataReceived(b"\xff\xff\xff\xff")
    assert context.observed["undecodable frame from server"] == 1
    assert context.observed["oversized frame from server"] == 1


def test_evil_client_ids_fit_an_auth_frame() -> None:
    from pigeonpush.wire.codec import DEFAULT_MAX_FRAME, PREFIX_BYTES
    from pigeonpush.wire.frames import Auth
    from pigeonpush_abuse.attacks import evil_client_id

    rng = random.Random(9)
    for _ in range(100):
        frame = encode(Auth(evil_client_id(rng), "t" * 22))
        assert len(frame) - PREFIX_BYTES <= DEFAULT_MAX_FRAME


def test_control_characters_are_counted_but_tab_and_newline_are_not() -> None:
    from pigeonpush_abuse.runner import count_controls

    assert count_controls(b"line\tone\nline two\n") == 0
    assert count_controls(b"\x1b[31m\x00\r\x7f") == 4
