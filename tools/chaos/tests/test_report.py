"""The report's counting: lost, duplicates, delays, reconnect times."""

from __future__ import annotations

import pytest

from pigeonpush_chaos.records import Arrival, Event, EventKind, Journal, UplinkAcked
from pigeonpush_chaos.report import (
    Accepted,
    ChaosReport,
    FaultWindow,
    compute,
    format_table,
    percentile,
)
from pigeonpush_chaos.schedule import FaultKind

HEARTBEAT = 5.0


def authenticated(time: float, client: str, server: str = "s1") -> Event:
    return Event(time, client, EventKind.AUTHENTICATED, server)


def disconnected(time: float, client: str, server: str = "s1") -> Event:
    return Event(time, client, EventKind.DISCONNECTED, server, True, "connection lost")


def journal(*records: Arrival | Event) -> Journal:
    result = Journal()
    for record in records:
        result.add(record)
    return result


def run(
    accepted: dict[str, Accepted],
    records: Journal,
    faults: list[FaultWindow] | None = None,
    clients: tuple[str, ...] = ("a", "b"),
    end: float = 1000.0,
) -> ChaosReport:
    return compute(
        clients=clients,
        messages=len(accepted),
        accepted=accepted,
        refused=0,
        unsent=0,
        journal=records,
        faults=faults or [],
        heartbeat=HEARTBEAT,
        reconnect_bound=10.0,
        origin=0.0,
        end=end,
    )


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.5) == 3.0
    assert percentile([], 0.5) is None


def test_counts_delivered_lost_and_duplicates() -> None:
    accepted = {"m1": Accepted("a", 10.0), "m2": Accepted("a", 11.0), "m3": Accepted("b", 12.0)}
    records = journal(
        authenticated(1.0, "a"),
        authenticated(1.0, "b"),
        Arrival(10.5, "a", "m1"),
        Arrival(10.6, "a", "m1"),  # the callback saw it twice
        Arrival(12.5, "b", "m3"),
        Arrival(12.7, "b", "m3"),
        Arrival(12.8, "b", "m3"),
    )
    report = run(accepted, records)
    assert report.delivered == 2
    assert report.lost == ["m2"]
    assert report.duplicates == 3
    assert report.latencies == pytest.approx([0.5, 0.5])
    assert "1 accepted message(s) lost" in report.failures()
    assert "3 duplicate(s) at the callback" in report.failures()


def test_a_message_to_the_wrong_client_or_never_sent_is_not_delivered() -> None:
    accepted = {"m1": Accepted("a", 10.0)}
    records = journal(
        authenticated(1.0, "a"),
        authenticated(1.0, "b"),
        Arrival(10.5, "b", "m1"),
        Arrival(10.5, "a", "zz"),
    )
    report = run(accepted, records)
    assert report.misdelivered == 1
    assert report.unexpected == 1
    assert report.lost == ["m1"]


def test_same_id_on_two_clients_is_not_a_duplicate() -> None:
    accepted = {"m1": Accepted("a", 10.0)}
    records = journal(authenticated(1.0, "a"), Arrival(10.5, "a", "m1"), Arrival(10.5, "b", "m1"))
    report = run(accepted, records)
    assert report.duplicates == 0
    assert report.misdelivered == 1


def test_delay_counts_from_the_session_that_received_the_message() -> None:
    # Accepted at 10 while the client was away; it came back at 30 and got the
    # message at 32: 2 s of delay, not 22.
    accepted = {"m1": Accepted("a", 10.0), "m2": Accepted("a", 10.0)}
    records = journal(
        authenticated(1.0, "a"),
        disconnected(5.0, "a"),
        authenticated(30.0, "a"),
        Arrival(32.0, "a", "m1"),
        Arrival(41.0, "a", "m2"),  # 11 s after its session started: delayed
    )
    report = run(accepted, records)
    assert [d.message_id for d in report.delayed] == ["m2"]
    assert report.delayed[0].delay == pytest.approx(11.0)
    assert report.delayed[0].ready == 30.0


def test_a_global_fault_excuses_delay_until_its_recovery() -> None:
    accepted = {"m1": Accepted("a", 10.0), "m2": Accepted("a", 10.0), "m3": Accepted("a", 50.0)}
    redis = FaultWindow(FaultKind.RESTART_REDIS, "redis", 12.0, 25.0)
    records = journal(
        authenticated(1.0, "a"),
        Arrival(34.0, "a", "m1"),  # 9 s after the recovery: in time
        Arrival(36.0, "a", "m2"),  # 11 s after: delayed
        Arrival(62.0, "a", "m3"),  # accepted after the window: 12 s, delayed
    )
    report = run(accepted, records, [redis])
    assert sorted(d.message_id for d in report.delayed) == ["m2", "m3"]
    assert {d.message_id: d.ready for d in report.delayed} == {"m2": 25.0, "m3": 50.0}
    assert report.faults[0].delayed == 2


def test_a_push_server_fault_excuses_nothing_by_itself() -> None:
    # The client stayed connected (another server): the kill explains nothing.
    accepted = {"m1": Accepted("a", 10.0)}
    kill = FaultWindow(FaultKind.KILL_SERVER, "server-0", 11.0, 14.0)
    records = journal(authenticated(1.0, "a"), Arrival(22.0, "a", "m1"))
    report = run(accepted, records, [kill])
    assert [d.message_id for d in report.delayed] == ["m1"]
    assert report.delayed[0].fault == 0


def test_a_delay_is_blamed_on_the_fault_that_held_the_message_up() -> None:
    # Stranded by the first fault, it arrives only after the second began.
    accepted = {"m1": Accepted("a", 11.0)}
    faults = [
        FaultWindow(FaultKind.KILL_SERVER_ZOOKEEPER_DOWN, "server-0+zookeeper", 10.0, 20.0),
        FaultWindow(FaultKind.KILL_SERVER, "server-1", 40.0, 42.0),
    ]
    records = journal(authenticated(1.0, "a"), Arrival(50.0, "a", "m1"))
    report = run(accepted, records, faults)
    assert [(d.ready, d.fault) for d in report.delayed] == [(20.0, 0)]
    assert [outcome.delayed for outcome in report.faults] == [1, 0]
    assert report.to_json()["delayed"]["byFault"] == {"1:kill-server-zookeeper-down": 1}


def test_a_global_fault_that_never_recovered_excuses_until_the_end() -> None:
    accepted = {"m1": Accepted("a", 10.0)}
    zookeeper = FaultWindow(FaultKind.EXPIRE_ZOOKEEPER, "zookeeper", 11.0, None)
    records = journal(authenticated(1.0, "a"), Arrival(40.0, "a", "m1"))
    report = run(accepted, records, [zookeeper], end=45.0)
    assert report.delayed == []
    assert any("did not recover" in failure for failure in report.failures())


def test_reconnect_times_per_fault() -> None:
    faults = [
        FaultWindow(FaultKind.KILL_SERVER, "server-0", 100.0, 102.0),
        FaultWindow(FaultKind.TERM_SERVER, "server-1", 200.0, 210.0),
    ]
    records = journal(
        authenticated(1.0, "a"),
        authenticated(1.0, "b"),
        authenticated(1.0, "c"),
        disconnected(50.0, "c"),  # before any fault
        authenticated(51.0, "c"),
        disconnected(100.1, "a"),
        authenticated(103.1, "a"),
        disconnected(104.0, "a"),  # a second drop in the same window: the first counts
        authenticated(120.0, "a"),
        disconnected(100.2, "b"),
        Event(101.0, "b", EventKind.CONNECT_FAILED, "s1", reason="Connection refused"),
        Event(103.0, "b", EventKind.CONNECT_FAILED, "s1", reason="Connection refused"),
        authenticated(112.2, "b", "s2"),  # 12 s: late
        disconnected(205.0, "a"),  # never back
        Event(206.0, "a", EventKind.GAVE_UP, reason="RouteLookupFailed"),
    )
    report = run({}, records, faults, clients=("a", "b", "c"))
    first, second = report.faults
    assert first.reconnects == pytest.approx({"a": 3.0, "b": 12.0})
    assert first.all_back_after == pytest.approx(12.2)
    assert first.connect_failures == 2
    assert first.slowest_trail == [
        "client b",
        "+0.20s disconnected s1 connection lost",
        "+1.00s connect_failed s1 Connection refused",
        "+3.00s connect_failed s1 Connection refused",
        "+12.20s authenticated s2",
    ]
    assert second.slowest_trail == [
        "client a",
        "+5.00s disconnected s1 connection lost",
        "+6.00s gave_up RouteLookupFailed",
    ]
    assert second.reconnects == {"a": None}
    assert second.not_back == ["a"]
    assert report.disconnects_before_faults == 1
    assert report.gave_up == {"RouteLookupFailed": 1}
    failures = report.failures()
    assert "fault 1 (kill-server server-0): 1 client(s) back after more than 10s (max 12.0s)" in (
        failures
    )
    assert "fault 2 (term-server server-1): 1 client(s) never came back" in failures
    table = format_table(report)
    assert "fault 1: 2 failed connection attempts; the slowest client's trail:" in table
    assert "  +12.20s authenticated s2" in table


def test_a_clean_run_has_no_failures_and_renders() -> None:
    accepted = {"m1": Accepted("a", 10.0)}
    records = journal(authenticated(1.0, "a"), Arrival(10.2, "a", "m1"))
    report = run(accepted, records, [FaultWindow(FaultKind.KILL_DELIVERY, "d", 11.0, 12.0)])
    assert report.failures() == []
    data = report.to_json()
    assert data["messages"]["lost"] == 0
    assert data["latency"]["p50"] == pytest.approx(0.2)
    assert data["faults"][0]["kind"] == "kill-delivery"
    table = format_table(report)
    assert "assertions: all hold" in table
    assert "kill-delivery" in table


def test_a_daemon_that_exited_by_itself_fails_the_run() -> None:
    report = compute(
        clients=[],
        messages=0,
        accepted={},
        refused=0,
        unsent=0,
        journal=Journal(),
        faults=[],
        heartbeat=HEARTBEAT,
        reconnect_bound=10.0,
        origin=0.0,
        end=1.0,
        exited={"delivery-1": 1},
    )
    assert report.failures() == ["delivery-1 exited by itself (status 1)"]
    assert report.to_json()["exited"] == {"delivery-1": 1}


def test_refused_and_unsent_notifications_fail_the_run() -> None:
    report = compute(
        clients=["a"],
        messages=3,
        accepted={},
        refused=1,
        unsent=2,
        journal=Journal(),
        faults=[],
        heartbeat=HEARTBEAT,
        reconnect_bound=10.0,
        origin=0.0,
        end=1.0,
    )
    assert report.failures() == ["1 notification(s) refused, 2 never accepted"]


def test_an_acknowledged_uplink_missing_or_stored_twice_fails_the_run() -> None:
    records = Journal()
    for uplink in ("a-u0", "a-u1", "a-u2"):
        records.add(UplinkAcked(2.0, "a", uplink))
    stored = [("a", "a-u0"), ("a", "a-u1"), ("a", "a-u1"), ("b", "b-u0")]
    report = compute(
        clients=["a", "b"],
        messages=0,
        accepted={},
        refused=0,
        unsent=0,
        journal=records,
        faults=[],
        heartbeat=HEARTBEAT,
        reconnect_bound=10.0,
        origin=0.0,
        end=1.0,
        uplinks_stored=stored,
    )
    assert report.failures() == [
        "1 acknowledged uplink(s) lost",
        "1 uplink(s) stored more than once",
    ]
    assert report.to_json()["uplinks"] == {
        "acked": 3,
        "lost": 1,
        "lostIds": ["a a-u2"],
        "duplicated": 1,
    }
    assert "uplinks   acknowledged 3  lost 1  stored twice 1" in format_table(report)


def test_figures_per_transport() -> None:
    accepted = {
        "m1": Accepted("a", 10.0),
        "m2": Accepted("b", 10.0),
        "m3": Accepted("b", 11.0),
        "m4": Accepted("c", 11.0),
    }
    records = journal(
        authenticated(1.0, "a"),
        authenticated(1.0, "b", "ws1"),
        authenticated(1.0, "c", "ws1"),
        Arrival(10.5, "a", "m1"),
        Arrival(10.2, "b", "m2"),
        Arrival(10.3, "b", "m2"),
        Arrival(11.4, "c", "m4"),
        disconnected(20.0, "a"),
        authenticated(21.0, "a"),
        disconnected(20.0, "b", "ws1"),
        authenticated(23.0, "b", "ws1"),
        disconnected(20.0, "c", "ws1"),
    )
    records.add(UplinkAcked(2.0, "b", "b-u0"))
    report = compute(
        clients=["a", "b", "c"],
        messages=4,
        accepted=accepted,
        refused=0,
        unsent=0,
        journal=records,
        faults=[FaultWindow(FaultKind.KILL_SERVER, "server-1", 19.0, 19.5)],
        heartbeat=HEARTBEAT,
        reconnect_bound=10.0,
        origin=0.0,
        end=100.0,
        uplinks_stored=[],
        transports={"a": "tcp", "b": "websocket", "c": "websocket"},
    )
    figures = report.to_json()["transports"]
    assert figures["tcp"] == {
        "clients": 1,
        "accepted": 1,
        "delivered": 1,
        "lost": 0,
        "duplicates": 0,
        "delayed": 0,
        "latencyP50": 0.5,
        "latencyP99": 0.5,
        "reconnections": 1,
        "reconnectP50": 1.0,
        "reconnectMax": 1.0,
        "notBack": 0,
        "uplinksAcked": 0,
        "uplinksLost": 0,
    }
    websocket = figures["websocket"]
    assert (websocket["clients"], websocket["accepted"], websocket["delivered"]) == (2, 3, 2)
    assert (websocket["lost"], websocket["duplicates"], websocket["notBack"]) == (1, 1, 1)
    assert (websocket["reconnections"], websocket["reconnectMax"]) == (1, 3.0)
    assert (websocket["uplinksAcked"], websocket["uplinksLost"]) == (1, 1)
    table = format_table(report)
    assert "transport" in table and "\nwebsocket        2        3     1" in table


def test_every_client_counts_as_tcp_unless_told() -> None:
    report = run({"m1": Accepted("a", 10.0)}, journal(Arrival(10.5, "a", "m1")))
    assert list(report.transports) == ["tcp"]
    assert report.transports["tcp"].clients == 2
