"""PushClient.send_uplink on a Clock with in-memory transports: fires on
UPLINK_ACK, fails clearly when the connection drops first, or keeps the
uplink for the next session when asked."""

from __future__ import annotations

import pytest
from test_sdk_client import AUTH_OK, CLIENT_ID, Harness
from twisted.internet.defer import CancelledError

from pigeonpush.sdk import ClientState, UplinkNotSent
from pigeonpush.wire.frames import (
    Auth,
    AuthFail,
    AuthFailCode,
    AuthOk,
    Error,
    ErrorCode,
    Uplink,
    UplinkAck,
)


def result(deferred: object) -> list[object]:
    outcome: list[object] = []
    deferred.addBoth(outcome.append)  # type: ignore[attr-defined]
    return outcome


def test_an_uplink_fires_on_its_uplink_ack() -> None:
    h = Harness()
    h.online()
    sending = h.client.send_uplink({"temp": "21.5"}, uplink_id="u-1")
    assert h.sent() == [Uplink("u-1", {"temp": "21.5"})]
    got = result(sending)
    assert got == []
    h.feed(UplinkAck("other"))  # not ours: ignored
    assert got == []
    h.feed(UplinkAck("u-1"))
    assert got == ["u-1"]
    h.feed(UplinkAck("u-1"))  # a repeat is ignored too
    assert h.client.state is ClientState.ONLINE


def test_the_default_id_is_random() -> None:
    h = Harness()
    h.online()
    h.client.send_uplink({})
    h.client.send_uplink({})
    first, second = h.sent()
    assert isinstance(first, Uplink) and isinstance(second, Uplink)
    assert first.uplink_id != second.uplink_id and len(first.uplink_id) == 16


def test_a_drop_before_the_ack_fails_the_uplink() -> None:
    h = Harness()
    h.online()
    got = result(h.client.send_uplink({"a": "b"}, uplink_id="u-1"))
    h.lose()
    (failure,) = got
    error = failure.value  # type: ignore[attr-defined]
    assert isinstance(error, UplinkNotSent)
    assert error.uplink_id == "u-1"
    assert "the connection ended before UPLINK_ACK" in str(error)


def test_an_uplink_while_offline_fails_at_once() -> None:
    h = Harness()
    (failure,) = result(h.client.send_uplink({}, uplink_id="u-1"))
    assert isinstance(failure.value, UplinkNotSent)  # type: ignore[attr-defined]
    assert failure.value.reason == "not connected"  # type: ignore[attr-defined]


def test_resend_on_reconnect_sends_it_again_with_the_same_id() -> None:
    h = Harness()
    h.online()
    got = result(h.client.send_uplink({"n": "1"}, uplink_id="u-1", resend_on_reconnect=True))
    assert h.sent() == [Uplink("u-1", {"n": "1"})]
    h.feed(Error(ErrorCode.INTERNAL, "the uplink could not be stored"))
    h.lose()
    assert got == []
    # Queued while offline too.
    later = result(h.client.send_uplink({"n": "2"}, uplink_id="u-2", resend_on_reconnect=True))
    h.clock.advance(120)  # the reconnect backoff
    assert isinstance(h.sent()[0], Auth)
    h.feed(AUTH_OK)
    assert h.sent() == [Uplink("u-1", {"n": "1"}), Uplink("u-2", {"n": "2"})]
    h.feed(UplinkAck("u-2"), UplinkAck("u-1"))
    assert (got, later) == (["u-1"], ["u-2"])


def test_stopping_fails_kept_uplinks() -> None:
    h = Harness()
    h.online()
    got = result(h.client.send_uplink({}, uplink_id="u-1", resend_on_reconnect=True))
    h.client.stop()
    h.lose()
    (failure,) = got
    assert isinstance(failure.value, UplinkNotSent)  # type: ignore[attr-defined]
    assert failure.value.reason == "the client was stopped"  # type: ignore[attr-defined]


def test_a_version_1_session_cannot_carry_uplinks() -> None:
    h = Harness()
    h.client.start()
    h.feed(AuthFail(AuthFailCode.VERSION, "supported versions: 1"))
    h.lose()
    h.clock.advance(120)
    assert h.sent() == [Auth(CLIENT_ID, "token-2", 1)]
    h.feed(AuthOk(5.0, 8192, 64))
    (failure,) = result(h.client.send_uplink({}, uplink_id="u-1"))
    assert "protocol version 1" in str(failure.value)  # type: ignore[attr-defined]
    assert h.sent() == []


def test_cancelling_forgets_the_uplink() -> None:
    h = Harness()
    h.online()
    sending = h.client.send_uplink({}, uplink_id="u-1", resend_on_reconnect=True)
    sending.cancel()
    (failure,) = result(sending)
    assert isinstance(failure.value, CancelledError)  # type: ignore[attr-defined]
    # The id can be used again.
    h.client.send_uplink({}, uplink_id="u-1")


def test_bad_uplinks_are_refused_before_sending() -> None:
    h = Harness()
    h.online()
    with pytest.raises(ValueError, match="data is 4097 bytes of UTF-8; the limit is 4096"):
        h.client.send_uplink({"k": "v" * 4096})
    with pytest.raises(ValueError, match="uplinkId must be 1 to 64 bytes"):
        h.client.send_uplink({}, uplink_id="")
    with pytest.raises(TypeError, match="uplink_id must be a str, not int"):
        h.client.send_uplink({}, uplink_id=7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapping of str to str"):
        h.client.send_uplink({"k": 1})  # type: ignore[dict-item]
    h.client.send_uplink({}, uplink_id="u-1")
    with pytest.raises(ValueError, match="already waiting"):
        h.client.send_uplink({}, uplink_id="u-1")
    assert h.sent() == [Uplink("u-1", {})]


def test_an_uplink_over_the_servers_frame_limit_fails() -> None:
    h = Harness()
    h.client.start()
    h.feed(AuthOk(5.0, 1024, 64))
    h.transport.clear()
    (failure,) = result(h.client.send_uplink({"k": "v" * 2000}, uplink_id="u-1"))
    assert isinstance(failure.value, ValueError)  # type: ignore[attr-defined]
    assert "over the limit of 1024" in str(failure.value)  # type: ignore[attr-defined]
    h.client.send_uplink({}, uplink_id="u-1")  # forgotten
