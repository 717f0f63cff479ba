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

import pytest

from pigeonpush_abuse.attacks import ATTACKS

DURATION = float(os.environ.get("ABUSE_DURATION", "20"))


@pytest.mark.timeout(DURATION + 180)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_daemon_withstands(attack: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pigeonpush_abuse",
        "--attack", attack,
        "--duration", f"{DURATION:g}",
        "--workdir", str(tmp_path / "standalone"),
        "--json", str(report),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=DURATION + 150)
    assert report.exists(), f"no report (exit {run.returncode}):\n{run.stderr[-3000:]}"
    data = json.loads(report.read_text())
    assert [result["name"] for result in data["attacks"]] == [attack]
    assert run.returncode == 0 and data["passed"], f"exit {run.returncode}\n{run.stdout}"
