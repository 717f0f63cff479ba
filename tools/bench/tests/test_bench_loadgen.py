"""The load generator: its client protocols, heartbeats, counting, control
channel, and how a group of generators is split and merged."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pigeonpush.ids import MessageIdGenerator
from pigeonpush.wire.codec import ENCODED_PING, decode, encode
from pigeonpush.wire.frames import (
    Ack,
    Auth,
    AuthFail,
    AuthFailCode,
    AuthOk,
    FrameType,
    Kick,
    KickReason,
    Push,
)
from pigeonpush_bench import mqtt
from pigeonpush_bench.clients import (
    FRAME_ACK,
    FramingClient,
    HeartbeatWheel,
    MqttClient,
    PigeonClient,
)
from pigeonpush_bench.cluster import Stats, split
from pigeonpush_bench.histogram import LatencyHistogram
from pigeonpush_bench.loadgen import (
    Fleet,
    Pacer,
    Recorder,
    payload_text,
    sent_time,
)
from pigeonpush_bench.processes import free_port


class TcpTransport(StringTransport):
    no_delay = False
    aborted = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class Reported:
    """A clients.Fleet that writes down what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def ready(self, client: Any, heartbeat: float | None) -> None:
        self.events.append(("ready", client.index, heartbeat))

    def refused(self, client: Any, reason: str) -> None:
        self.events.append(("refused", client.index, reason))

    def lost(self, client: Any, reason: str) -> None:
        self.events.append(("lost", client.index, reason))

    def pushed(self, client: Any, key: str, text: str, accepted_ms: int | None) -> None:
        self.events.append(("pushed", key, text, accepted_ms))

    def framed(self) -> None:
        self.events.append(("framed",))


def _frames(data: bytes) -> list[Any]:
    frames = []
    while data:
        length = int.from_bytes(data[:4], "big")
        frames.append(decode(data[4 : 4 + length]))
        data = data[4 + length :]
    return frames


def _pigeon() -> tuple[PigeonClient, TcpTransport, Reported]:
    fleet = Reported()
    client = PigeonClient(fleet, 3, "bench-3", "tok", Clock())  # type: ignore[arg-type]
    transport = TcpTransport()
    client.makeConnection(transport)
    return client, transport, fleet


def test_pigeon_client_authenticates_then_acks_every_push() -> None:
    client, transport, fleet = _pigeon()
    assert transport.no_delay
    assert _frames(transport.value()) == [Auth("bench-3", "tok")]
    transport.clear()

    client.dataReceived(encode(AuthOk(heartbeat=7.0, max_frame=8192, ack_window=32)))
    message_id = MessageIdGenerator(Clock())()
    client.dataReceived(encode(Push(message_id, "bench", "1.5|xx")))

    assert fleet.events == [("ready", 3, 7.0), ("pushed", message_id, "1.5|xx", 0)]
    assert _frames(transport.value()) == [Ack(message_id)]
    transport.clear()
    client.ping()
    assert transport.value() == ENCODED_PING


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (AuthFail(AuthFailCode.BAD_TOKEN, "no"), "auth_fail_bad_token"),
        (Kick(KickReason.SHUTTING_DOWN), "kick_shutting_down"),
    ],
)
def test_pigeon_client_closes_on_refusal_or_kick(frame: Any, reason: str) -> None:
    client, transport, fleet = _pigeon()
    client.dataReceived(encode(frame))
    assert transport.disconnecting
    client.connectionLost()
    assert fleet.events[-1] == ("lost", 3, reason)
    if isinstance(frame, AuthFail):
        assert fleet.events[0] == ("refused", 3, reason)


def test_framing_client_acks_push_typed_frames_only() -> None:
    fleet = Reported()
    client = FramingClient(fleet, 0)  # type: ignore[arg-type]
    transport = TcpTransport()
    client.makeConnection(transport)
    assert transport.no_delay and fleet.events == [("ready", 0, None)]
    client.dataReceived(encode(Push("m", "t", "x"))[:4] + encode(Push("m", "t", "x"))[4:])
    client.dataReceived(b"\x00\x00\x00\x01" + bytes((FrameType.PONG,)))
    assert fleet.events[1:] == [("framed",)]
    assert transport.value() == len(FRAME_ACK).to_bytes(4, "big") + FRAME_ACK


def test_mqtt_client_subscribes_then_pubacks() -> None:
    fleet = Reported()
    client = MqttClient(fleet, 1, "bench-1", 30)  # type: ignore[arg-type]
    transport = TcpTransport()
    client.makeConnection(transport)
    assert transport.value() == mqtt.connect("bench-1", 30)
    transport.clear()
    client.dataReceived(b"\x20\x02\x00\x00")
    assert transport.value() == mqtt.subscribe(1, "bench/bench-1", 1)
    transport.clear()
    client.dataReceived(b"\x90\x03\x00\x01\x01" + mqtt.publish("bench/bench-1", b"9|2.0|x", 1, 5))
    assert transport.value() == mqtt.puback(5)
    assert fleet.events == [("ready", 1, 30.0), ("pushed", "9", "2.0|x", None)]


def test_mqtt_client_reports_a_refused_connect_and_aborts_on_garbage() -> None:
    fleet = Reported()
    client = MqttClient(fleet, 1, "bench-1", 30)  # type: ignore[arg-type]
    transport = TcpTransport()
    client.makeConnection(transport)
    client.dataReceived(b"\x20\x02\x00\x05")
    assert fleet.events == [("refused", 1, "connack_5")]
    assert transport.disconnecting

    other = MqttClient(fleet, 2, "bench-2", 30)  # type: ignore[arg-type]
    other_transport = TcpTransport()
    other.makeConnection(other_transport)
    other.dataReceived(b"\x30\xff\xff\xff\xff\x01")
    assert other_transport.aborted


def test_the_heartbeat_wheel_pings_each_client_once_per_interval() -> None:
    clock = Clock()
    wheel = HeartbeatWheel(clock, 2.0)

    class Counting:
        def __init__(self) -> None:
            self.pings = 0

        def ping(self) -> None:
            self.pings += 1

    clients = [Counting() for _ in range(20)]
    for client in clients:
        wheel.add(client)  # type: ignore[arg-type]
    clock.pump([0.25] * 8)
    assert [client.pings for client in clients] == [1] * 20
    wheel.discard(clients[0])  # type: ignore[arg-type]
    clock.pump([0.25] * 8)
    assert [client.pings for client in clients] == [1] + [2] * 19
    wheel.stop()
    clock.pump([0.25] * 8)
    assert wheel.pings == 39


def test_the_recorder_counts_duplicates_order_and_latency() -> None:
    clock = Clock()
    clock.advance(1000.0)
    recorder = Recorder(clock)
    recorder.message(0, "01B", payload_text(20, 999.99), 999_990)
    recorder.message(0, "01B", payload_text(20, 999.99), 999_990)
    recorder.message(0, "01A", "no stamp", 999_995)
    recorder.message(1, "01C", "x", None)
    assert (recorder.received, len(recorder.seen), recorder.duplicates) == (4, 3, 1)
    assert recorder.out_of_order == 1
    assert recorder.latency.count == 2 and recorder.latency.maximum == 10_000
    assert recorder.latency_send.count == 1
    assert 9_990 <= (recorder.latency_send.maximum or 0) <= 10_010


def test_payloads_carry_their_sending_time() -> None:
    text = payload_text(100, 1234.5)
    assert len(text) == 100 and sent_time(text) == 1234.5
    assert sent_time("garbage") is None
    assert sent_time("x|y") is None


@pytest_twisted.ensureDeferred
async def test_clients_that_cannot_connect_are_counted_as_failed() -> None:
    from twisted.internet import reactor

    fleet = Fleet(
        reactor,
        Recorder(reactor),
        {"protocol": "framing", "count": 2, "server": f"127.0.0.1:{free_port()}"},
    )
    result = await fleet.connect_all(2, lambda: None)
    assert result["ready"] == 0 and result["failed"] == 2
    assert result["errors"] == {"connect_ConnectionRefusedError": 10}


@pytest_twisted.ensureDeferred
async def test_an_unreachable_reglog_is_a_route_failure() -> None:
    from twisted.internet import reactor

    fleet = Fleet(
        reactor,
        Recorder(reactor),
        {"protocol": "pigeon", "count": 1, "reglog": f"http://127.0.0.1:{free_port()}"},
    )
    result = await fleet.connect_all(1, lambda: None)
    await fleet.shutdown()
    assert result["failed"] == 1
    assert list(result["errors"]) == ["route_ConnectionRefusedError"]


def test_clients_split_evenly() -> None:
    assert split(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert split(2, 3) == [(0, 1), (1, 1), (2, 0)]


def test_generator_stats_merge() -> None:
    early, late = LatencyHistogram(), LatencyHistogram()
    early.record(100)
    late.record(900)
    merged = Stats.merge(
        [
            {
                "ready": 2,
                "unique": 5,
                "cpu": 1.5,
                "first_receipt": 10.0,
                "last_receipt": 12.0,
                "errors": {"a": 1},
                "latency": early.to_json(),
            },
            {
                "ready": 3,
                "unique": 1,
                "cpu": 0.5,
                "first_receipt": 9.0,
                "last_receipt": 11.0,
                "errors": {"a": 2, "b": 1},
                "latency": late.to_json(),
            },
        ]
    )
    assert (merged.ready, merged.unique, merged.cpu) == (5, 6, 2.0)
    assert (merged.first_receipt, merged.last_receipt) == (9.0, 12.0)
    assert merged.errors == {"a": 3, "b": 1}
    assert (merged.latency.count, merged.latency.maximum) == (2, 900)


def test_the_pacer_spreads_items_at_the_rate() -> None:
    clock = Clock()
    pacer = Pacer(clock, rate=100.0)
    waits = [pacer.wait_for(sent) for sent in (0, 1, 50)]
    started = [defer.ensureDeferred(wait) for wait in waits]
    assert [d.called for d in started] == [True, False, False]
    clock.advance(0.01)
    assert [d.called for d in started] == [True, True, False]
    clock.advance(0.48)
    assert not started[2].called
    clock.advance(0.01)
    assert started[2].called
    unpaced = defer.ensureDeferred(Pacer(clock, rate=0).wait_for(10**6))
    assert unpaced.called


def test_a_late_heartbeat_wheel_catches_up_instead_of_drifting() -> None:
    clock = Clock()
    wheel = HeartbeatWheel(clock, 1.0)

    class Counting:
        def __init__(self) -> None:
            self.pings = 0

        def ping(self) -> None:
            self.pings += 1

    clients = [Counting() for _ in range(4)]
    for client in clients:
        wheel.add(client)  # type: ignore[arg-type]
    # The generator was busy for 0.8 s: the four slots due meanwhile all tick now.
    clock.advance(0.8)
    assert [client.pings for client in clients] == [1, 1, 1, 0]
    clock.advance(0.2)
    assert [client.pings for client in clients] == [1, 1, 1, 1]
    # Busy for ten rounds: each client is pinged once, not ten times.
    clock.advance(10.0)
    assert [client.pings for client in clients] == [2, 2, 2, 2]
    wheel.stop()
