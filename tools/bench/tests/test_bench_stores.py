"""``unicast --store``: the pigeon system on one Redis, on a Redis Cluster of
3 masters and 3 replicas, or both, with what Redis spends per message."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from pigeonpush_bench.cli import build_parser
from pigeonpush_bench.cluster import CLUSTER, REDIS, Run, Settings, Stats, start_pigeon
from pigeonpush_bench.processes import ProcessSet
from pigeonpush_bench.rediscluster import (
    NodeReading,
    RedisCost,
    RedisNodes,
    cluster_port,
    parse_info,
    query,
    start_redis_cluster,
)
from pigeonpush_bench.report import Progress, Report, format_json, format_table
from pigeonpush_bench.scenarios import (
    MOSQUITTO,
    DeliveryFigures,
    redis_metrics,
    unicast,
    unicast_comparisons,
    unicast_systems,
    unicast_targets,
)

SINGLE, ON_CLUSTER = "pigeonpush", "pigeonpush-cluster"


def _parse(*words: str) -> argparse.Namespace:
    return build_parser().parse_args(words)


def test_the_store_option_names_one_store_or_both() -> None:
    assert _parse("unicast").store == [REDIS]
    assert _parse("unicast", "--store", "cluster").store == [CLUSTER]
    assert _parse("unicast", "--store", "both").store == [REDIS, CLUSTER]


def test_an_unknown_store_is_refused_with_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse("unicast", "--store", "memcached")
    assert exited.value.code == 2
    assert "unknown store 'memcached': choose from redis, cluster or both" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("stores", [[], ["memcached"], [REDIS, "memory"]])
def test_a_scenario_refuses_an_unknown_store_before_starting_anything(
    tmp_path: Path, stores: list[str]
) -> None:
    clock = Clock()
    run = Run(
        clock,
        ProcessSet(clock, tmp_path),
        Progress(io.StringIO(), clock, enabled=False),
        Settings(),
    )
    arguments: dict[str, Any] = {"clients": 1, "messages": 1, "size": 100, "rate": 0.0}
    arguments |= {"servers": 1, "batch": 1, "concurrency": 1, "baselines": [], "command": ""}
    failure = failureResultOf(ensureDeferred(unicast(run, **arguments, stores=stores)))
    assert failure.check(ValueError)
    assert "stores must be some of redis, cluster" in str(failure.value)
    if stores:
        failure = failureResultOf(
            ensureDeferred(start_pigeon(run, servers=1, capacity=1, store=stores[-1]))
        )
        assert failure.check(ValueError)
        assert "store must be one of redis, cluster" in str(failure.value)
    assert run.processes.processes == []


def test_direct_streams_are_off_unless_asked_and_refused_on_a_cluster(tmp_path: Path) -> None:
    assert not _parse("unicast").direct_streams
    assert _parse("unicast", "--direct-streams").direct_streams
    clock = Clock()
    run = Run(
        clock,
        ProcessSet(clock, tmp_path),
        Progress(io.StringIO(), clock, enabled=False),
        Settings(),
    )
    arguments: dict[str, Any] = {"clients": 1, "messages": 1, "size": 100, "rate": 0.0}
    arguments |= {"servers": 1, "batch": 1, "concurrency": 1, "baselines": [], "command": ""}
    failure = failureResultOf(
        ensureDeferred(unicast(run, **arguments, stores=[CLUSTER], direct_streams=True))
    )
    assert failure.check(ValueError)
    assert "direct streams are for one Redis" in str(failure.value)
    assert run.processes.processes == []


def failureResultOf(deferred: Deferred[Any]) -> Failure:
    """The Failure ``deferred`` has already failed with."""
    found: list[Failure] = []
    deferred.addErrback(found.append)
    assert found, "the Deferred has not failed"
    return found[0]


def test_the_columns_and_ratios_follow_the_stores() -> None:
    both = unicast_systems([REDIS, CLUSTER], [MOSQUITTO])
    assert both == [SINGLE, ON_CLUSTER, MOSQUITTO]
    assert unicast_comparisons(both) == [
        (SINGLE, MOSQUITTO),
        (ON_CLUSTER, MOSQUITTO),
        (ON_CLUSTER, SINGLE),
    ]
    alone = unicast_systems([CLUSTER], [])
    assert alone == [ON_CLUSTER]
    assert unicast_comparisons(alone) == []
    assert unicast_comparisons(unicast_systems([REDIS], [MOSQUITTO])) == [(SINGLE, MOSQUITTO)]


def test_a_cost_separates_masters_from_replicas_by_their_role_at_the_end() -> None:
    before = {
        1: NodeReading(master=True, commands=100, cpu=1.0),
        2: NodeReading(master=False, commands=50, cpu=0.5),
        3: NodeReading(master=False, commands=10, cpu=0.1),
    }
    after = {
        1: NodeReading(master=True, commands=1100, cpu=3.0),
        2: NodeReading(master=False, commands=450, cpu=1.5),
        # Promoted meanwhile: a master now.
        3: NodeReading(master=True, commands=210, cpu=0.6),
        # Not read before: left out.
        4: NodeReading(master=True, commands=99, cpu=9.0),
    }
    cost = RedisCost.between(before, after)
    assert (cost.masters, cost.replicas) == (2, 1)
    assert (cost.master_commands, cost.replica_commands) == (1200, 400)
    assert cost.master_cpu == pytest.approx(2.5)
    assert cost.replica_cpu == pytest.approx(1.0)


def _figures(
    delivered: int, cost: RedisCost | None, accepted: int | None = None
) -> DeliveryFigures:
    stats = Stats(unique=delivered)
    return DeliveryFigures(
        accepted=delivered if accepted is None else accepted,
        refused=0,
        failed=0,
        stats=stats,
        seconds=10.0,
        server_cpu=1.0,
        generator_cpu=1.0,
        redis_cost=cost,
    )


def _report(systems: list[str]) -> Report:
    return Report(
        scenario="unicast",
        title="unicast",
        parameters={},
        systems=systems,
        comparisons=unicast_comparisons(systems),
    )


def test_redis_figures_are_per_message_with_no_replica_shown_as_none() -> None:
    results = {
        SINGLE: _figures(1000, RedisCost(1, 0, 8000, 0, 0.5, 0.0)),
        ON_CLUSTER: _figures(1000, RedisCost(3, 3, 12000, 6000, 0.9, 0.3)),
        MOSQUITTO: _figures(1000, None),
    }
    report = _report([SINGLE, ON_CLUSTER, MOSQUITTO])
    redis_metrics(report, results)
    commands = report.metric("redis_commands_per_message")
    assert commands.values == {SINGLE: 8.0, ON_CLUSTER: 12.0, MOSQUITTO: None}
    assert commands.ratio(SINGLE, ON_CLUSTER) == pytest.approx(1.5)
    assert report.metric("redis_replica_commands_per_message").values == {
        SINGLE: None,
        ON_CLUSTER: 6.0,
        MOSQUITTO: None,
    }
    assert report.metric("redis_cpu_per_message").values[SINGLE] == pytest.approx(500.0)
    assert report.metric("redis_replica_cpu_per_message").values[ON_CLUSTER] == pytest.approx(300.0)
    total = report.metric("redis_total_cpu_per_message")
    assert total.values[ON_CLUSTER] == pytest.approx(1200.0)
    assert total.ratio(SINGLE, ON_CLUSTER) == pytest.approx(2.4)
    assert any(
        "pigeonpush-cluster on 3 master(s) and 3 replica(s)" in note for note in report.notes
    )
    # The table shows the cluster over one Redis as its own column.
    table = format_table(report)
    header = next(line for line in table.splitlines() if line.startswith("metric"))
    assert header.split()[-3:] == [
        "pigeonpush/mosquitto",
        "pigeonpush-cluster/mosquitto",
        "pigeonpush-cluster/pigeonpush",
    ]
    row = next(line for line in table.splitlines() if line.startswith("Redis CPU per message, all"))
    assert row.split()[-1] == "2.40x"
    document = json.loads(format_json(report))
    ratios = next(m for m in document["metrics"] if m["key"] == "redis_commands_per_message")
    assert ratios["ratios"] == {"pigeonpush-cluster/pigeonpush": 1.5}


def test_without_redis_readings_no_redis_figures() -> None:
    report = _report([MOSQUITTO])
    redis_metrics(report, {MOSQUITTO: _figures(10, None)})
    assert report.metrics == [] and report.notes == []


def test_a_loss_on_either_store_fails_the_run() -> None:
    results = {
        SINGLE: _figures(100, None),
        ON_CLUSTER: _figures(97, None, accepted=100),
    }
    report = _report([SINGLE, ON_CLUSTER])
    unicast_targets(report, results, rate=0.0)
    assert report.ok is False
    assert [(t.text, t.met, t.detail) for t in report.targets] == [
        ("zero lost", True, "0 lost"),
        ("zero lost (pigeonpush-cluster)", False, "3 lost"),
    ]


def test_info_replies_are_read_as_fields() -> None:
    text = "# Stats\r\ntotal_commands_processed:42\r\n\r\n# Replication\r\nrole:slave\r\n"
    assert parse_info(text) == {"total_commands_processed": "42", "role": "slave"}


def test_a_cluster_port_leaves_room_for_its_bus() -> None:
    for _ in range(20):
        assert cluster_port() + 10_000 <= 65_535


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_the_cluster_starts_with_three_masters_and_three_replicas(tmp_path: Path) -> None:
    import shutil

    from twisted.internet import reactor

    processes = ProcessSet(reactor, tmp_path)
    try:
        cluster = await start_redis_cluster(
            processes,
            reactor,
            binary=str(shutil.which("redis-server")),
            cli=str(shutil.which("redis-cli")),
        )
        assert cluster.url.startswith("redis+cluster://127.0.0.1:")
        assert cluster.url.count(",") == 2
        nodes = RedisNodes([(node.process, node.port) for node in cluster.nodes])
        before = await nodes.read()
        assert sorted(r.master for r in before.values()) == [False] * 3 + [True] * 3
        state = await query(cluster.nodes[0].port, "CLUSTER", "INFO")
        assert state["cluster_state"] == "ok"
        cost = RedisCost.between(before, await nodes.read())
        assert (cost.masters, cost.replicas) == (3, 3)
        # Each read is one INFO per node, counted on every node.
        assert cost.master_commands >= 3
    finally:
        await processes.stop_all()
    assert not any(process.running for process in processes.processes)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_small_unicast_run_on_both_stores_end_to_end() -> None:
    """Every daemon on one Redis, then on the cluster: both deliver every
    message, and Redis's figures and the cluster/redis ratios are there."""
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable, "-m", "pigeonpush_bench", "unicast",
            "--clients", "10", "--messages", "200", "--store", "both",
            "--baselines", "none", "--json", "--no-progress", "--timeout", "240",
        ],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["systems"] == [SINGLE, ON_CLUSTER]
    assert report["parameters"]["store"] == "both"
    metrics = {metric["key"]: metric for metric in report["metrics"]}
    assert metrics["delivered"]["values"] == {SINGLE: 200, ON_CLUSTER: 200}
    assert metrics["lost"]["values"] == {SINGLE: 0, ON_CLUSTER: 0}
    commands = metrics["redis_commands_per_message"]
    assert commands["values"][SINGLE] > 0 and commands["values"][ON_CLUSTER] > 0
    assert set(commands["ratios"]) == {"pigeonpush-cluster/pigeonpush"}
    replicas = metrics["redis_replica_commands_per_message"]["values"]
    assert replicas[SINGLE] is None and replicas[ON_CLUSTER] > 0
