"""The bounded abuse run against a pigeon-standalone the tool starts itself.

One test per attack, each a ``python -m pigeonpush_abuse --attack NAME`` run
of ``ABUSE_DURATION`` seconds (default 20) on a fresh standalone under 1,024
open files. It passes when the tool exits 0: the daemon stayed up and
healthy, its RSS grew by less than the bound, and the legitimate client got
every notification within a second. On failure the tool's report is the
message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from pigeonpush_abuse.attacks import ATTACKS
from support.servers import RedisServer

DURATION = float(os.environ.get("ABUSE_DURATION", "20"))


def run_attack(attack: str, tmp_path: Path, *options: str) -> dict[str, Any]:
    """``python -m pigeonpush_abuse --attack ATTACK`` on a standalone of its
    own (``options`` added); its report. Fails with the tool's output unless
    the run passed."""
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pigeonpush_abuse",
        "--attack", attack,
        "--duration", f"{DURATION:g}",
        "--workdir", str(tmp_path / "standalone"),
        *options,
        "--json", str(report),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=DURATION + 150)
    assert report.exists(), f"no report (exit {run.returncode}):\n{run.stderr[-3000:]}"
    data: dict[str, Any] = json.loads(report.read_text())
    assert [result["name"] for result in data["attacks"]] == [attack]
    assert run.returncode == 0 and data["passed"], f"exit {run.returncode}\n{run.stdout}"
    return data


@pytest.mark.timeout(DURATION + 180)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_daemon_withstands(attack: str, tmp_path: Path) -> None:
    run_attack(attack, tmp_path)


@pytest.mark.timeout(DURATION + 180)
@pytest.mark.parametrize("attack", ["pipeline-reglog", "pipeline-api"])
def test_a_redis_backed_daemon_withstands_pipelining(
    attack: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Answers that wait for Redis come on a later reactor turn, which the
    memory store's never do: the HTTP channel's read-ahead bound is another
    path there (``--store``)."""
    redis_server.flush()
    run_attack(attack, tmp_path, "--store", redis_server.url)


@pytest_twisted.ensureDeferred
async def test_a_running_daemon_given_by_its_addresses(tmp_path: Path) -> None:
    """--device/--reglog/--api/--api-key (and --pid, --log) attack a daemon
    that the tool did not start, and leave it running."""
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.internet.utils import getProcessOutputAndValue
    from twisted.web.client import Agent, HTTPConnectionPool

    from pigeonpush_abuse.runner import Standalone, healthy, process_alive

    daemon = Standalone(tmp_path / "daemon")
    daemon.start()
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        http = HTTPClient(Agent(reactor, pool=pool))
        assert await healthy(reactor, http, daemon.target, 45.0), "the standalone never started"
        target = daemon.target
        report = tmp_path / "report.json"
        arguments = [
            "-m", "pigeonpush_abuse",
            "--attack", "before-auth", "--duration", "3",
            "--device", f"127.0.0.1:{target.device[1]}",
            "--reglog", target.reglog, "--api", target.api,
            f"--api-key={target.api_key}",
            "--pid", str(daemon.pid), "--log", str(daemon.log_path),
            "--json", str(report),
        ]  # fmt: skip
        running = getProcessOutputAndValue(sys.executable, arguments, env=dict(os.environ))
        running.addTimeout(120, reactor)
        out, err, code = await running
        assert code == 0, (out + err[-2000:]).decode(errors="replace")
        (result,) = json.loads(report.read_text())["attacks"]
        assert result["alive"] is True and result["healthy"] is True
        assert result["rss_before"] > 0 and result["log_growth"] is not None
        assert result["observed"]["ERROR UNEXPECTED"] > 0
        assert daemon.pid is not None and process_alive(daemon.pid)
    finally:
        await pool.closeCachedConnections()
        await daemon.stop(reactor)
