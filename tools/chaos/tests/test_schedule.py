"""The fault schedule."""

from __future__ import annotations

import pytest

from pigeonpush_chaos.schedule import (
    DEFAULT_FAULTS,
    FaultKind,
    Planned,
    parse_faults,
    plan,
    start_time,
)


def test_faults_parse_in_order_with_repeats() -> None:
    assert parse_faults("kill-server, restart-redis,kill-server") == [
        FaultKind.KILL_SERVER,
        FaultKind.RESTART_REDIS,
        FaultKind.KILL_SERVER,
    ]
    assert parse_faults("") == []


def test_an_unknown_fault_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown fault 'kill-all'; known: kill-server"):
        parse_faults("kill-server,kill-all")


def test_the_default_schedule_is_the_issues() -> None:
    assert [kind.value for kind in DEFAULT_FAULTS] == [
        "kill-server",
        "kill-delivery",
        "restart-redis",
        "expire-zookeeper",
        "term-server",
    ]


def test_global_faults_are_the_ones_that_stall_everyone() -> None:
    assert {kind for kind in FaultKind if kind.global_} == {
        FaultKind.KILL_DELIVERY,
        FaultKind.RESTART_REDIS,
        FaultKind.EXPIRE_ZOOKEEPER,
        FaultKind.KILL_SERVER_ZOOKEEPER_DOWN,
    }


def test_faults_are_spread_evenly_after_the_lead() -> None:
    kinds = [FaultKind.KILL_SERVER, FaultKind.KILL_DELIVERY, FaultKind.TERM_SERVER]
    assert plan(kinds, 100.0, 10.0) == [
        Planned(FaultKind.KILL_SERVER, 10.0),
        Planned(FaultKind.KILL_DELIVERY, 40.0),
        Planned(FaultKind.TERM_SERVER, 70.0),
    ]
    assert plan([], 100.0, 10.0) == []
    # A send shorter than the lead: every fault at the lead, one after the other.
    assert [p.due for p in plan(kinds, 5.0, 10.0)] == [10.0, 10.0, 10.0]


def test_plan_refuses_negative_times() -> None:
    with pytest.raises(ValueError):
        plan([FaultKind.KILL_SERVER], -1.0, 0.0)


def test_a_fault_waits_for_the_gap_after_the_previous_recovery() -> None:
    assert start_time(40.0, None, 10.0) == 40.0
    assert start_time(40.0, 25.0, 10.0) == 40.0
    assert start_time(40.0, 35.0, 10.0) == 45.0
