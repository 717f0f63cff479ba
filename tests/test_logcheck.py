"""The failure check itself: an unhandled error of a Deferred that outlived its
test is still reported, at the latest at the end of the module that dropped it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from support.logcheck import FailureCollector, collect_all_garbage, collect_garbage

HERE = Path(__file__).parent


def _failed_deferred_in_a_cycle() -> list[Any]:
    """A failed Deferred only the collector can free (a list that holds itself)."""
    failed: Deferred[None] = Deferred()
    failed.errback(ValueError("dropped after an earlier test"))
    box: list[Any] = [failed]
    box.append(box)
    return box


def test_a_cycle_that_outlived_a_test_is_collected_by_the_full_collection(
    logged_failures: FailureCollector,
) -> None:
    holder = _failed_deferred_in_a_cycle()
    collect_garbage()  # the end of an earlier test: the cycle is alive, then frozen
    del holder
    collect_garbage()  # a test's collection walks only what is not frozen
    assert logged_failures.flush(ValueError) == []
    collect_all_garbage()  # the end of the module
    (failure,) = logged_failures.flush(ValueError)
    assert str(failure.value) == "dropped after an earlier test"


def test_a_child_session_reports_the_late_failure(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "inner"),
            str(HERE / "selfcheck" / "inner_late_failure.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=HERE.parent,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "2 passed, 1 error" in output, output
    assert "outlived their test" in output, output
    assert "dropped after its test" in output, output
