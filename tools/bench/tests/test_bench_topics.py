"""The topic scenarios (``fanout``, ``catchup``, ``connections
--topics-per-client``): options, per-client counting, reports, Redis INFO,
and one small end-to-end run of each."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import pytest
from test_bench_loadgen import Reported, TcpTransport
from twisted.internet.task import Clock

from pigeonpush_bench import mqtt
from pigeonpush_bench.cli import build_parser, check
from pigeonpush_bench.clients import MqttClient
from pigeonpush_bench.cluster import Stats
from pigeonpush_bench.loadgen import Recorder
from pigeonpush_bench.measure import connections_per_process
from pigeonpush_bench.scenarios import ConnectionFigures
from pigeonpush_bench.topics import (
    NO_TOPICS,
    FanoutFigures,
    TopicMemoryFigures,
    catchup_report,
    command_delta,
    fanout_report,
    parse_info,
    topic_memory_report,
    topic_names,
)


def _parse(*words: str) -> argparse.Namespace:
    return build_parser().parse_args(words)


def test_defaults_of_the_topic_scenarios() -> None:
    args = _parse("fanout")
    assert (args.subscribers, args.messages, args.servers, args.baselines) == (
        2000,
        20,
        1,
        ["mosquitto"],
    )
    args = _parse("catchup", "--subscribers", "10000")
    assert (args.subscribers, args.per_subscriber, args.servers) == (10_000, 100, 1)
    assert _parse("connections").topics_per_client == 0
    assert _parse("connections", "--topics-per-client", "10").topics_per_client == 10


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["fanout", "--subscribers", "0"], "must be from 1 to 200,000, not 0"),
        (["fanout", "--messages", "10001"], "must be from 1 to 10,000, not 10,001"),
        (["fanout", "--baselines", "twisted,nginx"], "unknown baseline 'nginx'"),
        (["catchup", "--per-subscriber", "0"], "must be from 1 to 10,000, not 0"),
        (["catchup", "--servers", "17"], "must be from 1 to 16, not 17"),
        (["connections", "--topics-per-client", "101"], "must be from 0 to 100, not 101"),
    ],
)
def test_bad_topic_options_are_refused_with_a_reason(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse(*words)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_subscribers_beyond_the_fd_limit_ask_for_more_servers() -> None:
    limit = connections_per_process()
    for scenario in ("fanout", "catchup"):
        problem = check(_parse(scenario, "--subscribers", str(limit * 4 + 1), "--servers", "4"))
        assert problem is not None and "use --servers 5" in problem
        assert check(_parse(scenario, "--subscribers", str(limit * 4), "--servers", "4")) is None


def test_subscribers_of_one_topic_count_each_message_once_per_client() -> None:
    recorder = Recorder(Clock())
    recorder.per_client = True
    for client in (0, 1, 2):
        recorder.message(client, "01A", "x", None)
    recorder.message(0, "01B", "x", None)
    recorder.message(0, "01B", "x", None)
    recorder.message(1, "01A", "x", None)
    assert (recorder.unique, recorder.duplicates, recorder.received) == (4, 2, 6)
    assert recorder.short_of(2, [0, 1, 2, 3]) == 3
    assert recorder.short_of(1, [0, 1, 2]) == 0
    # A message to one client (unicast): the same id twice is a duplicate anywhere.
    unicast = Recorder(Clock())
    unicast.message(0, "01A", "x", None)
    unicast.message(1, "01A", "x", None)
    assert (unicast.unique, unicast.duplicates) == (1, 1)
    assert unicast.short_of(1, [0, 1]) == 0


def test_an_mqtt_client_of_a_shared_topic_subscribes_to_it() -> None:
    fleet = Reported()
    client = MqttClient(fleet, 7, "c7", 30, "bench/fanout")  # type: ignore[arg-type]
    transport = TcpTransport()
    client.makeConnection(transport)
    transport.clear()
    client.dataReceived(b"\x20\x02\x00\x00")  # CONNACK accepted
    assert transport.value() == mqtt.subscribe(1, "bench/fanout", 1)
    client.dataReceived(b"\x90\x03\x00\x01\x01" + mqtt.publish("bench/fanout", b"3|x", 1, 9))
    assert fleet.events == [("ready", 7, 30.0), ("pushed", "3", "x", None)]


def _stats(**fields: Any) -> Stats:
    stats = Stats(**fields)
    stats.latency_send.record(2000.0)
    return stats


def _fanout(system: str, delivered: int, seconds: float, **fields: Any) -> FanoutFigures:
    return FanoutFigures(
        subscribers=100,
        published=10,
        stats=_stats(ready=100, unique=delivered),
        short=fields.pop("short", 0),
        seconds=seconds,
        cpu_by_process=fields.pop("cpu", {f"{system}-0": 0.5}),
        **fields,
    )


def test_the_fanout_report_compares_deliveries_per_second() -> None:
    results = {
        "pigeonpush": _fanout("server", 1000, 0.5, cpu={"server-0": 0.3, "redis": 0.1}),
        "mosquitto": _fanout("mosquitto", 1000, 0.25),
    }
    report = fanout_report(
        results, subscribers=100, messages=10, size=100, servers=1, command="pigeonpush-bench x"
    )
    assert report.metric("throughput").values == {"pigeonpush": 2000.0, "mosquitto": 4000.0}
    assert report.metric("throughput").ratio("mosquitto") == 0.5
    assert report.metric("server_cpu_per_delivery").values["pigeonpush"] == pytest.approx(400.0)
    assert report.metric("latency_p50").values["pigeonpush"] == pytest.approx(2.0, rel=0.05)
    assert [(t.text, t.met) for t in report.targets] == [
        ("zero lost", True),
        ("fan-out at least 0.5x Mosquitto's deliveries/s", True),
    ]
    assert report.ok
    assert any("server-0 300.00, redis 100.00" in note for note in report.notes)


def test_a_fanout_that_loses_or_is_slow_says_by_how_much() -> None:
    results = {
        "pigeonpush": _fanout("server", 990, 1.0, short=4),
        "mosquitto": _fanout("mosquitto", 1000, 0.25),
    }
    report = fanout_report(results, subscribers=100, messages=10, size=100, servers=1, command="")
    assert report.metric("lost").values["pigeonpush"] == 10
    assert [(t.met, t.detail) for t in report.targets] == [
        (False, "10 lost, 4 short"),
        (False, "0.25x"),
    ]
    assert not report.ok
    alone = fanout_report(
        {"pigeonpush": results["pigeonpush"]},
        subscribers=100,
        messages=10,
        size=100,
        servers=1,
        command="",
    )
    assert [t.text for t in alone.targets] == ["zero lost"]


def test_the_catchup_report_counts_redis_commands_per_delivery() -> None:
    figures = _fanout(
        "server",
        1000,
        4.0,
        connect_seconds=1.5,
        redis_commands=2500,
        redis_top={"evalsha": 1200, "xrange": 40},
    )
    report = catchup_report(figures, messages=10, size=100, servers=1, command="")
    assert report.metric("redis_per_delivery").values == {"pigeonpush": 2.5}
    assert report.metric("drain_seconds").values == {"pigeonpush": 4.0}
    assert report.metric("throughput").values == {"pigeonpush": 250.0}
    assert report.ok and report.targets[0].met
    assert any("evalsha 1,200, xrange 40" in note for note in report.notes)
    # At-least-once: repeats are reported, not a failed run; a subscriber that
    # could not connect is.
    figures.stats.duplicates = 7
    assert catchup_report(figures, messages=10, size=100, servers=1, command="").ok
    figures.stats.ready = 99
    report = catchup_report(figures, messages=10, size=100, servers=1, command="")
    assert not report.ok and report.metric("expected").values == {"pigeonpush": 990}


def _connections(connected: int, idle: int, loaded: int) -> ConnectionFigures:
    return ConnectionFigures(connected, 0, 1.0, idle, loaded, 0.01, 0.02, 100.0, {})


def test_the_memory_report_gives_bytes_per_subscription() -> None:
    base = 50 << 20
    with_topics = TopicMemoryFigures(_connections(1000, base, base + 8_000_000), 10, 1_500_000)
    without = TopicMemoryFigures(_connections(1000, base, base + 5_000_000), 0)
    report = topic_memory_report(with_topics, without, clients=1000, servers=1, command="")
    assert report.systems == ["pigeonpush", NO_TOPICS]
    assert report.metric("rss_per_subscription").values["pigeonpush"] == pytest.approx(300.0)
    assert report.metric("redis_per_subscription").values["pigeonpush"] == 150.0
    assert report.metric("rss_added_per_connection").ratio(NO_TOPICS) == pytest.approx(1.6)
    assert report.ok
    assert topic_names(2) == ["bench.topic-00", "bench.topic-01"]


def test_redis_info_is_read_and_compared() -> None:
    text = "# Stats\r\ntotal_commands_processed:42\r\n\r\n# Commandstats\r\n"
    text += "cmdstat_get:calls=5,usec=10,usec_per_call=2.00\r\n"
    assert parse_info(text) == {
        "total_commands_processed": "42",
        "cmdstat_get": "calls=5,usec=10,usec_per_call=2.00",
    }
    before = {"get": 5, "set": 1}
    after = {"get": 9, "set": 1, "evalsha": 20, "xrange": 2, "info": 2}
    assert command_delta(before, after, top=2) == {"evalsha": 20, "get": 4}


def _run(*words: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "pigeonpush_bench", *words, "--json", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _values(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {metric["key"]: metric["values"] for metric in report["metrics"]}


@pytest.mark.slow
def test_a_small_fanout_run_end_to_end() -> None:
    report = _run("fanout", "--subscribers", "20", "--messages", "5", "--timeout", "240")
    values = _values(report)
    assert values["delivered"] == {"pigeonpush": 100, "mosquitto": 100}
    assert values["lost"] == {"pigeonpush": 0, "mosquitto": 0}
    assert values["duplicates"] == {"pigeonpush": 0, "mosquitto": 0}
    assert report["targets"][0] == {"text": "zero lost", "met": True, "detail": "0 lost, 0 short"}


@pytest.mark.slow
def test_a_small_catchup_run_end_to_end() -> None:
    report = _run(
        "catchup",
        "--subscribers",
        "10",
        "--per-subscriber",
        "5",
        "--heartbeat",
        "1",
        "--timeout",
        "240",
    )
    values = _values(report)
    assert values["delivered"] == {"pigeonpush": 50}
    assert values["out_of_order"] == {"pigeonpush": 0}
    assert values["redis_per_delivery"]["pigeonpush"] > 0
