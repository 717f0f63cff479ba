"""``pigeonpush-bench``: its options, its checks, what it measures with, and
one small end-to-end run against the real daemons and baselines."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from pigeonpush_bench.cli import batch_size, build_parser, check
from pigeonpush_bench.measure import (
    ProcessGone,
    connections_per_process,
    cpu_seconds,
    fd_limit,
    machine,
    rss_bytes,
    sample,
    usage_between,
)
from pigeonpush_bench.processes import marked_pids
from pigeonpush_bench.services import twist_command
from pigeonpush_bench.twist import install


def _parse(*words: str) -> argparse.Namespace:
    return build_parser().parse_args(words)


def test_defaults_of_each_scenario() -> None:
    args = _parse("connections")
    assert (args.n, args.servers, args.baselines) == (2000, 1, ["twisted", "mosquitto"])
    args = _parse("unicast", "--rate", "2000", "--baselines", "none")
    assert (args.clients, args.messages, args.rate, args.baselines) == (1000, 10_000, 2000.0, [])
    args = _parse("reconnect")
    assert (args.servers, args.messages) == (2, None)
    args = _parse("push")
    assert (args.clients, args.messages, args.burst, args.reactor) == (1000, 100_000, 8, "default")


def test_batches_at_a_fixed_rate_hold_what_is_due_every_10_ms() -> None:
    assert batch_size(_parse("unicast")) == 100
    assert batch_size(_parse("unicast", "--rate", "2000")) == 20
    assert batch_size(_parse("unicast", "--rate", "50")) == 1
    assert batch_size(_parse("unicast", "--rate", "2000", "--batch", "7")) == 7
    assert batch_size(_parse("backlog")) == 100


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["connections", "--n", "0"], "must be from 1 to 200,000, not 0"),
        (["connections", "--n", "lots"], "'lots' is not a whole number"),
        (["connections", "--baselines", "nginx"], "unknown baseline 'nginx'"),
        (["unicast", "--size", "8"], "must be from 32 to 2,048, not 8"),
        (["unicast", "--rate", "-1"], "must be 0 (as fast as possible) or more"),
        (["backlog", "--timeout", "0"], "must be more than 0"),
        (["push", "--burst", "33"], "must be from 1 to 32, not 33"),
        (["push", "--reactor", "kqueue"], "invalid choice: 'kqueue'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_options_are_refused_with_a_reason(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse(*words)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_runs_beyond_the_fd_limit_ask_for_more_servers() -> None:
    limit = connections_per_process()
    problem = check(_parse("connections", "--n", str(limit * 3 + 1), "--servers", "3"))
    assert problem is not None
    assert f"more than {limit:,} per process" in problem and "use --servers 4" in problem
    assert check(_parse("connections", "--n", str(limit * 3), "--servers", "3")) is None
    assert "reconnect needs --servers 2" in (check(_parse("reconnect", "--servers", "1")) or "")


def test_help_states_the_machine_limit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("--help")
    out = capsys.readouterr().out
    assert f"~{connections_per_process():,} connections" in out
    for scenario in ("connections", "unicast", "push", "backlog", "reconnect"):
        assert scenario in out


def test_process_figures_match_proc() -> None:
    me = os.getpid()
    status = Path(f"/proc/{me}/status").read_text()
    vmrss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    assert abs(rss_bytes(me) - vmrss * 1024) < 64 * 1024 * 1024
    clock = Clock()
    first = sample(me, clock)
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    clock.advance(2.0)
    usage = usage_between(first, sample(me, clock))
    assert usage.seconds == 2.0 and usage.cpu > 0 and usage.cores == usage.cpu / 2.0
    assert cpu_seconds(me) >= usage.cpu


def test_a_finished_process_cannot_be_measured() -> None:
    process = subprocess.Popen(["true"])
    process.wait()
    with pytest.raises(ProcessGone):
        rss_bytes(process.pid)
    with pytest.raises(ProcessGone):
        cpu_seconds(process.pid)


def test_the_machine_is_described() -> None:
    facts = machine()
    assert facts["cpus"] == os.cpu_count()
    assert facts["fd_limit"] == fd_limit() > 0
    assert connections_per_process() <= fd_limit() - 500


@pytest.mark.slow
def test_a_small_connections_run_end_to_end() -> None:
    """pigeon-server, reglog, delivery, Redis, ZooKeeper, the bare Twisted
    baseline and Mosquitto, each started, measured and stopped."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pigeonpush_bench",
            "connections",
            "--n",
            "20",
            "--servers",
            "1",
            "--window",
            "1",
            "--heartbeat",
            "1",
            "--json",
            "--keep",
            "--no-progress",
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    kept = re.search(r"logs and configs in (\S+)", result.stderr)
    assert kept is not None, result.stderr
    directory = Path(kept.group(1))
    try:
        _check_small_run(result, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _check_small_run(result: subprocess.CompletedProcess[str], directory: Path) -> None:
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    metrics = {metric["key"]: metric for metric in report["metrics"]}
    assert metrics["connected"]["values"] == {"pigeonpush": 20, "twisted": 20, "mosquitto": 20}
    assert set(metrics["rss_per_connection"]["ratios"]) == {"twisted", "mosquitto"}
    assert metrics["heartbeats"]["values"]["pigeonpush"] > 0
    assert report["parameters"]["n"] == 20
    assert report["command"].startswith("pigeonpush-bench connections --n 20")
    logs = {path.name for path in directory.glob("*.log")}
    assert {"bench-server-0.log", "reglog.log", "delivery.log", "mosquitto-0.log"} <= logs
    assert marked_pids(directory) == []


@pytest.mark.slow
def test_a_small_connections_run_over_websocket_beside_tcp() -> None:
    """``--websocket``: the same clients again over the servers' WebSocket
    listeners, in a column of its own, compared with TCP in a note."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pigeonpush_bench", "connections", "--n", "20"),
            *("--baselines", "none", "--websocket", "--window", "1", "--heartbeat", "1"),
            *("--json", "--no-progress", "--timeout", "240"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    metrics = {metric["key"]: metric for metric in report["metrics"]}
    assert metrics["connected"]["values"] == {"pigeonpush": 20, "websocket": 20}
    assert metrics["heartbeats"]["values"]["websocket"] > 0
    assert report["systems"] == ["pigeonpush", "websocket"]
    assert any(
        note.startswith("pigeonpush over WebSocket against TCP (WebSocket / TCP): connect rate ")
        for note in report["notes"]
    ), report["notes"]


@pytest.mark.slow
def test_a_small_push_run_end_to_end() -> None:
    """The write-path scenario: both systems get every frame, in bursts of
    the same length, and the report says so."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pigeonpush_bench",
            "push",
            "--clients",
            "10",
            "--messages",
            "300",
            "--burst",
            "4",
            "--json",
            "--no-progress",
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    metrics = {metric["key"]: metric for metric in report["metrics"]}
    assert metrics["delivered"]["values"] == {"pigeonpush": 300, "twisted": 300}
    assert report["parameters"]["burst"] == 4
    assert any("4 consecutive frames to each client" in note for note in report["notes"])


def test_the_daemons_run_on_the_reactor_asked_for() -> None:
    assert twist_command("pigeon-server", ["--x"], "warn")[1:4] == [
        "-m",
        "twisted",
        "--log-format=text",
    ]
    command = twist_command("pigeon-server", ["--x"], "warn", "uvloop")
    assert command[1:5] == ["-m", "pigeonpush_bench.twist", "uvloop", "--log-format=text"]
    with pytest.raises(ValueError, match="unknown reactor 'kqueue'"):
        install("kqueue")


def test_a_small_push_run_end_to_end_on_uvloop() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pigeonpush_bench",
            "push",
            "--clients",
            "10",
            "--messages",
            "300",
            "--reactor",
            "uvloop",
            "--json",
            "--no-progress",
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    metrics = {metric["key"]: metric for metric in report["metrics"]}
    assert metrics["delivered"]["values"] == {"pigeonpush": 300, "twisted": 300}
    assert "--reactor uvloop" in report["command"]


def _interruptible() -> None:
    """In the child before exec: Ctrl-C's default handling. A shell without
    job control starts its background commands with SIGINT ignored (CI may
    run so), and a program that starts with SIGINT ignored keeps it so:
    Python installs no KeyboardInterrupt, Twisted no handler of its own."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_an_interrupted_run_stops_everything_it_started() -> None:
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pigeonpush_bench",
            "connections",
            "--n",
            "10",
            "--baselines",
            "none",
            "--heartbeat",
            "1",
            "--window",
            "60",
            "--timeout",
            "240",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
    )
    try:
        assert bench.stderr is not None
        for line in bench.stderr:
            if "measuring" in line:
                break
        else:
            raise AssertionError("the run never reached its measuring window")
        bench.send_signal(signal.SIGINT)
        _, rest = bench.communicate(timeout=120)
    finally:
        bench.kill()
        bench.wait(timeout=30)
    assert bench.returncode == 1
    assert "interrupted; every process it started was stopped" in rest
    kept = re.search(r"logs and configs in (\S+)", rest)
    assert kept is not None, rest
    directory = Path(kept.group(1))
    try:
        assert marked_pids(directory) == []
        assert (directory / "bench-server-0.log").exists()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
