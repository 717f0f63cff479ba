"""Record lines: written by a client process, read back by the coordinator."""

from __future__ import annotations

from pathlib import Path

import pytest

from pigeonpush_chaos.records import (
    Arrival,
    BadRecord,
    Event,
    EventKind,
    Journal,
    Tail,
    UplinkAcked,
    arrival_line,
    event_line,
    parse_line,
    uplink_line,
)


@pytest.mark.parametrize(
    "record",
    [
        Arrival(1700000000.123456, "chaos-000001", "01HZX3JQ6Q4V8Y2N7K5M9T1B3C"),
        Event(1.5, "c", EventKind.CONNECTED, "127.0.0.1:7100"),
        Event(1.5, "c", EventKind.AUTHENTICATED, "127.0.0.1:7100"),
        Event(1.5, "c", EventKind.DISCONNECTED, "127.0.0.1:7100", True, "connection lost"),
        Event(1.5, "c", EventKind.DISCONNECTED, "127.0.0.1:7100", False, "refused"),
        Event(1.5, "c", EventKind.GAVE_UP, reason="SessionReplaced"),
        Event(1.5, "c", EventKind.CONNECT_FAILED, "127.0.0.1:7100", reason="Connection refused"),
        Event(1.5, "c", EventKind.ROUTE_LOOKUP, reason="HTTP 503"),
    ],
)
def test_a_record_survives_its_line(record: Arrival | Event) -> None:
    line = (
        arrival_line(record.time, record.client, record.message_id)
        if isinstance(record, Arrival)
        else event_line(record)
    )
    assert line.endswith("\n") and line.count("\n") == 1
    assert parse_line(line) == record


def test_reasons_lose_their_newlines() -> None:
    line = event_line(Event(2.0, "c", EventKind.DISCONNECTED, "s:1", True, "a\nb  c"))
    assert parse_line(line) == Event(2.0, "c", EventKind.DISCONNECTED, "s:1", True, "a b c")


@pytest.mark.parametrize(
    "line", ["", "X 1 c", "M notatime c m", "D 1 c s 2 why", "M 1 c", "F 1 c s"]
)
def test_bad_lines_are_refused(line: str) -> None:
    with pytest.raises(BadRecord):
        parse_line(line)


def test_journal_follows_who_is_online_where() -> None:
    journal = Journal()
    journal.add_line(event_line(Event(1.0, "a", EventKind.AUTHENTICATED, "s1")))
    journal.add_line(event_line(Event(1.0, "b", EventKind.AUTHENTICATED, "s2")))
    journal.add_line(event_line(Event(1.0, "c", EventKind.AUTHENTICATED, "s1")))
    assert journal.online_count() == 3
    assert journal.clients_on("s1") == 2
    journal.add_line(event_line(Event(2.0, "a", EventKind.DISCONNECTED, "s1", True, "x")))
    journal.add_line(event_line(Event(2.0, "b", EventKind.GAVE_UP, reason="Why")))
    journal.add_line("garbage")
    assert journal.online_count() == 1
    assert journal.clients_on("s1") == 1
    assert journal.gave_up() == {"b"}
    assert journal.bad_lines == 1


def test_tail_reads_complete_lines_as_the_file_grows(tmp_path: Path) -> None:
    path = tmp_path / "records"
    journal = Journal()
    tail = Tail(path, journal)
    assert tail.read() == 0  # not there yet
    line = arrival_line(1.0, "a", "m1")
    path.write_text(line + line[:5])
    assert tail.read() == 1
    with open(path, "a") as out:
        out.write(line[5:])
    assert tail.read() == 1
    assert journal.received == {("a", "m1")}
    assert len(journal.arrivals) == 2


def test_an_acknowledged_uplink_is_a_record_of_its_own() -> None:
    line = uplink_line(1.5, "chaos-000001", "chaos-000001-u2")
    assert parse_line(line) == UplinkAcked(1.5, "chaos-000001", "chaos-000001-u2")
    journal = Journal()
    journal.add_line(line)
    journal.add_line(line)
    assert journal.uplinks_acked == {("chaos-000001", "chaos-000001-u2")}
    assert journal.arrivals == [] and journal.events == []
    with pytest.raises(BadRecord):
        parse_line("U 1 c")
