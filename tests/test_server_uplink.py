"""UPLINK on the push server: stored, then UPLINK_ACK; refused with ERROR.
Through the TCP transport (StringTransport + Clock + the memory store), which
also checks the frame grammar; the hub alone in test_server_uplink_hub."""

from __future__ import annotations

import pytest

from pigeonpush.server.uplink import (
    STORE_RETRY_DELAYS,
    UplinkReceiver,
    UplinkSettings,
    parse_rate,
)
from pigeonpush.wire.frames import (
    Auth,
    AuthOk,
    Error,
    ErrorCode,
    Uplink,
    UplinkAck,
)
from support.server_harness import Harness, result_of


def stored(harness: Harness) -> list[tuple[str, str, dict[str, str]]]:
    return [
        (u.client_id, u.uplink_id, dict(u.data)) for u in result_of(harness.store.uplinks("0", 100))
    ]


def test_an_uplink_is_acked_once_stored() -> None:
    harness = Harness(tcp=True)
    alice = harness.login("alice")
    harness.store.gated.add("add_uplink")
    alice.send(Uplink("u-1", {"temp": "21.5"}))
    # Not durable yet: no UPLINK_ACK.
    assert alice.received() == []
    assert stored(harness) == []
    harness.store.open("add_uplink")
    assert alice.received() == [UplinkAck("u-1")]
    assert stored(harness) == [("alice", "u-1", {"temp": "21.5"})]
    (uplink,) = result_of(harness.store.uplinks("0", 10))
    assert uplink.received_at == harness.clock.seconds()
    assert not alice.closing


def test_a_resent_uplink_is_acked_and_stored_once() -> None:
    harness = Harness(tcp=True)
    alice = harness.login("alice")
    alice.send(Uplink("u-1", {"n": "1"}))
    alice.send(Uplink("u-1", {"n": "1"}))
    assert alice.received() == [UplinkAck("u-1"), UplinkAck("u-1")]
    assert stored(harness) == [("alice", "u-1", {"n": "1"})]
    assert harness.metrics.counts["uplinks.duplicate"] == 1
    assert harness.metrics.counts["uplinks.stored"] == 1


def test_a_store_that_comes_back_within_the_retries_gets_the_uplink_acked() -> None:
    harness = Harness(tcp=True)
    alice = harness.login("alice")
    harness.store.failing.add("add_uplink")
    alice.send(Uplink("u-1"))
    for delay in STORE_RETRY_DELAYS[:3]:
        harness.clock.advance(delay)
    assert alice.received() == [] and not alice.closing  # still trying
    harness.store.failing.clear()
    harness.clock.advance(STORE_RETRY_DELAYS[3])
    assert alice.received() == [UplinkAck("u-1")]
    assert stored(harness) == [("alice", "u-1", {})]


def test_a_store_failure_is_error_internal_and_the_resend_is_stored() -> None:
    harness = Harness(tcp=True)
    alice = harness.login("alice")
    harness.store.failing.add("add_uplink")
    alice.send(Uplink("u-1"))
    *first, last = STORE_RETRY_DELAYS
    for delay in first:
        harness.clock.advance(delay)
    harness.clock.advance(last - 0.01)
    assert alice.received() == []
    harness.clock.advance(0.01)
    (error,) = alice.received()
    assert isinstance(error, Error) and error.code is ErrorCode.INTERNAL
    assert alice.closing
    alice.lose()
    harness.store.failing.clear()
    again = harness.login("alice")
    again.send(Uplink("u-1"))
    assert again.received() == [UplinkAck("u-1")]
    assert stored(harness) == [("alice", "u-1", {})]


def test_an_answer_for_a_connection_gone_meanwhile_is_dropped() -> None:
    harness = Harness(tcp=True)
    alice = harness.login("alice")
    harness.store.gated.add("add_uplink")
    alice.send(Uplink("u-1"))
    alice.lose()
    harness.store.open("add_uplink")
    assert alice.received() == []
    assert stored(harness) == [("alice", "u-1", {})]


@pytest.mark.parametrize(
    ("frame", "code", "text"),
    [
        (Uplink(""), ErrorCode.MALFORMED, "UPLINK: uplinkId must be 1 to 64 bytes"),
        (Uplink("x" * 65), ErrorCode.MALFORMED, "UPLINK: uplinkId must be 1 to 64 bytes"),
        (
            Uplink("u", {str(n): "" for n in range(65)}),
            ErrorCode.MALFORMED,
            "UPLINK: data has 65 pairs",
        ),
        (Uplink("u", {"k": "v" * 4096}), ErrorCode.TOO_LARGE, "UPLINK: data is 4097 bytes"),
    ],
)
def test_an_uplink_over_the_limits_is_refused(frame: Uplink, code: ErrorCode, text: str) -> None:
    harness = Harness(tcp=True)
    alice = harness.login("alice")
    alice.send(frame)
    (error,) = alice.received()
    assert isinstance(error, Error) and error.code is code
    assert error.text.startswith(text)
    assert alice.closing
    assert stored(harness) == []


def test_an_uplink_over_max_frame_is_too_large_before_it_is_read() -> None:
    harness = Harness(tcp=True, max_frame=1024)
    alice = harness.login("alice")
    alice.send(Uplink("u", {"k": "v" * 2000}))
    (error,) = alice.received()
    assert isinstance(error, Error) and error.code is ErrorCode.TOO_LARGE
    assert stored(harness) == []


def test_uplink_in_a_version_1_session_is_unexpected() -> None:
    harness = Harness(tcp=True)
    token = harness.issue("alice")
    alice = harness.connect()
    alice.send(Auth("alice", token, 1))
    assert isinstance(alice.received()[0], AuthOk)
    alice.send(Uplink("u-1"))
    (error,) = alice.received()
    assert isinstance(error, Error) and error.code is ErrorCode.UNEXPECTED
    assert "protocol version 1" in error.text
    assert stored(harness) == []


def test_uplink_before_auth_and_uplink_ack_from_a_client_are_unexpected() -> None:
    harness = Harness(tcp=True)
    early = harness.connect()
    early.send(Uplink("u-1"))
    (error,) = early.received()
    assert isinstance(error, Error) and error.code is ErrorCode.UNEXPECTED
    assert error.text == "UPLINK is not allowed before AUTH"
    alice = harness.login("alice")
    alice.send(UplinkAck("u-1"))
    (error,) = alice.received()
    assert isinstance(error, Error) and error.code is ErrorCode.UNEXPECTED
    assert error.text == "UPLINK_ACK is not allowed after AUTH_OK"


def test_the_uplink_rate_is_per_connection_and_refills_with_time() -> None:
    harness = Harness(tcp=True)
    harness.hub.uplinks = UplinkReceiver(
        harness.store, harness.clock, UplinkSettings(rate=2.0, burst=3), metrics=harness.metrics
    )
    alice, bob = harness.login("alice"), harness.login("bob")
    for n in range(3):
        alice.send(Uplink(f"a-{n}"))
    bob.send(Uplink("b-0"))
    harness.clock.advance(0.5)  # one more token
    alice.send(Uplink("a-3"))
    assert alice.received() == [UplinkAck(f"a-{n}") for n in range(4)]
    alice.send(Uplink("a-4"))
    (error,) = alice.received()
    assert isinstance(error, Error) and error.code is ErrorCode.RATE_LIMITED
    assert error.text == "over 2 uplinks per second (bursts of 3)"
    assert alice.closing
    assert bob.received() == [UplinkAck("b-0")]
    assert harness.metrics.counts["uplinks.rate_limited"] == 1
    assert len(stored(harness)) == 5


def test_uplink_rate_option() -> None:
    assert parse_rate("20/5") == (20, 5.0)
    assert parse_rate("2.5") == (10, 2.5)
    for bad in ("", "x", "0", "10/0", "0/5", "-1", "5/x", "inf"):
        with pytest.raises(ValueError, match="uplink-rate"):
            parse_rate(bad)


def test_uplink_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="--uplink-dedup-window"):
        UplinkSettings(dedup_window=0).check()
    with pytest.raises(ValueError, match="--uplink-max-len"):
        UplinkSettings(max_len=0).check()


def test_the_prometheus_sink_counts_uplinks_by_outcome() -> None:
    from prometheus_client import REGISTRY

    from pigeonpush.server.metrics import PROMETHEUS

    def count(outcome: str) -> float:
        value = REGISTRY.get_sample_value("pigeonpush_server_uplinks_total", {"outcome": outcome})
        return value or 0.0

    before = count("stored")
    PROMETHEUS.uplinked("stored")
    assert count("stored") == before + 1
