"""The MQTT 3.1.1 subset of the Mosquitto baseline: packets, and QoS 1 against
a real mosquitto through the load generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from pigeonpush_bench import mqtt, services
from pigeonpush_bench.control import start_loadgen
from pigeonpush_bench.processes import ProcessSet
from support.waiting import wait_for


@pytest.mark.parametrize(
    ("size", "encoded"),
    [
        # The examples of MQTT 3.1.1, section 2.2.3.
        (0, "00"),
        (127, "7f"),
        (128, "8001"),
        (16_383, "ff7f"),
        (16_384, "808001"),
        (2_097_151, "ffff7f"),
        (2_097_152, "80808001"),
        (268_435_455, "ffffff7f"),
    ],
)
def test_remaining_length_encoding(size: int, encoded: str) -> None:
    assert mqtt.remaining_length(size).hex() == encoded


def test_a_remaining_length_out_of_range_is_refused() -> None:
    with pytest.raises(mqtt.MqttError, match="out of range"):
        mqtt.remaining_length(268_435_456)


def test_connect_subscribe_publish_and_puback_bytes() -> None:
    assert mqtt.connect("c1", 30).hex() == ("100e00044d5154540402001e00026331")
    assert mqtt.subscribe(1, "bench/c1", 1).hex() == "820d0001000862656e63682f633101"
    assert mqtt.publish("t", b"hi", 1, 7).hex() == "320700017400076869"
    assert mqtt.puback(7).hex() == "40020007"


def test_publish_needs_a_packet_id_at_qos_1() -> None:
    with pytest.raises(mqtt.MqttError, match="packet id 0 out of range"):
        mqtt.publish("t", b"", 1, 0)


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.data())
def test_packets_split_anywhere_come_out_whole(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(mqtt.publish("topic", p, 1, i + 1) for i, p in enumerate(payloads))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = mqtt.PacketReader()
    packets = []
    start = 0
    for cut in [*cuts, len(stream)]:
        packets.extend(reader.feed(stream[start:cut]))
        start = cut
    decoded = [mqtt.parse_publish(first, body) for first, body in packets]
    assert decoded == [("topic", i + 1, p) for i, p in enumerate(payloads)]


def test_a_malformed_or_oversize_packet_is_an_error() -> None:
    with pytest.raises(mqtt.MqttError, match="malformed remaining length"):
        mqtt.PacketReader().feed(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(mqtt.MqttError, match="exceeds 10"):
        mqtt.PacketReader(max_size=10).feed(b"\x30\x0b")


@pytest.mark.parametrize(
    ("first", "body", "message"),
    [
        (0x32, b"\x00", "too short"),
        (0x32, b"\x00\x01t", "too short for its packet id"),
        (0x36, b"\x00\x01t\x00\x01", "QoS 3"),
        (0x30, b"\x00\x02\xff\xfe", "not UTF-8"),
    ],
)
def test_a_bad_publish_is_an_error(first: int, body: bytes, message: str) -> None:
    with pytest.raises(mqtt.MqttError, match=message):
        mqtt.parse_publish(first, body)


def test_acks_parse_and_refuse_wrong_sizes() -> None:
    assert mqtt.parse_connack(b"\x00\x05") == 5
    assert mqtt.parse_suback(b"\x00\x01\x80") == (1, b"\x80")
    assert mqtt.parse_puback(b"\x01\x02") == 258
    for parse in (mqtt.parse_connack, mqtt.parse_puback):
        with pytest.raises(mqtt.MqttError):
            parse(b"\x00")
    with pytest.raises(mqtt.MqttError):
        mqtt.parse_suback(b"\x00\x01")


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_qos1_messages_reach_subscribers_through_mosquitto(tmp_path: Path) -> None:
    from twisted.internet import reactor

    processes = ProcessSet(reactor, tmp_path)
    try:
        broker = await services.start_mosquitto(processes, reactor, max_inflight=4)
        clients = await start_loadgen(processes, reactor, "clients")
        publisher = await start_loadgen(processes, reactor, "publisher")
        connected = await clients.call(
            "connect", protocol="mqtt", server=broker.address, count=5, heartbeat=5
        )
        assert connected["ready"] == 5 and connected["failed"] == 0

        published = await publisher.call(
            "publish_mqtt", server=broker.address, clients=5, messages=40, size=64, window=8
        )

        assert published["accepted"] == 40 and published["failed"] == 0

        # The publisher's last PUBACK can come before the last subscriber's PUBLISH.
        async def all_in() -> dict[str, Any] | None:
            stats: dict[str, Any] = await clients.call("stats")
            return stats if stats["unique"] >= 40 else None

        stats = await wait_for(all_in, timeout=10, what="40 messages at the subscribers")
        assert stats["unique"] == 40
        assert stats["duplicates"] == 0
        assert stats["latency_send"]["count"] == 40
    finally:
        await processes.stop_all()
